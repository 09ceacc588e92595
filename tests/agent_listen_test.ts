/**
 * Reverse forwards at the agent, with real sockets on loopback: LISTEN on a port, each
 * connection to it carried back to the client as a stream the client answers; a port in use
 * is refused as such; the port is free again once the tunnel closes; SHUTDOWN ends the agent.
 */
import { MIRROR_DROPPED, tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, assertRejects, within } from "./assert.ts";
import { startAgent } from "../agent/mod.ts";
import { MirrorBudget, MirrorCopy } from "../agent/mirror.ts";
import { CLAIM_PORT, claimAddress, PortClaims } from "../agent/port_claims.ts";
import { connDuplex } from "../lib/net/mod.ts";
import {
  connectTunnel,
  OpenError,
  type OpenHandler,
  type OpenRequest,
  type Tunnel,
  type TunnelStream,
} from "../lib/tunnel/mod.ts";

const TOKEN = "listen-test-token";
const TOKEN_DIGEST = await tokenDigest(TOKEN);

/** A port free on this machine now. */
function freePort(): number {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  return port;
}

/** Reads until EOF. */
async function readAll(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (let n; (n = await conn.read(buf)) !== null;) chunks.push(buf.slice(0, n));
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
}

/** An agent and a client tunnel whose opens from the agent go to `onOpen`. */
async function agentAndTunnel(onOpen: OpenHandler) {
  const lines: string[] = [];
  const agent = startAgent({
    tokenDigest: TOKEN_DIGEST,
    port: 0,
    idleExitMs: 0,
    log: (l) => lines.push(l),
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
  const tunnel: Tunnel = await connectTunnel(connDuplex(conn), { token: TOKEN, onOpen });
  return { agent, tunnel, lines };
}

/** A client-side answer to the agent's opens: a local server that greets and closes. */
function greeter(): { port: number; close(): void } {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of server) {
      await conn.write(new TextEncoder().encode("hello from the laptop\n")).catch(() => {});
      conn.close();
    }
  })().catch(() => {});
  return { port: server.addr.port, close: () => server.close() };
}

Deno.test("agent listen: a connection to the listened port reaches the client's local server, and the caller's address comes with it", async () => {
  const local = greeter();
  const seen: OpenRequest[] = [];
  const { agent, tunnel } = await agentAndTunnel(async (request) => {
    seen.push(request);
    return connDuplex(await Deno.connect({ hostname: "127.0.0.1", port: local.port }));
  });
  const port = freePort();
  try {
    await within(tunnel.listen({ protocol: "tcp", host: "::", port }), "listen");
    const caller = await Deno.connect({ hostname: "127.0.0.1", port });
    assertEquals(await within(readAll(caller), "the reply"), "hello from the laptop\n");
    caller.close();
    assertEquals(seen.length, 1);
    assertEquals(seen[0].port, port);
    assert(["127.0.0.1", "::1"].includes(seen[0].host), seen[0].host);
  } finally {
    tunnel.close();
    agent.stop("test over");
    await agent.finished;
    local.close();
  }
});

Deno.test("agent listen: a port in use in the pod is refused as in-use", async () => {
  const busy = Deno.listen({ hostname: "0.0.0.0", port: 0 });
  const { agent, tunnel } = await agentAndTunnel(() => Promise.reject(new Error("unused")));
  try {
    const error = await assertRejects(
      () => within(tunnel.listen({ protocol: "tcp", host: "::", port: busy.addr.port }), "listen"),
      OpenError,
    );
    assertEquals(error.code, "in-use");
    assert(error.message.includes(String(busy.addr.port)), error.message);
  } finally {
    tunnel.close();
    agent.stop("test over");
    await agent.finished;
    busy.close();
  }
});

Deno.test("agent listen: a refused open closes the caller's connection at once, and the next one goes through", async () => {
  let answer: OpenHandler = () => Promise.reject(new OpenError("refused", "nothing listens"));
  const local = greeter();
  const { agent, tunnel } = await agentAndTunnel((request) => answer(request));
  const port = freePort();
  try {
    await within(tunnel.listen({ protocol: "tcp", host: "::", port }), "listen");
    const first = await Deno.connect({ hostname: "127.0.0.1", port });
    assertEquals(await within(readAll(first), "the refused connection's end"), "");
    first.close();
    answer = async () =>
      connDuplex(await Deno.connect({ hostname: "127.0.0.1", port: local.port }));
    const second = await Deno.connect({ hostname: "127.0.0.1", port });
    assertEquals(await within(readAll(second), "the reply"), "hello from the laptop\n");
    second.close();
  } finally {
    tunnel.close();
    agent.stop("test over");
    await agent.finished;
    local.close();
  }
});

Deno.test("agent listen: the port is free again once the tunnel that asked closes", async () => {
  const { agent, tunnel } = await agentAndTunnel(() => Promise.reject(new Error("unused")));
  const port = freePort();
  try {
    await within(tunnel.listen({ protocol: "tcp", host: "::", port }), "listen");
    tunnel.close("done");
    await tunnel.closed;
    // The agent learns of the close from its end of the transport; give it a moment.
    let rebound: Deno.Listener | undefined;
    for (let i = 0; i < 100 && !rebound; i++) {
      try {
        rebound = Deno.listen({ hostname: "0.0.0.0", port });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    assert(rebound, `port ${port} was still taken 5 s after the tunnel closed`);
    rebound.close();
  } finally {
    agent.stop("test over");
    await agent.finished;
  }
});

Deno.test("agent: the client's SHUTDOWN ends the agent with exit code 0", async () => {
  const { agent, tunnel, lines } = await agentAndTunnel(() => Promise.reject(new Error("unused")));
  await tunnel.endSession("relay stopped");
  assertEquals(await within(agent.finished, "the agent's exit"), 0);
  await tunnel.closed;
  assert(lines.some((l) => l.includes("relay ended the session")), lines.join("\n"));
});

Deno.test("mirror copies: past 4 MiB behind, or past the agent's budget across copies, a copy is given up and its backlog freed", async () => {
  const MiB = 1024 * 1024;
  /** A stream that opens when told and records what it is sent and why it was reset. */
  const stream = () => {
    const sent: number[] = [];
    let reset = "";
    let open!: (s: TunnelStream) => void;
    const opening = new Promise<TunnelStream>((resolve) => (open = resolve));
    const fake = {
      read: () => new Promise<null>(() => {}),
      write: (chunk: Uint8Array) => (sent.push(chunk.length), Promise.resolve()),
      closeWrite: () => Promise.resolve(),
      abort: (reason: string) => (reset = reason),
    } as unknown as TunnelStream;
    return { opening, sent, reset: () => reset, open: () => open(fake) };
  };
  const budget = new MirrorBudget(6 * MiB);
  const a = stream();
  const copyA = new MirrorCopy(a.opening, budget);
  for (let i = 0; i < 4; i++) copyA.offer(new Uint8Array(MiB));
  assertEquals(budget.queued, 4 * MiB);
  const b = stream();
  const copyB = new MirrorCopy(b.opening, budget);
  copyB.offer(new Uint8Array(2 * MiB));
  // Over the budget across copies: B is given up, A goes on.
  copyB.offer(new Uint8Array(1));
  assertEquals(budget.queued, 4 * MiB);
  b.open();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assertEquals(b.reset(), MIRROR_DROPPED);
  // A's fifth MiB is past its own 4 MiB: given up, its backlog freed.
  copyA.offer(new Uint8Array(1));
  assertEquals(budget.queued, 0);
  a.open();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assertEquals([a.sent, a.reset()], [[], MIRROR_DROPPED]);
  // A copy that keeps up is delivered whole and leaves nothing queued.
  const c = stream();
  c.open();
  const copyC = new MirrorCopy(c.opening, budget);
  await new Promise((resolve) => setTimeout(resolve, 10));
  copyC.offer(new Uint8Array(3 * MiB));
  copyC.end();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assertEquals([c.sent, c.reset(), budget.queued], [[3 * MiB], "", 0]);
});

Deno.test("port claims: a port one agent holds is refused to another, whichever way each takes it; the holder may take it again, and a release frees it", () => {
  const port = freePort();
  const first = new PortClaims();
  const second = new PortClaims();
  const release = first.claim(port);
  const again = first.claim(port);
  let refused: unknown;
  try {
    second.claim(port);
  } catch (error) {
    refused = error;
  }
  assert(refused instanceof OpenError && refused.code === "forbidden", String(refused));
  assertEquals(
    (refused as Error).message,
    `another relay session already takes port ${port} of this pod; stop that one first`,
  );
  release();
  again();
  second.claim(port)();
  assertEquals(claimAddress(8080), "127.82.31.144");
  // Something bound to every address on the claims' port claims nothing.
  const wildcard = Deno.listenDatagram({ hostname: "0.0.0.0", port: CLAIM_PORT, transport: "udp" });
  try {
    new PortClaims().claim(port)();
    new PortClaims().claim(port)();
  } finally {
    wildcard.close();
  }
});
