/** Local UDP listeners: sessions per source, datagram boundaries, bounded queues, idle ends. */
import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { UsageError } from "../lib/errors.ts";
import { UdpListener, type UdpSession } from "../lib/listen/mod.ts";
import { SessionLimitError } from "../lib/listen/udp.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function client(): Deno.DatagramConn {
  return Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
}

function portOf(conn: Deno.DatagramConn): number {
  return (conn.addr as Deno.NetAddr).port;
}

/** Serves `listener`, handing out sessions through an async queue. */
function sessions(listener: UdpListener) {
  const queue: UdpSession[] = [];
  let wake: (() => void) | undefined;
  const served = listener.serve((session) => {
    queue.push(session);
    wake?.();
  });
  return {
    served,
    async next(): Promise<UdpSession> {
      while (queue.length === 0) await new Promise<void>((resolve) => wake = resolve);
      return queue.shift()!;
    },
  };
}

async function eventually(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

Deno.test("each source address is its own session; replies go back to it", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, { idleTimeoutMs: 60_000 });
  const target = { transport: "udp" as const, hostname: "127.0.0.1", port: listener.port };
  const { served, next } = sessions(listener);
  const alice = client();
  const bob = client();
  try {
    await alice.send(encoder.encode("from alice"), target);
    const a = await next();
    strictEqual(a.remote.port, portOf(alice));
    const aReader = a.readable.getReader();
    strictEqual(decoder.decode((await aReader.read()).value), "from alice");

    await bob.send(encoder.encode("from bob"), target);
    await alice.send(encoder.encode("alice again"), target);
    const b = await next();
    strictEqual(b.remote.port, portOf(bob));
    strictEqual(decoder.decode((await b.readable.getReader().read()).value), "from bob");
    strictEqual(decoder.decode((await aReader.read()).value), "alice again");
    strictEqual(listener.sessionCount, 2);

    const writer = b.writable.getWriter();
    await writer.write(encoder.encode("to bob"));
    const [reply, from] = await bob.receive();
    strictEqual(decoder.decode(reply), "to bob");
    strictEqual((from as Deno.NetAddr).port, listener.port);
  } finally {
    alice.close();
    bob.close();
    listener.close();
    await served;
  }
});

Deno.test("datagram boundaries are kept", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, { idleTimeoutMs: 60_000 });
  const { served, next } = sessions(listener);
  const sender = client();
  try {
    const sizes = [1, 1200, 0, 9000];
    for (const size of sizes) {
      await sender.send(new Uint8Array(size).fill(7), {
        transport: "udp",
        hostname: "127.0.0.1",
        port: listener.port,
      });
    }
    const reader = (await next()).readable.getReader();
    const got: number[] = [];
    for (const _ of sizes) got.push((await reader.read()).value!.length);
    deepStrictEqual(got, sizes);
  } finally {
    sender.close();
    listener.close();
    await served;
  }
});

Deno.test("a full queue drops new datagrams and counts them", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, {
    idleTimeoutMs: 60_000,
    queueLength: 2,
  });
  const { served, next } = sessions(listener);
  const sender = client();
  try {
    for (let i = 0; i < 5; i++) {
      await sender.send(encoder.encode(`d${i}`), {
        transport: "udp",
        hostname: "127.0.0.1",
        port: listener.port,
      });
    }
    const session = await next();
    await eventually(() => session.dropped === 3);
    strictEqual(listener.dropped, 3);
    const reader = session.readable.getReader();
    strictEqual(decoder.decode((await reader.read()).value), "d0");
    strictEqual(decoder.decode((await reader.read()).value), "d1");
  } finally {
    sender.close();
    listener.close();
    await served;
  }
});

Deno.test("an idle session ends; the next datagram from that source starts a new one", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, { idleTimeoutMs: 30 });
  const { served, next } = sessions(listener);
  const sender = client();
  const target = { transport: "udp" as const, hostname: "127.0.0.1", port: listener.port };
  try {
    await sender.send(encoder.encode("first"), target);
    const first = await next();
    const reader = first.readable.getReader();
    strictEqual(decoder.decode((await reader.read()).value), "first");
    await first.closed;
    strictEqual((await reader.read()).done, true);
    strictEqual(listener.sessionCount, 0);

    await sender.send(encoder.encode("second"), target);
    const second = await next();
    ok(second !== first);
    strictEqual(decoder.decode((await second.readable.getReader().read()).value), "second");
  } finally {
    sender.close();
    listener.close();
    await served;
  }
});

Deno.test("closing the session's writable (the tunnel side ended) ends the session", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, { idleTimeoutMs: 60_000 });
  const { served, next } = sessions(listener);
  const sender = client();
  try {
    await sender.send(encoder.encode("x"), {
      transport: "udp",
      hostname: "127.0.0.1",
      port: listener.port,
    });
    const session = await next();
    await session.writable.close();
    await session.closed;
    strictEqual(listener.sessionCount, 0);
  } finally {
    sender.close();
    listener.close();
    await served;
  }
});

Deno.test("closing the listener ends every session and releases the port", async () => {
  const listener = UdpListener.bind({ hostname: "127.0.0.1", port: 0 }, { idleTimeoutMs: 60_000 });
  const { served, next } = sessions(listener);
  const sender = client();
  try {
    await sender.send(encoder.encode("x"), {
      transport: "udp",
      hostname: "127.0.0.1",
      port: listener.port,
    });
    const session = await next();
    listener.close();
    await served;
    await session.closed;
    Deno.listenDatagram({ hostname: "127.0.0.1", port: listener.port, transport: "udp" }).close();
  } finally {
    sender.close();
  }
});

Deno.test("with every session taken, datagrams from new sources are dropped and told, not per datagram", async () => {
  const listener = UdpListener.bind(
    { hostname: "127.0.0.1", port: 0 },
    { idleTimeoutMs: 60_000, maxSessions: 2 },
  );
  const target = { transport: "udp" as const, hostname: "127.0.0.1", port: listener.port };
  const told: unknown[] = [];
  const served = listener.serve(() => {}, (error) => told.push(error));
  const sources = [client(), client(), client(), client()];
  try {
    for (const source of sources) await source.send(encoder.encode("hello"), target);
    await sources[3].send(encoder.encode("again"), target);
    await eventually(() => listener.dropped === 3);
    strictEqual(listener.sessionCount, 2);
    strictEqual(told.length, 1);
    ok(told[0] instanceof SessionLimitError);
    strictEqual(
      (told[0] as Error).message,
      "all 2 UDP sessions are taken: datagrams from new sources are dropped until one ends " +
        "(after --udp-idle-timeout without traffic); 1 dropped so far",
    );
  } finally {
    for (const source of sources) source.close();
    listener.close();
    await served;
  }
});

Deno.test("a busy UDP port is a UsageError naming address:port/udp", () => {
  const busy = client();
  try {
    throws(
      () =>
        UdpListener.bind({ hostname: "127.0.0.1", port: portOf(busy) }, { idleTimeoutMs: 1000 }),
      (error) =>
        error instanceof UsageError &&
        error.message.startsWith(`cannot listen on 127.0.0.1:${portOf(busy)}/udp:`),
    );
  } finally {
    busy.close();
  }
});
