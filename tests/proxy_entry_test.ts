/**
 * lib/proxy/entry.ts against a fake ServeContext: its streams go through a real tunnel to a
 * real agent on this machine, whose resolver maps test names to local servers, so SOCKS5 and
 * HTTP clients reach them as they would reach in-cluster names.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import {
  httpExchange,
  parseSocksDatagram,
  readExactly,
  readToEnd,
  socksDatagram,
  socksRequest,
  within,
  writeAll,
} from "./proxy_clients.ts";
import { type AgentHandle, startAgent } from "../agent/mod.ts";
import { type DestinationRule, tokenDigest } from "../lib/contract.ts";
import { TcpListener } from "../lib/listen/tcp.ts";
import { createLogger } from "../lib/log.ts";
import { BufferPool, connDuplex } from "../lib/net/mod.ts";
import type { ProxyCredentials } from "../lib/plan.ts";
import { proxyEntry } from "../lib/proxy/entry.ts";
import { qualifier } from "../lib/kube/short_names.ts";
import type { PrepareContext, ServeContext } from "../lib/session/run.ts";
import { SessionStatus } from "../lib/status/session_status.ts";
import { connectTunnel, type Tunnel } from "../lib/tunnel/mod.ts";

const TOKEN = "proxy-test-token";
const TOKEN_DIGEST = await tokenDigest(TOKEN);
const DEADLINE_MS = 10_000;
const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

/** Local servers standing for in-cluster ones: a TCP echo, an HTTP server, a UDP echo. */
class Servers {
  readonly echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) =>
      new Response(
        `path=${new URL(request.url).pathname} host=${request.headers.get("host")} ` +
          `proxy-authorization=${request.headers.get("proxy-authorization")}`,
      ),
  );
  readonly udp = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  readonly #loops: Promise<void>[] = [];

  constructor() {
    this.#loops.push(
      (async () => {
        for await (const conn of this.echo) {
          void (async () => {
            try {
              await writeAll(conn, await readToEnd(conn));
              await conn.closeWrite();
            } catch {
              // the client went away
            } finally {
              conn.close();
            }
          })();
        }
      })().catch(() => {}),
    );
    this.#loops.push(
      (async () => {
        const buffer = new Uint8Array(65_536);
        for (;;) {
          const [data, from] = await this.udp.receive(buffer);
          await this.udp.send(text(`echo:${untext(data)}`), from);
        }
      })().catch(() => {}),
    );
  }

  get echoPort() {
    return this.echo.addr.port;
  }
  get httpPort() {
    return this.http.addr.port;
  }
  get udpPort() {
    return (this.udp.addr as Deno.NetAddr).port;
  }

  async close() {
    this.echo.close();
    this.udp.close();
    await this.http.shutdown();
    await Promise.all(this.#loops);
  }
}

/** The proxy, served with a context whose streams reach a local agent. */
interface Fixture extends AsyncDisposable {
  port: number;
  /** The session status the proxy counts its connections in. */
  status: SessionStatus;
  servers: Servers;
  /** Names the agent was asked to resolve. */
  resolved: string[];
  /** relay's output lines (stdout and stderr). */
  lines: string[];
}

async function startProxy(options: {
  auth?: ProxyCredentials;
  agentNamespace?: string;
  allow?: DestinationRule[];
} = {}): Promise<Fixture> {
  const servers = new Servers();
  const resolved: string[] = [];
  const agent: AgentHandle = startAgent({
    tokenDigest: TOKEN_DIGEST,
    port: 0,
    idleExitMs: 0,
    connectTimeoutMs: 2_000,
    log: () => {},
    allow: options.allow,
    dialer: {
      // Every test name is this machine; `nope.test` and its kind resolve to nothing.
      resolve: (name) => {
        resolved.push(name);
        return name.startsWith("nope")
          ? Promise.reject(new Error(`ENOTFOUND ${name}`))
          : Promise.resolve(["127.0.0.1"]);
      },
    },
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
  const tunnel: Tunnel = await connectTunnel(connDuplex(conn), { token: TOKEN });
  const lines: string[] = [];
  const logger = createLogger({
    verbose: true,
    sinks: { stdout: (line) => lines.push(line), stderr: (line) => lines.push(line) },
  });
  const listener = TcpListener.bind({ hostname: "127.0.0.1", port: 0 });
  const entry = proxyEntry(
    { port: 0, auth: options.auth },
    [listener],
    logger,
  );
  await entry.prepare(
    {
      kube: { namespace: "shop" },
      agentNamespace: options.agentNamespace ?? "shop",
    } as unknown as PrepareContext,
  );
  assertEquals(entry.destinations?.(), "any");
  const stop = new AbortController();
  const status = new SessionStatus();
  const context: ServeContext = {
    open: (request, openOptions) => tunnel.open(request, openOptions),
    get stopped() {
      return stop.signal.aborted;
    },
    buffers: new BufferPool(),
    signal: stop.signal,
    status,
  };
  const serving = entry.serve(context);
  return {
    port: listener.port,
    status,
    servers,
    resolved,
    lines,
    [Symbol.asyncDispose]: async () => {
      stop.abort();
      await serving;
      tunnel.close();
      agent.stop("test over");
      await agent.finished;
      await servers.close();
    },
  };
}

/** `size` bytes that differ with `seed`, so a misplaced chunk shows. */
function pattern(size: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: size }, (_, i) => (i * 31 + seed) & 0xff);
}

/** SOCKS5 CONNECT, then `payload` through it and the echo back after a half-close. */
async function socksEcho(port: number, host: string, echoPort: number, payload: Uint8Array) {
  const { conn, reply } = await socksRequest(port, 1, host, echoPort);
  try {
    assertEquals(reply, 0, `CONNECT ${host} replied ${reply}`);
    await writeAll(conn, payload);
    await conn.closeWrite();
    return await readToEnd(conn);
  } finally {
    conn.close();
  }
}

Deno.test("proxy: the ready line names the address, and short names' namespace", async () => {
  await using proxy = await startProxy();
  assertEquals(
    proxy.lines[0],
    `Proxying on 127.0.0.1:${proxy.port} (SOCKS5 and HTTP; names resolve in the cluster, ` +
      `short ones in namespace shop)`,
  );
});

Deno.test("proxy: SOCKS5 CONNECT to a name the agent resolves carries bytes both ways", async () => {
  await using proxy = await startProxy();
  const payload = pattern(300_000, 7);
  const echoed = await within(
    socksEcho(proxy.port, "payments.shop.svc", proxy.servers.echoPort, payload),
    DEADLINE_MS,
    "SOCKS5 echo",
  );
  assertEquals(echoed, payload);
  assertEquals(proxy.resolved, ["payments.shop.svc"]);
  // An IP address goes as one, not through the resolver.
  const byIP = await socksEcho(proxy.port, "127.0.0.1", proxy.servers.echoPort, text("ip"));
  assertEquals(untext(byIP), "ip");
  assertEquals(proxy.resolved, ["payments.shop.svc"]);
  // Both connections are counted on the proxy's route, bytes each way (the payload and "ip").
  const [route] = proxy.status.routes;
  assertEquals(route.info.direction, "proxy");
  assertEquals([route.total, route.open], [2, 0]);
  assertEquals(route.bytes, { sent: 300_002, received: 300_002 });
});

Deno.test("proxy: a short name stays relative to -n when the agent runs in another namespace", async () => {
  await using proxy = await startProxy({ agentNamespace: "relay-agents" });
  await socksEcho(proxy.port, "payments", proxy.servers.echoPort, text("x"));
  await socksEcho(proxy.port, "payments.other", proxy.servers.echoPort, text("x"));
  assertEquals(proxy.resolved, ["payments.shop.svc", "payments.other"]);
  assertEquals(qualifier("shop", "shop")("payments"), "payments");
  assertEquals(qualifier("shop", "x")("localhost"), "localhost");
  assertEquals(qualifier("shop", "x")("::1"), "::1");
});

Deno.test("proxy: a failed open gets the protocol's error reply and one log line", async () => {
  await using proxy = await startProxy();
  const closedPort = (() => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    l.close();
    return l.addr.port;
  })();
  const cases: [host: string, port: number, socks: number, http: RegExp][] = [
    [
      "nope.shop.svc",
      80,
      0x04,
      /^HTTP\/1\.1 502 Bad Gateway\r\n[^]*error=dns_error[^]*no-such-host/,
    ],
    ["refusing.test", closedPort, 0x05, /^HTTP\/1\.1 502 [^]*error=connection_refused/],
  ];
  for (const [host, port, socks, http] of cases) {
    const before = proxy.lines.length;
    const result = await within(socksRequest(proxy.port, 1, host, port), DEADLINE_MS, host);
    result.conn.close();
    assertEquals(result.reply, socks, `SOCKS5 CONNECT ${host}`);
    const connect = await httpExchange(proxy.port, `CONNECT ${host}:${port} HTTP/1.1\r\n\r\n`);
    assertMatch(connect, http);
    const get = await httpExchange(proxy.port, `GET http://${host}:${port}/ HTTP/1.1\r\n\r\n`);
    assertMatch(get, http);
    const logged = proxy.lines.slice(before).filter((line) => line.startsWith("error: "));
    assertEquals(logged.length, 3, logged.join("\n"));
    assertStringIncludes(logged[0], `SOCKS5 CONNECT ${host}:${port}: `);
    assertStringIncludes(logged[1], "(replied 50");
  }
});

Deno.test("proxy: what the agent's policy denies is SOCKS 0x02 and HTTP 403", async () => {
  await using proxy = await startProxy({
    allow: [{ protocol: "tcp", host: "allowed.test", port: 1 }],
  });
  const result = await socksRequest(proxy.port, 1, "other.test", 80);
  result.conn.close();
  assertEquals(result.reply, 0x02);
  const response = await httpExchange(proxy.port, "CONNECT other.test:80 HTTP/1.1\r\n\r\n");
  assertMatch(response, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assertStringIncludes(response, "denied: ");
});

Deno.test("proxy: HTTP CONNECT tunnels bytes; an absolute-URI GET reaches the origin in origin form", async () => {
  await using proxy = await startProxy();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
  try {
    // The first tunnelled bytes arrive with the CONNECT, as an eager client sends them.
    await writeAll(conn, text(`CONNECT echo.test:${proxy.servers.echoPort} HTTP/1.1\r\n\r\nhi`));
    const established = "HTTP/1.1 200 Connection established\r\n\r\n";
    assertEquals(untext(await readExactly(conn, established.length, "CONNECT")), established);
    await writeAll(conn, text(" there"));
    await conn.closeWrite();
    assertEquals(untext(await within(readToEnd(conn), DEADLINE_MS, "CONNECT echo")), "hi there");
  } finally {
    conn.close();
  }
  const port = proxy.servers.httpPort;
  const response = await within(
    httpExchange(
      proxy.port,
      `GET http://web.test:${port}/a/b?c HTTP/1.1\r\nHost: ignored\r\n` +
        `Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n\r\n`,
    ),
    DEADLINE_MS,
    "absolute-URI GET",
  );
  assertMatch(response, /^HTTP\/1\.1 200 OK\r\n/);
  assertStringIncludes(response, `path=/a/b host=web.test:${port} proxy-authorization=null`);
});

Deno.test("proxy: with --proxy-auth, wrong credentials are refused in each protocol", async () => {
  await using proxy = await startProxy({ auth: { user: "alice", password: "s3cret" } });
  assertStringIncludes(proxy.lines[0], "; user alice with --proxy-auth's password)");
  const wrong = await socksRequest(proxy.port, 1, "echo.test", 1, { user: "alice", password: "x" });
  wrong.conn.close();
  assertEquals([wrong.method, wrong.authStatus], [2, 1]);
  const none = await socksRequest(proxy.port, 1, "echo.test", 1);
  none.conn.close();
  assertEquals(none.method, 0xff, "no authentication offered");
  const good = await socksRequest(proxy.port, 1, "echo.test", proxy.servers.echoPort, {
    user: "alice",
    password: "s3cret",
  });
  good.conn.close();
  assertEquals([good.authStatus, good.reply], [0, 0]);
  for (const header of ["", `Proxy-Authorization: Basic ${btoa("alice:nope")}\r\n`]) {
    const response = await httpExchange(
      proxy.port,
      `CONNECT echo.test:${proxy.servers.echoPort} HTTP/1.1\r\n${header}\r\n`,
    );
    assertMatch(response, /^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
    assertStringIncludes(response, '\r\nProxy-Authenticate: Basic realm="relay"\r\n');
  }
  const authorised = await httpExchange(
    proxy.port,
    `GET http://web.test:${proxy.servers.httpPort}/ HTTP/1.1\r\n` +
      `Proxy-Authorization: Basic ${btoa("alice:s3cret")}\r\n\r\n`,
  );
  assertMatch(authorised, /^HTTP\/1\.1 200 OK\r\n[^]*proxy-authorization=null/);
  assert(!proxy.lines.some((line) => line.includes("s3cret")), "the password is never logged");
});

Deno.test("proxy: unsupported requests get their protocol's reply", async () => {
  await using proxy = await startProxy();
  const bind = await socksRequest(proxy.port, 2, "echo.test", 1);
  bind.conn.close();
  assertEquals(bind.reply, 0x07, "BIND");
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
  await writeAll(conn, Uint8Array.of(5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80));
  // The method chosen (none), then the request's reply: address type not supported.
  assertEquals([...await readExactly(conn, 4, "ATYP 9")], [5, 0, 5, 0x08]);
  conn.close();
  const socks4 = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
  await writeAll(socks4, Uint8Array.of(4, 1, 0, 80, 127, 0, 0, 1, 0));
  assertEquals([...await readExactly(socks4, 2, "SOCKS4")], [0, 0x5b]);
  socks4.close();
  assertMatch(await httpExchange(proxy.port, "GET / HTTP/1.1\r\n\r\n"), /^HTTP\/1\.1 400 /);
  assertMatch(await httpExchange(proxy.port, "nonsense\r\n\r\n"), /^HTTP\/1\.1 400 /);
});

Deno.test("proxy: UDP ASSOCIATE relays datagrams per destination, with each one's header", async () => {
  await using proxy = await startProxy();
  const control = await socksRequest(proxy.port, 3, "0.0.0.0", 0);
  assertEquals(control.reply, 0);
  const relay = control.bound!;
  assertEquals(relay.host, "127.0.0.1");
  const client = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const udpPort = proxy.servers.udpPort;
  const next = async () => parseSocksDatagram((await client.receive())[0]);
  try {
    for (const [host, payload] of [["dns.test", "one"], ["127.0.0.1", "two"], ["dns.test", "3"]]) {
      await client.send(socksDatagram(host, udpPort, text(payload)), {
        transport: "udp",
        hostname: relay.host,
        port: relay.port,
      });
      const reply = await within(next(), DEADLINE_MS, `reply from ${host}`);
      assertEquals(reply.from, `${host}:${udpPort}`);
      assertEquals(untext(reply.payload), `echo:${payload}`);
    }
    // A fragment is dropped; the next whole datagram still comes back.
    const fragment = socksDatagram("dns.test", udpPort, text("frag"));
    fragment[2] = 1;
    const to = { transport: "udp" as const, hostname: relay.host, port: relay.port };
    await client.send(fragment, to);
    await client.send(socksDatagram("dns.test", udpPort, text("after")), to);
    assertEquals(
      untext((await within(next(), DEADLINE_MS, "after a fragment")).payload),
      "echo:after",
    );
    assertEquals(proxy.resolved, ["dns.test"], "one stream per destination");
    // The association is one connection on the proxy's route; its bytes are the payloads
    // relayed each way (the fragment was dropped, so it is not among them).
    const [route] = proxy.status.routes;
    const sent = "one".length + "two".length + "3".length + "after".length;
    const received = sent + 4 * "echo:".length;
    await within(
      (async () => {
        while (route.bytes.received < received) await new Promise((r) => setTimeout(r, 10));
      })(),
      DEADLINE_MS,
      `the route's counts (${JSON.stringify(route.bytes)})`,
    );
    assertEquals([route.open, route.bytes], [1, { sent, received }]);
  } finally {
    client.close();
    control.conn.close();
  }
  // The association ends with its TCP connection.
  await within(
    (async () => {
      while (!proxy.lines.some((l) => /UDP association on 127\.0\.0\.1:\d+ ended/.test(l))) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })(),
    DEADLINE_MS,
    "the association's end",
  );
});

Deno.test("proxy: 100 concurrent SOCKS5 and HTTP CONNECT connections, each intact", async () => {
  await using proxy = await startProxy();
  const one = async (i: number) => {
    const payload = pattern(10_000 + i, i);
    if (i % 2 === 0) {
      assertEquals(
        await socksEcho(proxy.port, `e${i}.test`, proxy.servers.echoPort, payload),
        payload,
      );
      return;
    }
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
    try {
      await writeAll(conn, text(`CONNECT e${i}.test:${proxy.servers.echoPort} HTTP/1.1\r\n\r\n`));
      await readExactly(conn, 39, "CONNECT");
      await writeAll(conn, payload);
      await conn.closeWrite();
      assertEquals(await readToEnd(conn), payload);
    } finally {
      conn.close();
    }
  };
  await within(
    Promise.all(Array.from({ length: 100 }, (_, i) => one(i))),
    30_000,
    "100 connections",
  );
});
