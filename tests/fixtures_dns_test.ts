/** The test cluster's DNS server, fed a record table directly and queried over loopback. */
// @ts-types="@types/dns-packet"
import dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";
import { Buffer } from "node:buffer";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { buildClusterRecords, parseExtraHosts } from "./fixtures/dns/cluster_records.ts";
import { type DnsServer, serveDns } from "./fixtures/dns/dns_listener.ts";
import { addressEntry, RecordTable } from "./fixtures/dns/record_table.ts";

const LOOPBACK = "127.0.0.1";

function sampleTable(): RecordTable {
  return new RecordTable([
    ["echo.default.svc.cluster.local", addressEntry(["198.19.0.20"])],
    ["db.default.svc.cluster.local", addressEntry(["198.18.1.5", "198.18.1.6"])],
    ...parseExtraHosts("redis.example redis.default.svc.cluster.local\nfixed.example 198.19.7.7\n"),
    ["redis.default.svc.cluster.local", addressEntry(["198.19.0.30"])],
  ]);
}

async function withServer(table: RecordTable, body: (server: DnsServer) => Promise<void>) {
  const server = serveDns({ hostname: LOOPBACK, port: 0, table });
  try {
    await body(server);
  } finally {
    server.close();
  }
}

function query(name: string, type: "A" | "AAAA", id = 1): Uint8Array {
  return dnsPacket.encode({
    id,
    type: "query",
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
  });
}

function decode(bytes: Uint8Array): Packet {
  return dnsPacket.decode(Buffer.from(bytes));
}

async function askUdp(port: number, message: Uint8Array): Promise<Packet> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
  try {
    await socket.send(message, { transport: "udp", hostname: LOOPBACK, port });
    const [reply] = await socket.receive();
    return decode(reply);
  } finally {
    socket.close();
  }
}

async function readExactly(conn: Deno.Conn, length: number): Promise<Uint8Array> {
  const buffer = new Uint8Array(length);
  for (let filled = 0; filled < length;) {
    const n = await conn.read(buffer.subarray(filled));
    if (n === null) throw new Error("server closed early");
    filled += n;
  }
  return buffer;
}

/** Sends every message on one TCP connection at once (pipelined), then reads every reply. */
async function askTcp(port: number, messages: Uint8Array[]): Promise<Packet[]> {
  const conn = await Deno.connect({ hostname: LOOPBACK, port });
  try {
    for (const message of messages) {
      const framed = new Uint8Array(message.length + 2);
      new DataView(framed.buffer).setUint16(0, message.length);
      framed.set(message, 2);
      await conn.write(framed);
    }
    const replies: Packet[] = [];
    for (const _ of messages) {
      const prefix = await readExactly(conn, 2);
      replies.push(decode(await readExactly(conn, (prefix[0] << 8) | prefix[1])));
    }
    return replies;
  } finally {
    conn.close();
  }
}

function rcode(packet: Packet): string {
  return (packet as { rcode?: string }).rcode ?? "";
}

/** The data of an answer record; OPT records, which have none, never appear in answers here. */
function dataOf(answer: NonNullable<Packet["answers"]>[number]): string {
  return "data" in answer ? String(answer.data) : "";
}

function answerData(packet: Packet): string[] {
  return (packet.answers ?? []).map((answer) => `${answer.type} ${answer.name} ${dataOf(answer)}`);
}

Deno.test("dns: A record for a Service over UDP, authoritative, id and question echoed", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const reply = await askUdp(port, query("echo.default.svc.cluster.local", "A", 4242));
    assertEquals(reply.id, 4242);
    assertEquals(rcode(reply), "NOERROR");
    assert((reply.flags ?? 0) & dnsPacket.AUTHORITATIVE_ANSWER, "AA flag set");
    assert((reply.flags ?? 0) & dnsPacket.RECURSION_DESIRED, "RD copied from the query");
    assertEquals(reply.questions?.[0].name, "echo.default.svc.cluster.local");
    assertEquals(answerData(reply), ["A echo.default.svc.cluster.local 198.19.0.20"]);
  });
});

Deno.test("dns: several addresses, case-insensitive names, trailing dot", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const reply = await askUdp(port, query("DB.Default.svc.cluster.local.", "A"));
    assertEquals(rcode(reply), "NOERROR");
    assertEquals(
      (reply.answers ?? []).map(dataOf).sort(),
      ["198.18.1.5", "198.18.1.6"],
    );
  });
});

Deno.test("dns: extra host alias answers CNAME plus the target's A records", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const reply = await askUdp(port, query("redis.example", "A"));
    assertEquals(rcode(reply), "NOERROR");
    assertEquals(answerData(reply), [
      "CNAME redis.example redis.default.svc.cluster.local",
      "A redis.default.svc.cluster.local 198.19.0.30",
    ]);
    const fixed = await askUdp(port, query("fixed.example", "A"));
    assertEquals(answerData(fixed), ["A fixed.example 198.19.7.7"]);
  });
});

Deno.test("dns: unknown names are NXDOMAIN, AAAA for known names is NODATA", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const missing = await askUdp(port, query("nope.default.svc.cluster.local", "A"));
    assertEquals(rcode(missing), "NXDOMAIN");
    assertEquals(missing.answers?.length, 0);
    const external = await askUdp(port, query("example.com", "A"));
    assertEquals(rcode(external), "NXDOMAIN");
    const noData = await askUdp(port, query("echo.default.svc.cluster.local", "AAAA"));
    assertEquals(rcode(noData), "NOERROR");
    assertEquals(noData.answers?.length, 0);
  });
});

Deno.test("dns: TCP with length prefix, several pipelined queries on one connection", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const replies = await askTcp(port, [
      query("echo.default.svc.cluster.local", "A", 1),
      query("nope.example", "A", 2),
      query("redis.example", "AAAA", 3),
    ]);
    assertEquals(replies.map((reply) => reply.id), [1, 2, 3]);
    assertEquals(answerData(replies[0]), ["A echo.default.svc.cluster.local 198.19.0.20"]);
    assertEquals(rcode(replies[1]), "NXDOMAIN");
    assertEquals(rcode(replies[2]), "NOERROR");
    assertEquals(answerData(replies[2]), ["CNAME redis.example redis.default.svc.cluster.local"]);
  });
});

Deno.test("dns: a reply too big for UDP is truncated (TC) and complete over TCP", async () => {
  const many = Array.from({ length: 60 }, (_, i) => `198.18.2.${i + 1}`);
  const table = new RecordTable([["big.default.svc.cluster.local", addressEntry(many)]]);
  await withServer(table, async ({ port }) => {
    const udp = await askUdp(port, query("big.default.svc.cluster.local", "A"));
    assert((udp.flags ?? 0) & dnsPacket.TRUNCATED_RESPONSE, "TC flag set");
    const [tcp] = await askTcp(port, [query("big.default.svc.cluster.local", "A")]);
    assertEquals(tcp.answers?.length, 60);
  });
});

Deno.test("dns: table changes take effect on the next query", async () => {
  const table = sampleTable();
  await withServer(table, async ({ port }) => {
    assertEquals(
      rcode(await askUdp(port, query("new.default.svc.cluster.local", "A"))),
      "NXDOMAIN",
    );
    table.set("new.default.svc.cluster.local", addressEntry(["198.19.0.99"]));
    const reply = await askUdp(port, query("new.default.svc.cluster.local", "A"));
    assertEquals(answerData(reply), ["A new.default.svc.cluster.local 198.19.0.99"]);
  });
});

/**
 * Runs `body` with sockets that a watchdog closes if the test wedges, so a lost reply fails the
 * test instead of hanging it. The watchdog bounds the test; it asserts nothing about timing.
 */
async function withWatchdog<T>(closables: { close(): void }[], body: () => Promise<T>): Promise<T> {
  const watchdog = setTimeout(() => closables.forEach((c) => c.close()), 20_000);
  try {
    return await body();
  } finally {
    clearTimeout(watchdog);
  }
}

const NAMES = ["echo", "db", "redis"].map((svc) => `${svc}.default.svc.cluster.local`);

Deno.test("dns: 500 concurrent UDP queries from 50 clients are all answered", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const clients = Array.from(
      { length: 50 },
      () => Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 }),
    );
    const target = { transport: "udp" as const, hostname: LOOPBACK, port };
    try {
      // Each client keeps one query in flight, as a stub resolver does, so the burst stays within
      // the server's socket buffer and any loss is the server's own.
      const answered = await withWatchdog(
        clients,
        () =>
          Promise.all(clients.map(async (socket, client) => {
            let count = 0;
            for (let i = 0; i < 10; i++) {
              const id = client * 10 + i;
              await socket.send(query(NAMES[id % 3], "A", id), target);
              const reply = decode((await socket.receive())[0]);
              if (reply.id === id && answerData(reply).length >= 1) count++;
            }
            return count;
          })),
      );
      assertEquals(answered.reduce((a, b) => a + b, 0), 500);
    } finally {
      clients.forEach((socket) => socket.close());
    }
  });
});

Deno.test("dns: 500 concurrent TCP queries on separate connections are all answered", async () => {
  await withServer(sampleTable(), async ({ port }) => {
    const replies = await Promise.all(
      Array.from({ length: 500 }, (_, id) => askTcp(port, [query(NAMES[id % 3], "A", id)])),
    );
    assertEquals(
      replies.filter(([reply], id) => reply.id === id && answerData(reply).length >= 1).length,
      500,
    );
  });
});

Deno.test("dns records: Services, headless endpoints, ExternalName and extra hosts", () => {
  const records = buildClusterRecords({
    domain: "cluster.local",
    extraHosts:
      "# comment\nalias.example web.shop.svc.cluster.local\n\nweb.shop.svc.cluster.local 198.19.9.9\n",
    services: [
      { metadata: { name: "web", namespace: "shop" }, spec: { clusterIP: "198.19.0.40" } },
      { metadata: { name: "sts", namespace: "shop" }, spec: { clusterIP: "None" } },
      {
        metadata: { name: "ext", namespace: "shop" },
        spec: { type: "ExternalName", externalName: "db.example" },
      },
    ],
    endpointSlices: [{
      addressType: "IPv4",
      metadata: {
        name: "sts-abc",
        namespace: "shop",
        labels: { "kubernetes.io/service-name": "sts" },
      },
      endpoints: [
        { addresses: ["198.18.0.11"], hostname: "sts-0", conditions: { ready: true } },
        { addresses: ["198.18.0.12"], conditions: {} },
        { addresses: ["198.18.0.13"], conditions: { ready: false } },
      ],
    }],
  });
  const table = new RecordTable(records);
  assertEquals(
    table.get("sts.shop.svc.cluster.local"),
    addressEntry(["198.18.0.11", "198.18.0.12"]),
  );
  assertEquals(table.get("sts-0.sts.shop.svc.cluster.local"), addressEntry(["198.18.0.11"]));
  assertEquals(table.get("ext.shop.svc.cluster.local"), { kind: "alias", target: "db.example" });
  assertEquals(table.get("alias.example"), { kind: "alias", target: "web.shop.svc.cluster.local" });
  // The extra hosts win over the Service on a clash.
  assertEquals(table.get("web.shop.svc.cluster.local"), addressEntry(["198.19.9.9"]));
});
