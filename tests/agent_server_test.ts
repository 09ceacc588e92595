import { tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { type AgentConfig, type AgentHandle, runAgent, startAgent } from "../agent/mod.ts";
import { connDuplex } from "../lib/net/mod.ts";
import {
  type ConnectOptions,
  connectTunnel,
  HandshakeError,
  OpenError,
  type Tunnel,
} from "../lib/tunnel/mod.ts";
import { VERSION } from "../lib/version.ts";

const TOKEN = "agent-test-token";
const TOKEN_DIGEST = await tokenDigest(TOKEN);
const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

/** An agent on a free loopback port, with its log lines collected. */
function agent(config: Partial<AgentConfig> = {}): { agent: AgentHandle; lines: string[] } {
  const lines: string[] = [];
  const handle = startAgent({
    tokenDigest: TOKEN_DIGEST,
    port: 0,
    idleExitMs: 0,
    log: (line) => lines.push(line),
    ...config,
  });
  return { agent: handle, lines };
}

async function tunnelTo(port: number, options: Partial<ConnectOptions> = {}): Promise<Tunnel> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  return connectTunnel(connDuplex(conn), { token: TOKEN, ...options });
}

/** A TCP server that echoes and half-closes after the client's FIN. */
function tcpEcho(): { port: number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Promise<void>[] = [];
  const loop = (async () => {
    for await (const conn of listener) {
      conns.push((async () => {
        const buf = new Uint8Array(65536);
        let n: number | null;
        try {
          while ((n = await conn.read(buf)) !== null) {
            let at = 0;
            while (at < n) at += await conn.write(buf.subarray(at, n));
          }
          await conn.closeWrite();
        } catch {
          // client reset
        } finally {
          conn.close();
        }
      })());
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: async () => {
      listener.close();
      await loop.catch(() => {});
      await Promise.all(conns);
    },
  };
}

/** A UDP server that echoes every datagram. */
function udpEcho(): { port: number; close: () => Promise<void> } {
  const socket = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const loop = (async () => {
    try {
      while (true) {
        const [data, from] = await socket.receive();
        await socket.send(data, from);
      }
    } catch {
      // closed
    }
  })();
  return {
    port: (socket.addr as Deno.NetAddr).port,
    close: async () => {
      socket.close();
      await loop;
    },
  };
}

async function readAll(readable: ReadableStream<Uint8Array>): Promise<string> {
  let s = "";
  for await (const chunk of readable) s += untext(chunk);
  return s;
}

async function stop(handle: AgentHandle, tunnel?: Tunnel): Promise<void> {
  tunnel?.close();
  await tunnel?.closed;
  handle.stop("test over");
  assertEquals(await handle.finished, 0);
}

Deno.test("agent: TCP through a tunnel, with half-close, to an IP and to a resolved name", async () => {
  const echo = tcpEcho();
  const resolve = (name: string) =>
    Promise.resolve(name === "echo.test" ? ["127.0.0.1"] : Promise.reject(new Error("no")));
  const { agent: a } = agent({ dialer: { resolve } });
  const tunnel = await tunnelTo(a.port);
  assertEquals(tunnel.peerVersion, VERSION);
  for (const host of ["127.0.0.1", "echo.test"]) {
    const stream = await tunnel.open({ protocol: "tcp", host, port: echo.port });
    const w = stream.writable.getWriter();
    await w.write(text(`hello ${host}`));
    await w.close();
    assertEquals(await readAll(stream.readable), `hello ${host}`);
    await stream.closed;
  }
  await stop(a, tunnel);
  await echo.close();
});

Deno.test("agent: UDP datagrams through a tunnel come back whole", async () => {
  const echo = udpEcho();
  const { agent: a } = agent();
  const tunnel = await tunnelTo(a.port);
  const stream = await tunnel.open({ protocol: "udp", host: "127.0.0.1", port: echo.port });
  const w = stream.writable.getWriter();
  const r = stream.readable.getReader();
  for (const size of [1, 1400, 65507]) {
    const datagram = new Uint8Array(size).fill(size & 0xff);
    await w.write(datagram);
    const { value } = await r.read();
    assertEquals(value, datagram);
  }
  stream.reset("done");
  await stop(a, tunnel);
  await echo.close();
});

Deno.test("agent: open failures map to OpenError codes and one log line each", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (closed.addr as Deno.NetAddr).port;
  closed.close();
  const resolve = () =>
    Promise.reject(Object.assign(new Error("ENOTFOUND"), { code: "ENOTFOUND" }));
  const { agent: a, lines } = agent({ dialer: { resolve } });
  const tunnel = await tunnelTo(a.port);
  const refused = await assertRejects(
    () => tunnel.open({ protocol: "tcp", host: "127.0.0.1", port: deadPort }),
    OpenError,
  );
  assertEquals(refused.code, "refused");
  const noHost = await assertRejects(
    () => tunnel.open({ protocol: "tcp", host: "nope.invalid", port: 80 }),
    OpenError,
  );
  assertEquals(noHost.code, "no-such-host");
  const noHostUdp = await assertRejects(
    () => tunnel.open({ protocol: "udp", host: "nope.invalid", port: 53 }),
    OpenError,
  );
  assertEquals(noHostUdp.code, "no-such-host");
  assertEquals(lines.filter((l) => l.includes("failed")).length, 3, lines.join("\n"));
  assertEquals(tunnel.streamCount, 0);
  await stop(a, tunnel);
});

Deno.test("agent: a connect that hangs becomes OpenError timeout", async () => {
  const connect = ({ signal }: { signal: AbortSignal }) =>
    new Promise<Deno.Conn>((_, reject) =>
      signal.addEventListener("abort", () => reject(signal.reason))
    );
  const { agent: a } = agent({ dialer: { connect, connectTimeoutMs: 20 } });
  const tunnel = await tunnelTo(a.port);
  const e = await assertRejects(
    () => tunnel.open({ protocol: "tcp", host: "::1", port: 9 }),
    OpenError,
  );
  assertEquals(e.code, "timeout");
  await stop(a, tunnel);
});

Deno.test("agent: a wrong token is refused and logged", async () => {
  const { agent: a, lines } = agent();
  const e = await assertRejects(() => tunnelTo(a.port, { token: "guess" }), HandshakeError);
  assertEquals(e.code, "token");
  await stop(a);
  assert(lines.some((l) => l.includes("refused a tunnel") && l.includes("token")), lines.join());
});

Deno.test("agent: a protocol version mismatch names both versions", async () => {
  const { agent: a } = agent();
  const e = await assertRejects(
    () => tunnelTo(a.port, { protocolVersion: 99, version: "9.9.9" }),
    HandshakeError,
  );
  assertEquals(e.code, "version");
  assert(e.message.includes("9.9.9") && e.message.includes(VERSION), e.message);
  await stop(a);
});

Deno.test("agent: exits by itself when no tunnel has been connected for a while", async () => {
  const { agent: a, lines } = agent({ idleExitMs: 50 });
  // a tunnel holds it open; once it closes, the idle clock starts again
  const tunnel = await tunnelTo(a.port);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert(!lines.some((l) => l.includes("no tunnel")), "exited with a tunnel connected");
  tunnel.close();
  await tunnel.closed;
  assertEquals(await a.finished, 0);
  assert(lines.some((l) => l.includes("no tunnel connected")), lines.join());
});

Deno.test("agent: runAgent refuses to start without a token digest (exit 2)", async () => {
  const saved = Deno.env.get("RELAY_AGENT_TOKEN_SHA256");
  Deno.env.delete("RELAY_AGENT_TOKEN_SHA256");
  const lines: string[] = [];
  try {
    assertEquals(await runAgent({ port: 0, log: (l) => lines.push(l) }), 2);
    assert(lines[0].includes("RELAY_AGENT_TOKEN_SHA256 is not set"), lines.join());
  } finally {
    if (saved !== undefined) Deno.env.set("RELAY_AGENT_TOKEN_SHA256", saved);
  }
});

Deno.test("agent: runAgent refuses a token digest that is not a SHA-256 in hex (exit 2)", async () => {
  for (const bad of [TOKEN, TOKEN_DIGEST.toUpperCase(), TOKEN_DIGEST.slice(1)]) {
    const lines: string[] = [];
    assertEquals(await runAgent({ port: 0, tokenDigest: bad, log: (l) => lines.push(l) }), 2);
    assertEquals(lines.length, 1, lines.join());
    assert(lines[0].includes(`"${bad}" is not a SHA-256`), lines[0]);
  }
});

Deno.test("agent: runAgent prints its ready line and exits 0 when idle", async () => {
  const out: string[] = [];
  const code = await runAgent({
    port: 0,
    tokenDigest: TOKEN_DIGEST,
    idleExitMs: 30,
    out: (l) => out.push(l),
    log: () => {},
  });
  assertEquals(code, 0);
  assert(/^relay agent \S+ listening on 127\.0\.0\.1:\d+$/.test(out[0]), out[0]);
});

Deno.test("agent: a silent UDP session idles out and ends its stream", async () => {
  const echo = udpEcho();
  const { agent: a } = agent({ udpIdleMs: 40 });
  const tunnel = await tunnelTo(a.port);
  const stream = await tunnel.open({ protocol: "udp", host: "127.0.0.1", port: echo.port });
  const w = stream.writable.getWriter();
  await w.write(text("one"));
  const r = stream.readable.getReader();
  assertEquals(untext((await r.read()).value!), "one");
  // no more traffic: the agent closes the session and the readable ends
  assertEquals((await r.read()).done, true);
  await w.close();
  await stream.closed;
  await stop(a, tunnel);
  await echo.close();
});
