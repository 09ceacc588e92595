/** Local TCP listeners and binding a whole plan's worth of them, on loopback. */
import { deepStrictEqual, ok, rejects, strictEqual, throws } from "node:assert/strict";
import { UsageError } from "../lib/errors.ts";
import { bindForwards, readyFacts, TcpListener } from "../lib/listen/mod.ts";
import { AcceptBackoff } from "../lib/net/mod.ts";
import { formatReadyLine } from "../lib/log.ts";
import type { ForwardSpec } from "../lib/plan.ts";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** A port that is free right now (bound and released). */
function freePort(): number {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  return port;
}

function forward(name: string, ...ports: ForwardSpec["ports"]): ForwardSpec {
  return { target: { kind: "svc", name }, ports, source: "test" };
}

const UDP = { idleTimeoutMs: 60_000 };

Deno.test("a random port is reported and each connection reaches the callback", async () => {
  const listener = TcpListener.bind({ hostname: "127.0.0.1", port: 0 });
  ok(listener.port > 0);
  strictEqual(listener.hostname, "127.0.0.1");
  const served = listener.serve(async (conn) => {
    const buffer = new Uint8Array(16);
    const n = await conn.read(buffer);
    await conn.write(encoder.encode(`echo:${decoder.decode(buffer.subarray(0, n ?? 0))}`));
  });
  for (const word of ["one", "two"]) {
    using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.port });
    await client.write(encoder.encode(word));
    strictEqual(await new Response(client.readable).text(), `echo:${word}`);
  }
  listener.close();
  await served;
  await rejects(Deno.connect({ hostname: "127.0.0.1", port: listener.port }));
});

Deno.test("closing a listener closes the connections still open", async () => {
  const listener = TcpListener.bind({ hostname: "127.0.0.1", port: 0 });
  const handled = Promise.withResolvers<void>();
  const served = listener.serve(async (conn) => {
    handled.resolve();
    await conn.read(new Uint8Array(1)).catch(() => null); // waits for the close
  });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.port });
  await handled.promise;
  strictEqual(listener.connectionCount, 1);
  listener.close();
  await served;
  // The server side is gone: the client sees EOF (or a reset), never a hang.
  const n = await client.read(new Uint8Array(1)).catch(() => null);
  strictEqual(n, null);
});

Deno.test("a handler that throws loses only its own connection", async () => {
  const listener = TcpListener.bind({ hostname: "127.0.0.1", port: 0 });
  const errors: unknown[] = [];
  let calls = 0;
  const served = listener.serve(async (conn) => {
    if (++calls === 1) throw new Error("boom");
    await conn.write(encoder.encode("fine"));
  }, (error) => errors.push(error));
  {
    using first = await Deno.connect({ hostname: "127.0.0.1", port: listener.port });
    strictEqual(await first.read(new Uint8Array(4)).catch(() => null), null);
  }
  using second = await Deno.connect({ hostname: "127.0.0.1", port: listener.port });
  strictEqual(await new Response(second.readable).text(), "fine");
  strictEqual((errors[0] as Error).message, "boom");
  listener.close();
  await served;
});

Deno.test("a busy port is a UsageError naming address:port", () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  throws(
    () => TcpListener.bind({ hostname: "127.0.0.1", port: busy.addr.port }),
    (error) =>
      error instanceof UsageError && error.exitCode === 2 &&
      error.message === `cannot listen on 127.0.0.1:${busy.addr.port}/tcp: the address is ` +
          "already in use (choose another local port, or :PORT for a free one)",
  );
});

Deno.test("bindForwards binds every port on every address, sharing a random port", () => {
  const port = freePort();
  const set = bindForwards(
    [forward("a", { remote: port }), forward("b", { localPort: 0, remote: 80 })],
    { addresses: ["127.0.0.1", "::1"], udp: UDP },
  );
  try {
    const [first, second] = set.bindings;
    strictEqual(first.localPort, port);
    deepStrictEqual(first.tcp.map((l) => [l.hostname, l.port]), [["127.0.0.1", port], [
      "::1",
      port,
    ]]);
    deepStrictEqual(first.udp, []);
    ok(second.localPort! > 0);
    deepStrictEqual(second.tcp.map((l) => l.port), [second.localPort, second.localPort]);
  } finally {
    set.close();
  }
  // Everything was released: the same port binds again.
  Deno.listen({ hostname: "127.0.0.1", port }).close();
});

Deno.test("--address 0.0.0.0,:: (either order) binds, as kubectl does: a dual-stack :: takes IPv4 too", async () => {
  for (const addresses of [["0.0.0.0", "::"], ["::", "0.0.0.0"]]) {
    const port = freePort();
    const set = bindForwards([forward("a", { remote: port })], { addresses, udp: UDP });
    try {
      const listeners = set.bindings[0].tcp;
      ok(listeners.some((l) => l.hostname === "::"), JSON.stringify(addresses));
      const served = listeners.map((l) => l.serve((conn) => void conn.close()));
      for (const hostname of ["127.0.0.1", "::1"]) {
        const conn = await Deno.connect({ hostname, port });
        conn.close();
      }
      set.close();
      await Promise.all(served);
    } finally {
      set.close();
    }
  }
});

Deno.test("--address localhost,0.0.0.0 listens once: 0.0.0.0 takes 127.0.0.1's connections", async () => {
  const port = freePort();
  const set = bindForwards([forward("a", { remote: port })], {
    addresses: ["localhost", "0.0.0.0"],
    udp: UDP,
  });
  try {
    const hosts = set.bindings[0].tcp.map((l) => l.hostname).sort();
    deepStrictEqual(hosts, ["0.0.0.0", "::1"]);
    const served = set.bindings[0].tcp.map((l) => l.serve((conn) => void conn.close()));
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    set.close();
    await Promise.all(served);
  } finally {
    set.close();
  }
});

Deno.test("localhost, the default, listens on 127.0.0.1 and ::1, one ready line each", () => {
  const set = bindForwards([forward("web", { localPort: 0, remote: 80 })], {
    addresses: ["localhost"],
    udp: UDP,
  });
  try {
    const binding = set.bindings[0];
    deepStrictEqual(
      readyFacts(binding, "tcp").map(formatReadyLine),
      [
        `Forwarding from 127.0.0.1:${binding.localPort} -> svc/web:80`,
        `Forwarding from [::1]:${binding.localPort} -> svc/web:80`,
      ],
    );
  } finally {
    set.close();
  }
});

Deno.test("localhost: a port another program holds on ::1 is a warning; 127.0.0.1 listens", () => {
  const other = Deno.listen({ hostname: "::1", port: 0 });
  const port = other.addr.port;
  const warnings: string[] = [];
  try {
    const set = bindForwards([forward("a", { remote: port })], {
      addresses: ["localhost"],
      udp: UDP,
      warn: (message) => warnings.push(message),
    });
    deepStrictEqual(set.bindings[0].tcp.map((l) => [l.hostname, l.port]), [["127.0.0.1", port]]);
    set.close();
    deepStrictEqual(warnings, [
      `localhost: listening on 127.0.0.1:${port} only; cannot listen on [::1]:${port}/tcp: the ` +
      "address is already in use (choose another local port, or :PORT for a free one)",
    ]);
  } finally {
    other.close();
  }
});

Deno.test("localhost: a port held on 127.0.0.1 is an error, as it always was", () => {
  const other = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    throws(
      () =>
        bindForwards([forward("a", { remote: other.addr.port })], {
          addresses: ["localhost"],
          udp: UDP,
        }),
      (error) => error instanceof UsageError && error.message.includes("127.0.0.1:"),
    );
  } finally {
    other.close();
  }
  // ::1 was released with the failure.
  Deno.listen({ hostname: "::1", port: other.addr.port }).close();
});

Deno.test("bindForwards leaves nothing bound when one port is busy", () => {
  const free = freePort();
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  throws(
    () =>
      bindForwards(
        [forward("a", { remote: free }), forward("b", { remote: busy.addr.port })],
        { addresses: ["127.0.0.1"], udp: UDP },
      ),
    (error) => error instanceof UsageError && error.message.includes(`:${busy.addr.port}/tcp`),
  );
  Deno.listen({ hostname: "127.0.0.1", port: free }).close();
});

Deno.test("protocols: @udp binds UDP only; a named port without @ binds both, keeping a failure for later", () => {
  const port = freePort();
  const set = bindForwards(
    [forward("dns", { localPort: port, remote: 53, protocol: "udp" })],
    { addresses: ["127.0.0.1"], udp: UDP },
  );
  try {
    deepStrictEqual(set.bindings[0].tcp, []);
    strictEqual(set.bindings[0].udp[0].port, port);
  } finally {
    set.close();
  }
  const busyUdp = udpPortWithFreeTcp();
  const busyPort = (busyUdp.addr as Deno.NetAddr).port;
  const named = bindForwards(
    [forward("web", { localPort: busyPort, remote: "http" })],
    { addresses: ["127.0.0.1"], udp: UDP },
  );
  try {
    const [binding] = named.bindings;
    strictEqual(binding.tcp.length, 1);
    strictEqual(binding.udp.length, 0);
    ok(binding.deferred.udp instanceof UsageError);
    ok(binding.deferred.udp.message.includes(`127.0.0.1:${busyPort}/udp`));
  } finally {
    named.close();
    busyUdp.close();
  }
});

Deno.test("a named port with no local port waits for the forwarder to bind it", () => {
  const set = bindForwards([forward("web", { remote: "http" })], {
    addresses: ["127.0.0.1"],
    udp: UDP,
  });
  deepStrictEqual(
    set.bindings.map((b) => [b.localPort, b.tcp.length, b.udp.length]),
    [[undefined, 0, 0]],
  );
  set.close();
});

Deno.test("ready lines for a random port on both loopbacks name the chosen port", () => {
  const set = bindForwards([forward("web", { localPort: 0, remote: "http" })], {
    addresses: ["127.0.0.1", "::1"],
    udp: UDP,
  });
  try {
    const [binding] = set.bindings;
    const port = binding.localPort!;
    deepStrictEqual(readyFacts(binding, "tcp", 8080).map(formatReadyLine), [
      `Forwarding from 127.0.0.1:${port} -> svc/web:8080`,
      `Forwarding from [::1]:${port} -> svc/web:8080`,
    ]);
  } finally {
    set.close();
  }
});

/**
 * A bound UDP socket whose port number is free for TCP too: the kernel picks UDP ports without
 * regard to TCP, and on a busy machine the same TCP port may be taken.
 */
function udpPortWithFreeTcp(): Deno.DatagramConn {
  for (;;) {
    const udp = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
    try {
      Deno.listen({ hostname: "127.0.0.1", port: (udp.addr as Deno.NetAddr).port }).close();
      return udp;
    } catch {
      udp.close();
    }
  }
}

Deno.test("AcceptBackoff: a run of failed accepts is told once and paused ever longer, up to 1 s; a success resets it", async () => {
  const backoff = new AcceptBackoff();
  const seen: [boolean, number][] = [];
  for (let i = 0; i < 9; i++) {
    const { report, pauseMs, pause } = backoff.failed();
    seen.push([report, pauseMs]);
    if (i < 2) await pause();
  }
  deepStrictEqual(seen.map(([, ms]) => ms), [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
  deepStrictEqual(seen.map(([report]) => report), [true, ...Array(8).fill(false)]);
  backoff.succeeded();
  const next = backoff.failed();
  deepStrictEqual([next.report, next.pauseMs], [true, 10]);
  await next.pause();
});
