/**
 * A hostile peer that has the token: it writes raw frames, ignores credit and answers, and
 * floods. The session must stay within its bounds and close the tunnel rather than grow.
 */
import { tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, within } from "./assert.ts";
import fc from "fast-check";
import { duplexPair } from "../lib/net/mod.ts";
import {
  acceptTunnel,
  type OpenHandler,
  PROTOCOL_VERSION,
  type Tunnel,
} from "../lib/tunnel/mod.ts";
import { encodeFrame } from "../lib/tunnel/codec.ts";
import { FrameDecoder } from "../lib/tunnel/decoder.ts";
import { type Frame, FrameType } from "../lib/tunnel/frame.ts";

const TOKEN = "hostile-test-token";
const TOKEN_DIGEST = await tokenDigest(TOKEN);

/**
 * An agent-side session and a raw peer speaking to it. With `read`, the peer collects every
 * frame the agent sends into `frames`; without it, it never reads (the agent's writes stall).
 */
async function hostilePeer(
  options: { onOpen?: OpenHandler; maxStreams?: number; maxDials?: number; read?: boolean },
) {
  const [peer, agentEnd] = duplexPair();
  const writer = peer.writable.getWriter();
  const accepted = acceptTunnel(agentEnd, {
    tokenDigest: TOKEN_DIGEST,
    keepAliveMs: 0,
    onOpen: options.onOpen,
    maxStreams: options.maxStreams,
    maxDials: options.maxDials,
  });
  const frames: Frame[] = [];
  const reader = peer.readable.getReader();
  let reading: Promise<void> = Promise.resolve();
  const decoder = new FrameDecoder();
  // READY and the handshake's answer are read either way.
  const helloAnswered = (async () => {
    while (!frames.some((f) => f.type === FrameType.HELLO_OK)) {
      const { value, done } = await reader.read();
      if (done) return;
      frames.push(...decoder.push(value));
    }
  })();
  await writer.write(encodeFrame({
    type: FrameType.HELLO,
    streamId: 0,
    protocolVersion: PROTOCOL_VERSION,
    token: TOKEN,
    version: "hostile",
    window: 64 * 1024,
  }));
  const agent: Tunnel = await within(accepted, "the handshake");
  await helloAnswered;
  if (options.read) {
    reading = (async () => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
        if (done || !value) return;
        frames.push(...decoder.push(value));
      }
    })();
  }
  const send = (list: Frame[]) => {
    const chunks = list.map(encodeFrame);
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return writer.write(all);
  };
  const waitFor = async (what: string, test: () => boolean) => {
    await within(
      (async () => {
        while (!test()) await new Promise((resolve) => setTimeout(resolve, 10));
      })(),
      what,
    );
  };
  const close = async () => {
    agent.close("test over");
    await agent.closed;
    await writer.abort().catch(() => {});
    await reader.cancel().catch(() => {});
    await reading;
  };
  return { agent, frames, send, waitFor, close };
}

const open = (id: number, protocol: "tcp" | "udp" = "tcp"): Frame => ({
  type: FrameType.OPEN,
  streamId: id,
  request: { protocol, host: "198.18.0.1", port: 80 },
});

const results = (frames: Frame[]) =>
  frames.flatMap((f) => f.type === FrameType.OPEN_RESULT ? [f] : []);

Deno.test("hostile peer: a ping flood it never reads the answers to closes the tunnel instead of queueing pongs", async () => {
  const { agent, send, close } = await hostilePeer({ read: false });
  const pings: Frame[] = Array.from({ length: 1_000 }, () => ({
    type: FrameType.PING,
    streamId: 0,
    nonce: new Uint8Array(8),
  }));
  const flooding = (async () => {
    for (let i = 0; i < 200 && agent.closeReason === null; i++) await send(pings);
  })().catch(() => {});
  await within(agent.closed, "the tunnel's close");
  assert(/does not read/.test(agent.closeReason ?? ""), agent.closeReason ?? "");
  await flooding;
  await close();
});

Deno.test("hostile peer: opens beyond the stream cap are refused, the open ones untouched", async () => {
  const { frames, send, waitFor, close } = await hostilePeer({
    read: true,
    maxStreams: 10,
    onOpen: () => Promise.resolve(duplexPair()[0]),
  });
  await send(Array.from({ length: 12 }, (_, i) => open(2 * i + 1)));
  await waitFor("12 answers", () => results(frames).length === 12);
  const answers = results(frames);
  assertEquals(answers.filter((r) => r.result === "ok").length, 10);
  const refused = answers.filter((r) => r.result !== "ok");
  assertEquals(refused.length, 2);
  assert(refused.every((r) => /too many streams/.test(r.message)), refused[0].message);
  await close();
});

Deno.test("hostile peer: opens beyond the dial cap are refused while dials hang", async () => {
  const { frames, send, waitFor, close } = await hostilePeer({
    read: true,
    maxDials: 5,
    onOpen: (_request, signal) =>
      new Promise((_, reject) => signal?.addEventListener("abort", () => reject(signal.reason))),
  });
  await send(Array.from({ length: 7 }, (_, i) => open(2 * i + 1)));
  await waitFor("2 refusals", () => results(frames).length === 2);
  assert(results(frames).every((r) => /too many opens in progress/.test(r.message)));
  await close();
});

Deno.test("hostile peer: a reset while the agent dials aborts that dial", async () => {
  const signals: AbortSignal[] = [];
  const { send, waitFor, close } = await hostilePeer({
    read: true,
    onOpen: (_request, signal) => {
      signals.push(signal!);
      return new Promise((_, reject) =>
        signal?.addEventListener("abort", () => reject(signal.reason))
      );
    },
  });
  await send([open(1), { type: FrameType.RESET, streamId: 1, reason: "never mind" }]);
  await waitFor("the dial's abort", () => signals.length === 1 && signals[0].aborted);
  await close();
});

Deno.test("hostile peer: UDP datagrams sent past the credit reset the stream instead of piling up", async () => {
  // The agent's end of the stream goes to a duplex nobody reads: its datagrams wait in the stream.
  const { frames, send, waitFor, close } = await hostilePeer({
    read: true,
    onOpen: () => Promise.resolve(duplexPair()[0]),
  });
  await send([open(1, "udp")]);
  await waitFor("the open's answer", () => results(frames).length === 1);
  const datagram: Frame = { type: FrameType.DATA, streamId: 1, payload: new Uint8Array(60_000) };
  for (let i = 0; i < 300; i++) {
    await send([datagram]);
    if (frames.some((f) => f.type === FrameType.RESET && f.streamId === 1)) break;
  }
  await waitFor(
    "the stream's reset",
    () => frames.some((f) => f.type === FrameType.RESET && f.streamId === 1),
  );
  await close();
});

Deno.test("hostile peer: fuzz — random frame sequences never throw out of the session and stay within its bounds", async () => {
  const frame = fc.oneof(
    fc.record({ type: fc.constant(FrameType.OPEN), streamId: fc.nat(40) }).map((f) =>
      open(f.streamId, f.streamId % 4 === 1 ? "udp" : "tcp")
    ),
    fc.record({
      type: fc.constant(FrameType.DATA),
      streamId: fc.nat(40),
      payload: fc.uint8Array({ maxLength: 70_000 }).map((b) => b.subarray(0, 65_536)),
    }),
    fc.record({
      type: fc.constant(FrameType.WINDOW),
      streamId: fc.nat(40),
      increment: fc.nat({ max: 0xffffffff }),
    }),
    fc.record({
      type: fc.constant(FrameType.WINDOW_RETURN),
      streamId: fc.nat(40),
      decrement: fc.nat({ max: 0xffffffff }),
    }),
    fc.record({ type: fc.constant(FrameType.FIN), streamId: fc.nat(40) }),
    fc.record({ type: fc.constant(FrameType.RESET), streamId: fc.nat(40), reason: fc.string() }),
    fc.record({
      type: fc.constant(FrameType.PING),
      streamId: fc.constant(0),
      nonce: fc.uint8Array({ maxLength: 8 }),
    }),
    fc.record({
      type: fc.constant(FrameType.GO_AWAY),
      streamId: fc.constant(0),
      reason: fc.string(),
    }),
  ) as fc.Arbitrary<Frame>;
  await fc.assert(
    fc.asyncProperty(fc.array(frame, { maxLength: 40 }), async (sequence) => {
      const { agent, send, close } = await hostilePeer({
        read: true,
        maxStreams: 8,
        onOpen: () => Promise.resolve(duplexPair()[0]),
      });
      for (const f of sequence) {
        if (agent.closeReason !== null) break;
        await send([f]);
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
      assert(agent.streamCount <= 8, `${agent.streamCount} streams open`);
      await close();
    }),
    { seed: 11, numRuns: 150 },
  );
});
