import { assertEquals, assertInstanceOf, assertThrows } from "./assert.ts";
import fc from "fast-check";
import {
  type Frame,
  FrameError,
  FrameType,
  HEADER_SIZE,
  MAX_PAYLOAD,
} from "../lib/tunnel/frame.ts";
import { decodePayload, encodeFrame, writeHeader } from "../lib/tunnel/codec.ts";
import { FrameDecoder } from "../lib/tunnel/decoder.ts";
import { parseIPv6 } from "../lib/net/address.ts";
import { FrameWriter, HIGH_WATER } from "../lib/tunnel/writer.ts";

const bytes = (...xs: number[]) => new Uint8Array(xs);

/** One frame of every type, with addresses of every kind. */
const SAMPLES: Frame[] = [
  {
    type: FrameType.HELLO,
    streamId: 0,
    protocolVersion: 1,
    token: "s3cret-τ",
    version: "0.1.0",
    window: 262144,
  },
  { type: FrameType.READY, streamId: 0, window: 262144 },
  { type: FrameType.HELLO_OK, streamId: 0, protocolVersion: 1, version: "0.1.0" },
  {
    type: FrameType.HELLO_ERR,
    streamId: 0,
    code: "version",
    protocolVersion: 2,
    version: "9.9.9",
    message: "no",
  },
  {
    type: FrameType.OPEN,
    streamId: 1,
    request: { protocol: "tcp", host: "198.18.0.7", port: 6379 },
  },
  { type: FrameType.OPEN, streamId: 3, request: { protocol: "udp", host: "::1", port: 53 } },
  {
    type: FrameType.OPEN,
    streamId: 5,
    request: { protocol: "tcp", host: "2001:db8::a:0:0:1", port: 443 },
  },
  {
    type: FrameType.OPEN,
    streamId: 7,
    request: { protocol: "tcp", host: "redis.default.svc.cluster.local", port: 65535 },
  },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "ok", message: "" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "no-such-host", message: "nope" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "refused", message: "r" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "timeout", message: "t" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "unreachable", message: "u" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "forbidden", message: "f" },
  { type: FrameType.OPEN_RESULT, streamId: 1, result: "error", message: "e" },
  { type: FrameType.DATA, streamId: 0xffffffff, payload: bytes(1, 2, 3) },
  { type: FrameType.DATA, streamId: 9, payload: new Uint8Array(MAX_PAYLOAD).fill(7) },
  { type: FrameType.DATA, streamId: 9, payload: new Uint8Array(0) },
  { type: FrameType.WINDOW, streamId: 9, increment: 0xffffffff },
  { type: FrameType.WINDOW_RETURN, streamId: 9, decrement: 8 * 1024 * 1024 },
  { type: FrameType.FIN, streamId: 9 },
  { type: FrameType.RESET, streamId: 9, reason: "bye" },
  { type: FrameType.PING, streamId: 0, nonce: bytes(1, 2, 3, 4, 5, 6, 7, 8) },
  { type: FrameType.PONG, streamId: 0, nonce: bytes(8, 7, 6, 5, 4, 3, 2, 1) },
  { type: FrameType.GO_AWAY, streamId: 0, reason: "draining" },
  {
    type: FrameType.LISTEN,
    streamId: 2,
    request: { protocol: "tcp", host: "0.0.0.0", port: 8080 },
    mode: "listen",
  },
  {
    type: FrameType.LISTEN,
    streamId: 4,
    request: { protocol: "tcp", host: "::", port: 80 },
    mode: "auto",
  },
  {
    type: FrameType.LISTEN_RESULT,
    streamId: 2,
    result: "forbidden",
    mode: "listen",
    message: "later",
  },
  { type: FrameType.LISTEN_RESULT, streamId: 4, result: "ok", mode: "mirror", message: "" },
];

/** Frames compare with their payload views as plain arrays. */
function plain(frame: Frame): unknown {
  return JSON.parse(JSON.stringify(frame, (_, v) => v instanceof Uint8Array ? [...v] : v));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

Deno.test("frame: every type round-trips through encode and the streaming decoder", () => {
  for (const frame of SAMPLES) {
    const decoded = new FrameDecoder().push(encodeFrame(frame));
    assertEquals(decoded.map(plain), [plain(frame)]);
  }
});

/** Frames with each DATA frame's pieces (see FrameDecoder) joined back into one frame. */
function joinPieces(frames: Frame[]): Frame[] {
  const out: Frame[] = [];
  let pieces: Uint8Array[] = [];
  for (const frame of frames) {
    if (frame.type !== FrameType.DATA || (!frame.more && pieces.length === 0)) {
      out.push(frame);
      continue;
    }
    pieces.push(frame.payload);
    if (frame.more) continue;
    out.push({ type: FrameType.DATA, streamId: frame.streamId, payload: concat(pieces) });
    pieces = [];
  }
  assertEquals(pieces.length, 0, "a DATA frame's last piece is missing");
  return out;
}

Deno.test("frame: streaming decoder yields the same frames under any chunking (DATA in pieces)", () => {
  const wire = concat(SAMPLES.map(encodeFrame));
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 70000 }), { maxLength: 40 }), (cuts) => {
      const decoder = new FrameDecoder();
      const got: Frame[] = [];
      let at = 0;
      for (const cut of cuts) {
        if (at >= wire.length) break;
        got.push(...decoder.push(wire.subarray(at, at + cut)));
        at += cut;
      }
      got.push(...decoder.push(wire.subarray(at)));
      assertEquals(joinPieces(got).map(plain), SAMPLES.map(plain));
      assertEquals(decoder.idle, true);
    }),
    { seed: 8, numRuns: 60 },
  );
  // one byte at a time, the worst case
  const decoder = new FrameDecoder();
  const got: Frame[] = [];
  for (let i = 0; i < wire.length; i++) got.push(...decoder.push(wire.subarray(i, i + 1)));
  assertEquals(joinPieces(got).map(plain), SAMPLES.map(plain));
});

Deno.test("frame: a DATA frame cut across chunks comes out as views of them, never copied", () => {
  const payload = new Uint8Array(50_000).map((_, i) => i % 251);
  const wire = encodeFrame({ type: FrameType.DATA, streamId: 7, payload });
  const chunks = [
    wire.slice(0, 5),
    wire.slice(5, 20_000),
    wire.slice(20_000, 20_016),
    wire.slice(20_016),
  ];
  const decoder = new FrameDecoder();
  const got = chunks.map((chunk) => decoder.push(chunk));
  // The header alone yields nothing; then one piece per chunk, each a view of that chunk.
  assertEquals(got.map((frames) => frames.length), [0, 1, 1, 1]);
  const pieces = got.flat() as { payload: Uint8Array; more?: boolean; streamId: number }[];
  pieces.forEach((piece, i) => assertEquals(piece.payload.buffer, chunks[i + 1].buffer));
  assertEquals(pieces.map((p) => [p.streamId, p.more]), [[7, true], [7, true], [7, false]]);
  assertEquals(concat(pieces.map((p) => p.payload)), payload);
  assertEquals(decoder.idle, true);
});

Deno.test("frame: oversized length is refused before any allocation", () => {
  const header = new Uint8Array(HEADER_SIZE);
  header[0] = FrameType.DATA;
  new DataView(header.buffer).setUint32(6, 0xffffffff);
  const decoder = new FrameDecoder();
  const e = assertThrows(() => decoder.push(header), FrameError);
  assertEquals(e.message.includes("exceeds"), true);
  // poisoned: later input fails the same way
  assertThrows(() => decoder.push(encodeFrame(SAMPLES[0])), FrameError);
  assertThrows(() => writeHeader(new Uint8Array(10), 0, 6, 1, MAX_PAYLOAD + 1), FrameError);
});

Deno.test("frame: malformed payloads are clean FrameErrors", () => {
  const cases: [number, Uint8Array][] = [
    [0, bytes()],
    [99, bytes()],
    [FrameType.HELLO, bytes(1, 2, 3, 4, 0, 1)],
    [FrameType.READY, bytes(1, 2, 3, 4, 0, 1, 0, 0)],
    [FrameType.READY, bytes(0x52, 0x4c, 0x41, 0x59, 0, 1)],
    [FrameType.HELLO_OK, bytes(0, 5, 0, 0, 1, 0)],
    [FrameType.OPEN, bytes(7, 0, 80, 4, 1, 2, 3, 4)],
    [FrameType.OPEN, bytes(0, 0, 80, 4, 1, 2, 3)],
    [FrameType.OPEN, bytes(0, 0, 80, 9)],
    [FrameType.OPEN, bytes(0, 0, 80, 0, 0)],
    [FrameType.OPEN, bytes(0, 0, 80, 0, 5, 97)],
    [FrameType.OPEN_RESULT, bytes(200)],
    [FrameType.WINDOW, bytes(1, 2, 3)],
    [FrameType.WINDOW, bytes(1, 2, 3, 4, 5)],
    [FrameType.WINDOW_RETURN, bytes(1, 2, 3)],
    [FrameType.FIN, bytes(1)],
    [FrameType.PING, new Uint8Array(65)],
  ];
  for (const [type, payload] of cases) {
    assertThrows(() => decodePayload(type, 1, payload), FrameError);
  }
});

Deno.test("frame: encoding refuses what it cannot carry", () => {
  const open = (host: string, port: number): Frame => ({
    type: FrameType.OPEN,
    streamId: 1,
    request: { protocol: "tcp", host, port },
  });
  assertThrows(() => encodeFrame(open("a".repeat(256), 80)), FrameError);
  assertThrows(() => encodeFrame(open("a", 65536)), FrameError);
  // a long message is cut to fit, never an oversized frame
  const reset = encodeFrame({ type: FrameType.RESET, streamId: 1, reason: "é".repeat(40000) });
  assertEquals(reset.length <= HEADER_SIZE + MAX_PAYLOAD, true);
  assertEquals(new FrameDecoder().push(reset).length, 1);
});

Deno.test("frame: IPv6 literals parse and print canonically", () => {
  assertEquals(parseIPv6("::"), new Uint8Array(16));
  assertEquals(parseIPv6("[::1]")?.[15], 1);
  assertEquals(parseIPv6("::ffff:1.2.3.4")?.slice(10), bytes(0xff, 0xff, 1, 2, 3, 4));
  assertEquals(parseIPv6("1::2::3"), null);
  assertEquals(parseIPv6("1:2:3:4:5:6:7:8:9"), null);
  assertEquals(parseIPv6("fe80::1%eth0"), null);
  const canon = (host: string) => {
    const [f] = new FrameDecoder().push(encodeFrame({
      type: FrameType.OPEN,
      streamId: 1,
      request: { protocol: "tcp", host, port: 1 },
    }));
    return f.type === FrameType.OPEN ? f.request.host : "";
  };
  assertEquals(canon("2001:DB8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
  assertEquals(canon("1:0:2:3:4:5:6:7"), "1:0:2:3:4:5:6:7");
  assertEquals(canon("::ffff:10.0.0.1"), "::ffff:a00:1");
  assertEquals(canon("01.2.3.4"), "01.2.3.4"); // not an IPv4 literal: sent as a name
});

Deno.test("frame: fuzz — random bytes decode to frames or a FrameError, nothing else", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 4096 }),
      fc.array(fc.integer({ min: 1, max: 512 }), { maxLength: 8 }),
      (input, cuts) => {
        const decoder = new FrameDecoder();
        try {
          let at = 0;
          for (const cut of cuts) decoder.push(input.subarray(at, at += cut));
          decoder.push(input.subarray(at));
        } catch (e) {
          assertInstanceOf(e, FrameError);
        }
      },
    ),
    { seed: 42, numRuns: 3000 },
  );
});

Deno.test("frame: fuzz — mutated valid streams decode to frames or a FrameError", () => {
  const wire = concat(SAMPLES.filter((f) => f.type !== FrameType.DATA).map(encodeFrame));
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(wire.length - 1), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 6,
      }),
      fc.nat(wire.length),
      (mutations, truncateAt) => {
        const input = wire.slice(0, Math.max(truncateAt, 1));
        for (const [at, value] of mutations) if (at < input.length) input[at] = value;
        let frames: Frame[];
        try {
          frames = new FrameDecoder().push(input);
        } catch (e) {
          assertInstanceOf(e, FrameError);
          return;
        }
        // Whatever decodes must encode again: the codec never yields an unrepresentable frame.
        for (const frame of frames) {
          if (frame.type !== FrameType.HELLO_ERR) encodeFrame(frame);
        }
      },
    ),
    { seed: 7, numRuns: 3000 },
  );
});

Deno.test("frame: a hostname that is not UTF-8 is refused, so what decodes encodes again", () => {
  const open = encodeFrame({
    type: FrameType.OPEN,
    streamId: 1,
    request: { protocol: "tcp", host: "x".repeat(200), port: 80 },
  });
  open.fill(0xff, open.length - 200);
  assertThrows(() => new FrameDecoder().push(open), FrameError, "not UTF-8");
});

Deno.test("frame: fuzz — valid headers with random payloads decode or fail cleanly", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(fc.integer({ min: 0, max: 16 }), fc.nat(), fc.uint8Array({ maxLength: 300 })),
        { minLength: 1, maxLength: 10 },
      ),
      (frames) => {
        const parts = frames.map(([type, id, payload]) => {
          const out = new Uint8Array(HEADER_SIZE + payload.length);
          writeHeader(out, 0, type, id, payload.length);
          out.set(payload, HEADER_SIZE);
          return out;
        });
        try {
          new FrameDecoder().push(concat(parts));
        } catch (e) {
          assertInstanceOf(e, FrameError);
        }
      },
    ),
    { seed: 11, numRuns: 3000 },
  );
});

/** Bytes the decoder holds for a partial frame (its one allocation that input sizes). */
function buffered(decoder: FrameDecoder): number {
  return (decoder as unknown as { partial: Uint8Array | null }).partial?.length ?? 0;
}

Deno.test("frame: fuzz — any length field, on any frame, never allocates past MAX_PAYLOAD", () => {
  const started = performance.now();
  const wire = concat(SAMPLES.map(encodeFrame));
  // Frame boundaries in `wire`, so a mutation can aim at a real length field.
  const starts: number[] = [];
  for (let at = 0; at < wire.length;) {
    starts.push(at);
    at += HEADER_SIZE + new DataView(wire.buffer, at + 6, 4).getUint32(0);
  }
  const length = fc.oneof(
    fc.constantFrom(0, 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0x7fffffff, 0x80000000, 0xffffffff),
    fc.integer({ min: MAX_PAYLOAD + 1, max: 0xffffffff }),
    fc.nat(MAX_PAYLOAD),
  );
  fc.assert(
    fc.property(
      fc.nat(starts.length - 1),
      length,
      fc.array(fc.tuple(fc.nat(wire.length - 1), fc.integer({ min: 0, max: 255 })), {
        maxLength: 4,
      }),
      fc.integer({ min: 1, max: 4096 }),
      (frame, newLength, mutations, chunk) => {
        const input = wire.slice();
        new DataView(input.buffer).setUint32(starts[frame] + 6, newLength);
        for (const [at, value] of mutations) input[at] = value;
        const decoder = new FrameDecoder();
        try {
          for (let at = 0; at < input.length; at += chunk) {
            decoder.push(input.subarray(at, at + chunk));
            assertEquals(buffered(decoder) <= MAX_PAYLOAD, true);
          }
        } catch (e) {
          assertInstanceOf(e, FrameError);
          // A refused frame poisons the decoder: it never goes on to buffer more.
          assertThrows(() => decoder.push(new Uint8Array(HEADER_SIZE)), FrameError);
        }
      },
    ),
    { seed: 20240611, numRuns: 2000 },
  );
  // Bounded: thousands of hostile inputs decode in well under the CI budget.
  assertEquals(performance.now() - started < 20_000, true);
});

Deno.test("writer: window updates go out ahead of data already queued", async () => {
  const batches: Uint8Array[] = [];
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  const sink = new WritableStream<Uint8Array>({
    async write(chunk) {
      batches.push(chunk.slice());
      if (batches.length === 1) await held; // the transport is busy with the first batch
    },
  });
  const writer = new FrameWriter(sink.getWriter());
  writer.sendRaw(FrameType.DATA, 1, new Uint8Array(10));
  await new Promise((resolve) => setTimeout(resolve, 0));
  writer.sendRaw(FrameType.DATA, 1, new Uint8Array(20));
  writer.sendRaw(FrameType.FIN, 1, new Uint8Array(0));
  writer.send({ type: FrameType.WINDOW, streamId: 3, increment: 4096 });
  release();
  await writer.drained();
  const frames = new FrameDecoder().push(batches[1]);
  assertEquals(frames.map((f) => f.type), [FrameType.WINDOW, FrameType.DATA, FrameType.FIN]);
});

Deno.test("writer: senders waiting for room are let in only as far as the room goes", async () => {
  // A slow transport: each batch takes a timer tick.
  const sink = new WritableStream<Uint8Array>({
    write: () => new Promise((resolve) => setTimeout(resolve, 0)),
  });
  const writer = new FrameWriter(sink.getWriter());
  const frame = new Uint8Array(64 * 1024);
  let mostQueued = 0;
  const sender = async (streamId: number) => {
    for (let i = 0; i < 4; i++) {
      // One wait: room() resolves only for a sender the queue has room for.
      if (writer.full) await writer.room();
      writer.sendRaw(FrameType.DATA, streamId, frame);
      mostQueued = Math.max(mostQueued, writer.queuedBytes);
    }
  };
  // 200 streams at once, as under 1,000 busy connections: woken all together, each queued
  // a frame, and the queue held 200 of them.
  await Promise.all(Array.from({ length: 200 }, (_, i) => sender(2 * i + 1)));
  await writer.drained();
  assertEquals(writer.queuedBytes, 0);
  assertEquals(
    mostQueued <= HIGH_WATER + 2 * frame.length,
    true,
    `queued ${mostQueued} bytes at most`,
  );
});

Deno.test("writer: a transport done with each chunk once written gets one buffer for all batches; others a fresh one each", async () => {
  const run = async (chunkFreeAfterWrite: boolean) => {
    const buffers = new Set<ArrayBufferLike>();
    const kept: Uint8Array[] = [];
    const sink = new WritableStream<Uint8Array>({
      write(chunk) {
        buffers.add(chunk.buffer);
        // A transport that keeps chunks (like an in-memory pair) must find them unchanged.
        kept.push(chunk);
        return new Promise((resolve) => setTimeout(resolve, 0));
      },
    });
    const writer = new FrameWriter(sink.getWriter(), { headroom: 1, chunkFreeAfterWrite });
    for (let i = 0; i < 20; i++) {
      writer.sendRaw(FrameType.DATA, 1, new Uint8Array(1000 * (i + 1)).fill(i));
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await writer.drained();
    return { buffers: buffers.size, kept };
  };
  const reused = await run(true);
  assertEquals(reused.buffers, 1);
  const fresh = await run(false);
  assertEquals(fresh.buffers, fresh.kept.length);
  const payloads = fresh.kept.flatMap((batch) => new FrameDecoder().push(batch))
    .map((f) => f.type === FrameType.DATA ? f.payload : new Uint8Array(0));
  assertEquals(payloads.length, 20);
  payloads.forEach((data, i) => assertEquals(data.every((b) => b === i), true, `frame ${i}`));
});

Deno.test("writer: a frame's copied callback runs once its payload is in a batch, in queue order, not before", async () => {
  const sink = new WritableStream<Uint8Array>({
    write: () => new Promise((resolve) => setTimeout(resolve, 0)),
  });
  const writer = new FrameWriter(sink.getWriter());
  const copied: number[] = [];
  // Five frames of 60,000 bytes: more than one batch of 256 KiB.
  for (let i = 0; i < 5; i++) {
    writer.sendRaw(FrameType.DATA, 1, new Uint8Array(60_000), () => copied.push(i));
  }
  // Queued, not yet cut: the sender's bytes are still the writer's to read.
  assertEquals(copied, []);
  await writer.drained();
  assertEquals(copied, [0, 1, 2, 3, 4]);
});
