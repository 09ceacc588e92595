/**
 * RFC 6455 framing: the parser takes valid frames however they are cut and refuses what a
 * server may not send with a protocol error (never another error, never a hang); the encoder
 * masks every frame, so that unmasking gives back the payload.
 */
import fc from "fast-check";
import { assert, assertEquals, assertInstanceOf, assertThrows } from "./assert.ts";
import {
  closePayload,
  FrameEncoder,
  FrameParser,
  type FramePiece,
  Opcode,
  parseClosePayload,
  WebSocketProtocolError,
} from "../lib/kube/websocket_frames.ts";
import { serverFrame } from "./websocket_fixtures.ts";

/** A frame as the parser yields it, once its pieces are joined. */
interface WholeFrame {
  opcode: number;
  fin: boolean;
  payload: number[];
}

/** Joins the pieces of each frame, checking first/last marks along the way. */
function joinPieces(pieces: FramePiece[]): WholeFrame[] {
  const frames: WholeFrame[] = [];
  let open: WholeFrame | null = null;
  for (const piece of pieces) {
    assertEquals(piece.first, open === null, "first marks the start of a frame");
    open ??= { opcode: piece.opcode, fin: piece.fin, payload: [] };
    open.payload.push(...piece.payload);
    if (piece.last) {
      frames.push(open);
      open = null;
    }
  }
  assertEquals(open, null, "every frame ended");
  return frames;
}

/** Feeds `stream` to a fresh parser cut at `cuts` (taken modulo what is left). */
function parseCut(stream: Uint8Array, cuts: number[]): FramePiece[] {
  const parser = new FrameParser();
  const pieces: FramePiece[] = [];
  let at = 0;
  for (const cut of cuts) {
    if (at >= stream.length) break;
    const end = Math.min(stream.length, at + 1 + (cut % (stream.length - at)));
    pieces.push(...parser.push(stream.subarray(at, end)));
    at = end;
  }
  if (at < stream.length) pieces.push(...parser.push(stream.subarray(at)));
  assert(parser.idle, "the parser ends between frames");
  return pieces;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const validFrame = fc.oneof(
  fc.record({
    opcode: fc.constantFrom(Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION),
    fin: fc.boolean(),
    payload: fc.oneof(
      fc.uint8Array({ maxLength: 200 }),
      fc.integer({ min: 0, max: 70_000 }).map((n) => new Uint8Array(n).fill(n & 0xff)),
    ),
  }),
  fc.record({
    opcode: fc.constantFrom(Opcode.PING, Opcode.PONG, Opcode.CLOSE),
    fin: fc.constant(true),
    payload: fc.uint8Array({ maxLength: 125 }),
  }),
);

Deno.test("frame parser: valid frames come out whole however the stream is cut", () => {
  fc.assert(
    fc.property(
      fc.array(validFrame, { minLength: 1, maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (frames, cuts) => {
        const stream = concat(frames.map((f) => serverFrame(f.opcode, f.payload, { fin: f.fin })));
        const parsed = joinPieces(parseCut(stream, cuts));
        assertEquals(
          parsed,
          frames.map((f) => ({ opcode: f.opcode, fin: f.fin, payload: [...f.payload] })),
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("frame parser: garbage is only ever a protocol error, and a failed parser stays failed", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 64 }), { minLength: 1, maxLength: 20 }),
      (chunks) => {
        const parser = new FrameParser();
        for (const chunk of chunks) {
          try {
            parser.push(chunk);
          } catch (error) {
            assertInstanceOf(error, WebSocketProtocolError);
            const again = assertThrows(() => parser.push(new Uint8Array([0x82, 0])), Error);
            assertEquals(again, error);
            return;
          }
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("frame parser: a valid stream with a corrupted byte ends in frames or a protocol error", () => {
  fc.assert(
    fc.property(
      fc.array(validFrame, { minLength: 1, maxLength: 4 }),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (frames, where, flip, cuts) => {
        const stream = concat(frames.map((f) => serverFrame(f.opcode, f.payload, { fin: f.fin })));
        stream[where % stream.length] ^= flip;
        try {
          const parser = new FrameParser();
          let at = 0;
          for (const cut of [...cuts, stream.length]) {
            const end = Math.min(stream.length, at + 1 + cut);
            parser.push(stream.subarray(at, end));
            at = end;
            if (at >= stream.length) break;
          }
        } catch (error) {
          assertInstanceOf(error, WebSocketProtocolError);
        }
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("frame parser: what a server may not send is refused with the code to close with", () => {
  const refused: [string, Uint8Array, number][] = [
    ["a masked frame", serverFrame(Opcode.BINARY, new Uint8Array(3), { mask: true }), 1002],
    ["reserved bits", serverFrame(Opcode.BINARY, new Uint8Array(3), { rsv: 4 }), 1002],
    ["opcode 3", serverFrame(3, new Uint8Array(0)), 1002],
    ["opcode 11", serverFrame(11, new Uint8Array(0)), 1002],
    ["a fragmented ping", serverFrame(Opcode.PING, new Uint8Array(0), { fin: false }), 1002],
    ["a 126-byte close", serverFrame(Opcode.CLOSE, new Uint8Array(126)), 1002],
    ["a 2^63 length", new Uint8Array([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), 1009],
  ];
  for (const [what, bytes, code] of refused) {
    const error = assertThrows(() => new FrameParser().push(bytes), WebSocketProtocolError);
    assertEquals(error.closeCode, code, what);
  }
});

Deno.test("frame parser: a non-minimal length, an empty frame and a cut control frame", () => {
  const parser = new FrameParser();
  const pieces = [
    ...parser.push(serverFrame(Opcode.BINARY, new Uint8Array([1, 2]), { longLength: true })),
    ...parser.push(serverFrame(Opcode.TEXT, new Uint8Array(0))),
  ];
  const ping = serverFrame(Opcode.PING, new Uint8Array([9, 8, 7]));
  pieces.push(...parser.push(ping.subarray(0, 3)), ...parser.push(ping.subarray(3)));
  assertEquals(joinPieces(pieces), [
    { opcode: Opcode.BINARY, fin: true, payload: [1, 2] },
    { opcode: Opcode.TEXT, fin: true, payload: [] },
    { opcode: Opcode.PING, fin: true, payload: [9, 8, 7] },
  ]);
});

/** Reads a client frame: checks the mask bit, unmasks, returns opcode, fin and payload. */
function unmaskClientFrame(frame: Uint8Array): { opcode: number; fin: boolean; payload: number[] } {
  assert(frame[1] & 0x80, "a client frame is masked");
  let length = frame[1] & 0x7f;
  let at = 2;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.length);
  if (length === 126) [length, at] = [view.getUint16(2), 4];
  else if (length === 127) [length, at] = [Number(view.getBigUint64(2)), 10];
  const key = frame.subarray(at, at + 4);
  const payload = [...frame.subarray(at + 4)].map((b, i) => b ^ key[i & 3]);
  assertEquals(payload.length, length, "the header's length");
  return { opcode: frame[0] & 0x0f, fin: (frame[0] & 0x80) !== 0, payload };
}

Deno.test("frame encoder: every frame is masked and unmasks to its parts, at every length", () => {
  const encoder = new FrameEncoder();
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 4 }),
      fc.integer({ min: 0, max: 70_000 }),
      fc.boolean(),
      (parts, big, fin) => {
        const all = [...parts, new Uint8Array(big % 3 === 0 ? big : 0).fill(0xa5)];
        const frame = encoder.encode(Opcode.BINARY, all, fin);
        assertEquals(unmaskClientFrame(frame.bytes), {
          opcode: Opcode.BINARY,
          fin,
          payload: [...concat(all)],
        });
        encoder.release(frame);
      },
    ),
    { numRuns: 300 },
  );
  // Over the size of a reused buffer: one of its own.
  const huge = new Uint8Array(300 * 1024).fill(3);
  const frame = encoder.encode(Opcode.BINARY, [huge]);
  assertEquals(unmaskClientFrame(frame.bytes).payload.every((b) => b === 3), true);
});

Deno.test("frame encoder: keys differ from frame to frame", () => {
  const encoder = new FrameEncoder();
  const keys = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    const frame = encoder.encode(Opcode.BINARY, [new Uint8Array(1)]);
    keys.add(frame.bytes.subarray(2, 6).join());
    encoder.release(frame);
  }
  assert(keys.size > 1990, `only ${keys.size} distinct keys in 2000 frames`);
});

Deno.test("frame encoder: a small frame holds a buffer its own size, so a queue of them stays small", () => {
  const encoder = new FrameEncoder();
  // Large frames come out of the reused batch-sized buffers.
  const large = encoder.encode(Opcode.BINARY, [new Uint8Array(200 * 1024)]);
  encoder.release(large);
  // Hundreds of credit frames queued behind a slow network each held one of those: 262 KB.
  const queued = Array.from(
    { length: 300 },
    () => encoder.encode(Opcode.BINARY, [new Uint8Array(9)]),
  );
  const held = queued.reduce((sum, frame) => sum + frame.buffer.bytes.byteLength, 0);
  assert(held < 300 * 64, `300 frames of 9 bytes hold ${held} bytes`);
  for (const frame of queued) assertEquals(unmaskClientFrame(frame.bytes).payload.length, 9);
});

Deno.test("close payloads: codes and reasons both ways; codes no endpoint sends are refused", () => {
  assertEquals(parseClosePayload(closePayload(4001, "bye ✓")), { code: 4001, reason: "bye ✓" });
  assertEquals(parseClosePayload(new Uint8Array(0)), { code: 1005, reason: "" });
  assertEquals(closePayload(1005).length, 0);
  assertEquals(closePayload(1000, "x".repeat(200)).length, 125);
  assertEquals(parseClosePayload(closePayload(1000, "✓".repeat(50))).reason, "✓".repeat(41));
  for (const code of [999, 1004, 1005, 1006, 1015, 2999, 5000]) {
    assertThrows(
      () => parseClosePayload(new Uint8Array([code >> 8, code & 0xff])),
      WebSocketProtocolError,
    );
  }
  assertThrows(() => parseClosePayload(new Uint8Array([3])), WebSocketProtocolError);
  const badUtf8 = assertThrows(
    () => parseClosePayload(new Uint8Array([0x03, 0xe8, 0xff])),
    WebSocketProtocolError,
  );
  assertEquals(badUtf8.closeCode, 1007);
});
