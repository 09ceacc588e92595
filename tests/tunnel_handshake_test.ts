/**
 * The tunnel's handshake frame by frame (lib/tunnel/handshake.ts): the agent speaks first
 * (READY), the client sends HELLO and its first streams without waiting for the answer, and
 * the answer, when it comes, settles the tunnel. One end is real, the other driven by hand.
 */
import { PROTOCOL_VERSION, tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, assertInstanceOf, assertRejects, within } from "./assert.ts";
import { encodeFrame } from "../lib/tunnel/codec.ts";
import { FrameDecoder } from "../lib/tunnel/decoder.ts";
import { type Frame, FrameType } from "../lib/tunnel/frame.ts";
import {
  acceptTunnel,
  connectTunnel,
  HandshakeError,
  type OpenRequest,
  openTunnel,
  StreamResetError,
} from "../lib/tunnel/mod.ts";
import { type Duplex, duplexPair } from "../lib/net/mod.ts";

const TOKEN = "t0ken";
const REQUEST: OpenRequest = { protocol: "tcp", host: "10.0.0.1", port: 7 };

/** One end of a tunnel driven frame by frame: what it was sent, and a way to send. */
function handDriven(end: Duplex) {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder();
  const writer = end.writable.getWriter();
  const reading = (async () => {
    for await (const chunk of end.readable) frames.push(...decoder.push(chunk));
  })().catch(() => {});
  return {
    frames,
    types: () => frames.map((f) => f.type),
    /** Queues `list` in order; the pair passes it on as the other end reads. */
    send: (...list: Frame[]) => void writer.write(concat(list.map(encodeFrame))).catch(() => {}),
    async until(what: string, test: () => boolean): Promise<void> {
      await within(
        (async () => {
          while (!test()) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
        what,
      );
    },
    async close(): Promise<void> {
      await writer.close().catch(() => {});
      await reading;
    },
  };
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

const READY: Frame = { type: FrameType.READY, streamId: 0, window: 256 * 1024 };
const HELLO_OK: Frame = {
  type: FrameType.HELLO_OK,
  streamId: 0,
  protocolVersion: PROTOCOL_VERSION,
  version: "4.5.6-agent",
};

Deno.test("handshake: the client's first stream and its bytes go out behind HELLO, before the agent answers", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send(READY);
  const tunnel = await within(openTunnel(client, { token: TOKEN, keepAliveMs: 0 }), "open");
  let answered = false;
  tunnel.handshake.then(() => (answered = true));
  const stream = await tunnel.open(REQUEST, { early: true });
  const writer = stream.writable.getWriter();
  await writer.write(new TextEncoder().encode("ping"));
  await agent.until(
    "HELLO, OPEN, its head start and DATA reach the agent",
    () => agent.frames.length >= 4,
  );
  // The head start's WINDOW goes out behind the OPEN naming its stream, not ahead of it.
  assertEquals(agent.types(), [FrameType.HELLO, FrameType.OPEN, FrameType.WINDOW, FrameType.DATA]);
  assertEquals(tunnel.peerVersion, "", "no version before the answer");
  assert(!answered, "the handshake settled before the agent answered");

  agent.send(
    HELLO_OK,
    { type: FrameType.OPEN_RESULT, streamId: stream.id, result: "ok", message: "" },
    { type: FrameType.DATA, streamId: stream.id, payload: new TextEncoder().encode("pong") },
  );
  await within(tunnel.handshake, "the handshake settles on HELLO_OK");
  assertEquals(tunnel.peerVersion, "4.5.6-agent");
  await within(stream.opened, "the stream opens");
  const { value } = await within(stream.readable.getReader().read(), "the answer's bytes");
  assertEquals(new TextDecoder().decode(value), "pong");
  tunnel.close();
  await tunnel.closed;
  await agent.close();
});

Deno.test("handshake: a refusal after READY closes the tunnel, and what was opened meanwhile fails with it", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send(READY);
  const tunnel = await within(openTunnel(client, { token: TOKEN, keepAliveMs: 0 }), "open");
  const opening = tunnel.open(REQUEST);
  await agent.until("the OPEN reaches the agent", () => agent.frames.length >= 2);
  agent.send({
    type: FrameType.HELLO_ERR,
    streamId: 0,
    code: "token",
    protocolVersion: 0,
    version: "",
    message: "wrong session token",
  });
  const refusal = await within(
    assertRejects(
      () => tunnel.handshake,
      HandshakeError,
      "the relay agent refused the session token",
    ),
    "the handshake rejects",
  );
  assertEquals(refusal.code, "token");
  assert(refusal.answered);
  const failed = await within(opening.then(() => undefined, (e: unknown) => e), "the open fails");
  assertInstanceOf(failed, StreamResetError);
  assert(String(failed).includes("refused the session token"), String(failed));
  await within(tunnel.closed, "the tunnel closes");
  assertEquals(tunnel.closeReason, "the relay agent refused the session token");
  await agent.close();
});

Deno.test("handshake: an agent that sends anything but its answer after READY is not a relay agent", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send(READY, { type: FrameType.PONG, streamId: 0, nonce: new Uint8Array(8) });
  const tunnel = await within(openTunnel(client, { token: TOKEN, keepAliveMs: 0 }), "open");
  const error = await within(
    assertRejects(() => tunnel.handshake, HandshakeError, "sent PONG before answering"),
    "the handshake rejects",
  );
  assertEquals(error.code, "protocol");
  await within(tunnel.closed, "the tunnel closes");
  await agent.close();
});

Deno.test("handshake: an agent of an older protocol, which answers HELLO without READY, is named a version mismatch", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send({
    type: FrameType.HELLO_ERR,
    streamId: 0,
    code: "version",
    protocolVersion: PROTOCOL_VERSION - 1,
    version: "0.9.0",
    message: "versions differ",
  });
  const error = await within(
    assertRejects(() => openTunnel(client, { token: TOKEN, version: "1.0.0" }), HandshakeError),
    "open fails",
  );
  assertEquals(error.code, "version");
  assert(error.answered);
  assert(
    error.message.includes(`relay 1.0.0 (tunnel protocol ${PROTOCOL_VERSION})`) &&
      error.message.includes(`relay agent 0.9.0 (tunnel protocol ${PROTOCOL_VERSION - 1})`),
    error.message,
  );
  await agent.close();
});

Deno.test("handshake: an agent that is READY but never answers closes the tunnel after the handshake timeout", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send(READY);
  const tunnel = await within(
    openTunnel(client, { token: TOKEN, keepAliveMs: 0, handshakeTimeoutMs: 100 }),
    "open",
  );
  const error = await within(
    assertRejects(() => tunnel.handshake, HandshakeError, "no answer to the handshake"),
    "the handshake times out",
  );
  assertEquals(error.code, "timeout");
  assert(!error.answered, "a silent agent may be tried again");
  await within(tunnel.closed, "the tunnel closes");
  await agent.close();
});

Deno.test("handshake: a client tunnel closed before the answer rejects the handshake as closed", async () => {
  const [client, agentEnd] = duplexPair();
  const agent = handDriven(agentEnd);
  agent.send(READY);
  const tunnel = await within(openTunnel(client, { token: TOKEN, keepAliveMs: 0 }), "open");
  tunnel.close("relay is stopping");
  const error = await within(
    assertRejects(() => tunnel.handshake, HandshakeError, "relay is stopping"),
    "the handshake rejects",
  );
  assertEquals(error.code, "closed");
  await agent.close();
});

Deno.test("handshake: the agent speaks first, READY with its window and nothing about itself", async () => {
  const [clientEnd, agentSide] = duplexPair();
  const client = handDriven(clientEnd);
  const accepted = acceptTunnel(agentSide, {
    tokenDigest: await tokenDigest(TOKEN),
    keepAliveMs: 0,
    streamWindow: 123_456,
    version: "secret-version",
  });
  await client.until("the agent's first frame", () => client.frames.length >= 1);
  assertEquals(client.frames, [{ type: FrameType.READY, streamId: 0, window: 123_456 }]);
  client.send({
    type: FrameType.HELLO,
    streamId: 0,
    protocolVersion: PROTOCOL_VERSION,
    token: TOKEN,
    version: "client",
    window: 65536,
  });
  const agent = await within(accepted, "the agent accepts");
  await client.until("the agent's answer", () => client.frames.length >= 2);
  assertEquals(client.frames[1], {
    type: FrameType.HELLO_OK,
    streamId: 0,
    protocolVersion: PROTOCOL_VERSION,
    version: "secret-version",
  });
  agent.close();
  await agent.closed;
  await client.close();
});

Deno.test("handshake: streams sent behind a HELLO with the wrong token are never dialed", async () => {
  const [clientEnd, agentSide] = duplexPair();
  const client = handDriven(clientEnd);
  const dialed: OpenRequest[] = [];
  const accepted = acceptTunnel(agentSide, {
    tokenDigest: await tokenDigest(TOKEN),
    keepAliveMs: 0,
    onOpen: (request) => {
      dialed.push(request);
      return Promise.resolve(new TransformStream<Uint8Array, Uint8Array>());
    },
  }).then(() => undefined, (e: unknown) => e);
  client.send(
    {
      type: FrameType.HELLO,
      streamId: 0,
      protocolVersion: PROTOCOL_VERSION,
      token: "a guess",
      version: "client",
      window: 65536,
    },
    { type: FrameType.OPEN, streamId: 1, request: REQUEST },
    { type: FrameType.DATA, streamId: 1, payload: new Uint8Array(10) },
  );
  const error = assertInstanceOf(await within(accepted, "the agent refuses"), HandshakeError);
  assertEquals(error.code, "token");
  await client.until("the refusal", () => client.frames.length >= 2);
  assertEquals(client.types(), [FrameType.READY, FrameType.HELLO_ERR]);
  assertEquals(dialed, [], "the agent dialed for a peer without the token");
  await client.close();
});

Deno.test("handshake: connectTunnel resolves only once the agent has accepted", async () => {
  const [a, b] = duplexPair();
  const [client, agent] = await within(
    Promise.all([
      connectTunnel(a, { token: TOKEN, keepAliveMs: 0 }),
      acceptTunnel(b, { tokenDigest: await tokenDigest(TOKEN), keepAliveMs: 0, version: "7.0.0" }),
    ]),
    "both ends",
  );
  assertEquals(client.peerVersion, "7.0.0");
  client.close();
  agent.close();
  await Promise.all([client.closed, agent.closed]);
});
