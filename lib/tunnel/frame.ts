/**
 * The tunnel wire format — the one place it is defined.
 *
 * Every frame is a fixed 10-byte header followed by a payload:
 *
 * ```
 * offset 0  u8   type      (FrameType)
 * offset 1  u8   flags     (reserved, 0; unknown bits are ignored)
 * offset 2  u32  stream id (big-endian; 0 = the tunnel itself)
 * offset 6  u32  length    (big-endian; ≤ MAX_PAYLOAD)
 * ```
 *
 * Strings are UTF-8. Inside payloads, a "short string" is a u8 length then bytes, a "long
 * string" is a u16 length then bytes, and a "tail string" runs to the end of the payload.
 * Decoding never trusts a length: anything that does not fit the payload is a FrameError.
 */
import type { OpenFailure, OpenRequest, Protocol } from "./types.ts";

/** Bytes in a frame header. */
export const HEADER_SIZE = 10;

/** Largest payload of any frame: room for a 65,507-byte UDP datagram and then some. */
export const MAX_PAYLOAD = 65536;

/** The tunnel protocol version; peers that differ refuse each other in the handshake. */
export const PROTOCOL_VERSION = 2;

/** The first four payload bytes of HELLO: "RLAY". */
export const MAGIC = 0x524c4159;

/** Frame types, one byte on the wire. */
export const FrameType = {
  HELLO: 1,
  HELLO_OK: 2,
  HELLO_ERR: 3,
  OPEN: 4,
  OPEN_RESULT: 5,
  DATA: 6,
  WINDOW: 7,
  FIN: 8,
  RESET: 9,
  PING: 10,
  PONG: 11,
  GO_AWAY: 12,
  LISTEN: 13,
  LISTEN_RESULT: 14,
  WINDOW_RETURN: 15,
} as const;

/** Why a handshake was refused. */
export type HelloErrorCode = "token" | "version" | "other";

/** Client → agent: the first frame on a tunnel (stream id 0). */
export interface HelloFrame {
  type: typeof FrameType.HELLO;
  streamId: number;
  protocolVersion: number;
  token: string;
  /** relay's version string, for error messages. */
  version: string;
  /** The per-stream receive window the sender grants its peer, in bytes. */
  window: number;
}

/** Agent → client: handshake accepted. */
export interface HelloOkFrame {
  type: typeof FrameType.HELLO_OK;
  streamId: number;
  protocolVersion: number;
  version: string;
  window: number;
}

/** Agent → client: handshake refused; the tunnel closes after it. */
export interface HelloErrFrame {
  type: typeof FrameType.HELLO_ERR;
  streamId: number;
  code: HelloErrorCode;
  protocolVersion: number;
  version: string;
  message: string;
}

/** Either end: open stream `streamId` toward `request`. */
export interface OpenFrame {
  type: typeof FrameType.OPEN;
  streamId: number;
  request: OpenRequest;
}

/** The answer to OPEN: `ok`, or a failure code and a message. */
export interface OpenResultFrame {
  type: typeof FrameType.OPEN_RESULT;
  streamId: number;
  result: "ok" | OpenFailure;
  message: string;
}

/** Bytes of a stream (TCP), or exactly one datagram (UDP). */
export interface DataFrame {
  type: typeof FrameType.DATA;
  streamId: number;
  payload: Uint8Array;
  /**
   * Decoded only: this is a piece of a frame cut across transport reads, and the next DATA
   * the decoder yields continues it (see FrameDecoder).
   */
  more?: boolean;
}

/** Credit: the receiver consumed `increment` more bytes of the stream, or grew its window by them. */
export interface WindowFrame {
  type: typeof FrameType.WINDOW;
  streamId: number;
  increment: number;
}

/**
 * Credit given back: the sender of a stream idle for a while lowered its own credit by
 * `decrement` (what it held beyond the initial window) before sending this, so the receiver
 * may shrink the stream's window by as much. Sent in order with DATA, never ahead of it.
 */
export interface WindowReturnFrame {
  type: typeof FrameType.WINDOW_RETURN;
  streamId: number;
  decrement: number;
}

/** The sender will send no more data on the stream (TCP half-close). */
export interface FinFrame {
  type: typeof FrameType.FIN;
  streamId: number;
}

/** Abort the stream in both directions. */
export interface ResetFrame {
  type: typeof FrameType.RESET;
  streamId: number;
  reason: string;
}

/** Keep-alive / RTT probe; the peer echoes `nonce` in a PONG. */
export interface PingFrame {
  type: typeof FrameType.PING | typeof FrameType.PONG;
  streamId: number;
  nonce: Uint8Array;
}

/** The sender opens no new streams and accepts none; open ones may finish. */
export interface GoAwayFrame {
  type: typeof FrameType.GO_AWAY;
  streamId: number;
  reason: string;
}

/** Client → agent (reverse forwards): listen on `request` in the pod; `streamId` names the listener. */
export interface ListenFrame {
  type: typeof FrameType.LISTEN;
  streamId: number;
  request: OpenRequest;
}

/** Agent → client: the answer to LISTEN. */
export interface ListenResultFrame {
  type: typeof FrameType.LISTEN_RESULT;
  streamId: number;
  result: "ok" | OpenFailure;
  message: string;
}

/** Any frame. */
export type Frame =
  | HelloFrame
  | HelloOkFrame
  | HelloErrFrame
  | OpenFrame
  | OpenResultFrame
  | DataFrame
  | WindowFrame
  | WindowReturnFrame
  | FinFrame
  | ResetFrame
  | PingFrame
  | GoAwayFrame
  | ListenFrame
  | ListenResultFrame;

/** Input that is not a valid frame sequence. Always this class, never anything else. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

const RESULT_CODES: readonly ("ok" | OpenFailure)[] = [
  "ok",
  "no-such-host",
  "refused",
  "timeout",
  "unreachable",
  "forbidden",
  "error",
];
const HELLO_ERR_CODES: readonly HelloErrorCode[] = ["token", "version", "other"];
const PROTOCOLS: readonly Protocol[] = ["tcp", "udp"];
const ADDR_IPV4 = 4;
const ADDR_IPV6 = 6;
const ADDR_NAME = 0;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: false });

// ---------------------------------------------------------------------------------------
// Encoding

/** Writes payload fields in order into a growable scratch buffer. */
class PayloadWriter {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): this {
    this.room(1);
    this.view.setUint8(this.length, v);
    this.length += 1;
    return this;
  }
  u16(v: number): this {
    this.room(2);
    this.view.setUint16(this.length, v);
    this.length += 2;
    return this;
  }
  u32(v: number): this {
    this.room(4);
    this.view.setUint32(this.length, v);
    this.length += 4;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
    return this;
  }
  shortString(s: string, what: string): this {
    const b = utf8.encode(s);
    if (b.length > 0xff) throw new FrameError(`${what} is longer than 255 bytes`);
    return this.u8(b.length).bytes(b);
  }
  longString(s: string, what: string): this {
    const b = utf8.encode(s);
    if (b.length > 0xffff) throw new FrameError(`${what} is longer than 65535 bytes`);
    return this.u16(b.length).bytes(b);
  }
  /** A free-text tail, cut (on a character boundary) so the payload stays in bounds. */
  tailString(s: string): this {
    let b = utf8.encode(s);
    const max = MAX_PAYLOAD - this.length;
    if (b.length > max) b = utf8.encode(fromUtf8.decode(b.subarray(0, max)).replace(/\uFFFD$/, ""));
    return this.bytes(b.subarray(0, max));
  }
  done(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

function writeAddress(w: PayloadWriter, request: OpenRequest): void {
  const proto = PROTOCOLS.indexOf(request.protocol);
  if (proto < 0) throw new FrameError(`unknown protocol ${request.protocol}`);
  if (!Number.isInteger(request.port) || request.port < 0 || request.port > 0xffff) {
    throw new FrameError(`port ${request.port} is out of range`);
  }
  w.u8(proto).u16(request.port);
  const v4 = parseIPv4(request.host);
  if (v4) return void w.u8(ADDR_IPV4).bytes(v4);
  const v6 = parseIPv6(request.host);
  if (v6) return void w.u8(ADDR_IPV6).bytes(v6);
  w.u8(ADDR_NAME).shortString(request.host, "hostname");
}

function resultByte(result: "ok" | OpenFailure): number {
  const i = RESULT_CODES.indexOf(result);
  return i < 0 ? RESULT_CODES.indexOf("error") : i;
}

/** The payload bytes of `frame` (for DATA: the payload itself, not copied). */
export function encodePayload(frame: Frame): Uint8Array {
  switch (frame.type) {
    case FrameType.DATA:
      return frame.payload;
    case FrameType.FIN:
      return new Uint8Array(0);
    case FrameType.PING:
    case FrameType.PONG:
      return frame.nonce;
  }
  const w = new PayloadWriter();
  switch (frame.type) {
    case FrameType.HELLO:
      w.u32(MAGIC).u16(frame.protocolVersion).u32(frame.window);
      w.longString(frame.token, "token").shortString(frame.version, "version");
      break;
    case FrameType.HELLO_OK:
      w.u16(frame.protocolVersion).u32(frame.window).shortString(frame.version, "version");
      break;
    case FrameType.HELLO_ERR:
      w.u8(HELLO_ERR_CODES.indexOf(frame.code)).u16(frame.protocolVersion);
      w.shortString(frame.version, "version").tailString(frame.message);
      break;
    case FrameType.OPEN:
    case FrameType.LISTEN:
      writeAddress(w, frame.request);
      break;
    case FrameType.OPEN_RESULT:
    case FrameType.LISTEN_RESULT:
      w.u8(resultByte(frame.result)).tailString(frame.message);
      break;
    case FrameType.WINDOW:
      w.u32(frame.increment);
      break;
    case FrameType.WINDOW_RETURN:
      w.u32(frame.decrement);
      break;
    case FrameType.RESET:
    case FrameType.GO_AWAY:
      w.tailString(frame.reason);
      break;
  }
  return w.done();
}

/** Writes the header of a frame with `payloadLength` bytes into `into` at `offset`. */
export function writeHeader(
  into: Uint8Array,
  offset: number,
  type: number,
  streamId: number,
  payloadLength: number,
): void {
  if (payloadLength > MAX_PAYLOAD) {
    throw new FrameError(`payload of ${payloadLength} bytes exceeds ${MAX_PAYLOAD}`);
  }
  const view = new DataView(into.buffer, into.byteOffset + offset, HEADER_SIZE);
  view.setUint8(0, type);
  view.setUint8(1, 0);
  view.setUint32(2, streamId >>> 0);
  view.setUint32(6, payloadLength);
}

/** One frame as bytes (header + payload), in a fresh buffer. */
export function encodeFrame(frame: Frame): Uint8Array {
  const payload = encodePayload(frame);
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  writeHeader(out, 0, frame.type, frame.streamId, payload.length);
  out.set(payload, HEADER_SIZE);
  return out;
}

// ---------------------------------------------------------------------------------------
// Decoding

/** Reads payload fields in order, failing with FrameError when one runs past the end. */
class PayloadReader {
  private readonly view: DataView;
  private at = 0;
  constructor(private readonly buf: Uint8Array, private readonly what: string) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number): void {
    if (this.at + n > this.buf.length) throw new FrameError(`${this.what} frame is truncated`);
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.at++);
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.at);
    this.at += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.at);
    this.at += 4;
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }
  shortString(): string {
    return fromUtf8.decode(this.bytes(this.u8()));
  }
  longString(): string {
    return fromUtf8.decode(this.bytes(this.u16()));
  }
  tailString(): string {
    return fromUtf8.decode(this.bytes(this.buf.length - this.at));
  }
  end(): void {
    if (this.at !== this.buf.length) throw new FrameError(`${this.what} frame has trailing bytes`);
  }
}

function readAddress(r: PayloadReader): OpenRequest {
  const protocol = PROTOCOLS[r.u8()];
  if (!protocol) throw new FrameError("unknown protocol in open");
  const port = r.u16();
  const kind = r.u8();
  let host: string;
  if (kind === ADDR_IPV4) host = formatIPv4(r.bytes(4));
  else if (kind === ADDR_IPV6) host = formatIPv6(r.bytes(16));
  else if (kind === ADDR_NAME) {
    host = r.shortString();
    if (host.length === 0) throw new FrameError("empty hostname in open");
  } else throw new FrameError(`unknown address kind ${kind}`);
  r.end();
  return { protocol, host, port };
}

function readResult(r: PayloadReader): "ok" | OpenFailure {
  const code = RESULT_CODES[r.u8()];
  if (!code) throw new FrameError("unknown result code");
  return code;
}

/**
 * Decodes one frame from its type, stream id and payload. DATA keeps its payload uncopied, and
 * it alone keeps any of it (a ping's few nonce bytes are copied): so a DATA payload is the only
 * view of a transport read that outlives decoding, which lets reads be reused once their DATA
 * payloads are done with (see shareChunk).
 */
export function decodePayload(type: number, streamId: number, payload: Uint8Array): Frame {
  switch (type) {
    case FrameType.DATA:
      return { type, streamId, payload };
    case FrameType.FIN:
      if (payload.length !== 0) throw new FrameError("FIN frame has a payload");
      return { type, streamId };
    case FrameType.PING:
    case FrameType.PONG:
      if (payload.length > 64) throw new FrameError("ping nonce is longer than 64 bytes");
      return { type, streamId, nonce: payload.slice() };
  }
  const r = new PayloadReader(payload, frameName(type));
  switch (type) {
    case FrameType.HELLO: {
      if (r.u32() !== MAGIC) throw new FrameError("not a relay tunnel (bad magic)");
      const protocolVersion = r.u16();
      const window = r.u32();
      const token = r.longString();
      const version = r.shortString();
      r.end();
      return { type, streamId, protocolVersion, window, token, version };
    }
    case FrameType.HELLO_OK: {
      const protocolVersion = r.u16();
      const window = r.u32();
      const version = r.shortString();
      r.end();
      return { type, streamId, protocolVersion, window, version };
    }
    case FrameType.HELLO_ERR: {
      const code = HELLO_ERR_CODES[r.u8()] ?? "other";
      const protocolVersion = r.u16();
      const version = r.shortString();
      return { type, streamId, code, protocolVersion, version, message: r.tailString() };
    }
    case FrameType.OPEN:
    case FrameType.LISTEN:
      return { type, streamId, request: readAddress(r) };
    case FrameType.OPEN_RESULT:
    case FrameType.LISTEN_RESULT:
      return { type, streamId, result: readResult(r), message: r.tailString() };
    case FrameType.WINDOW: {
      const increment = r.u32();
      r.end();
      return { type, streamId, increment };
    }
    case FrameType.WINDOW_RETURN: {
      const decrement = r.u32();
      r.end();
      return { type, streamId, decrement };
    }
    case FrameType.RESET:
    case FrameType.GO_AWAY:
      return { type, streamId, reason: r.tailString() };
  }
  throw new FrameError(`unknown frame type ${type}`);
}

/** A frame type's name, for messages. */
export function frameName(type: number): string {
  for (const [name, value] of Object.entries(FrameType)) if (value === type) return name;
  return `type ${type}`;
}

/**
 * Turns a byte stream, cut anywhere, into frames.
 *
 * DATA payloads are views into the chunks they arrived in (no copy), so the caller must not
 * reuse a chunk's buffer while any of them is held (see shareChunk). A DATA frame cut across
 * chunks comes out as one piece per chunk, each but the last marked `more`: through a
 * port-forward the tunnel's bytes arrive in ~32 KiB pieces, so nearly every 64 KiB frame is
 * cut, and assembling each had cost a copy and an allocation of every byte moved. Any other
 * frame cut across chunks is assembled, into a buffer no larger than MAX_PAYLOAD. After a
 * FrameError the decoder is poisoned: every later push throws too.
 */
export class FrameDecoder {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private type = 0;
  private streamId = 0;
  private partial: Uint8Array | null = null;
  private partialFill = 0;
  /** Payload bytes of a cut DATA frame (of streamId) still to come. */
  private dataLeft = 0;
  private failed: FrameError | null = null;

  /** True when no frame is cut (a clean place for the stream to end). */
  get idle(): boolean {
    return this.headerFill === 0 && this.partial === null && this.dataLeft === 0;
  }

  /** Feeds `chunk`; returns the frames it completed, in order. */
  push(chunk: Uint8Array): Frame[] {
    if (this.failed) throw this.failed;
    try {
      return this.pushChunk(chunk);
    } catch (e) {
      this.failed = e instanceof FrameError ? e : new FrameError(`undecodable input: ${e}`);
      throw this.failed;
    }
  }

  private pushChunk(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.dataLeft > 0) {
        const n = Math.min(this.dataLeft, chunk.length - at);
        this.dataLeft -= n;
        const piece = chunk.subarray(at, at + n);
        frames.push({
          type: FrameType.DATA,
          streamId: this.streamId,
          payload: piece,
          more: this.dataLeft > 0,
        });
        at += n;
        continue;
      }
      if (this.partial) {
        const n = Math.min(this.partial.length - this.partialFill, chunk.length - at);
        this.partial.set(chunk.subarray(at, at + n), this.partialFill);
        this.partialFill += n;
        at += n;
        if (this.partialFill === this.partial.length) {
          const payload = this.partial;
          this.partial = null;
          frames.push(decodePayload(this.type, this.streamId, payload));
        }
        continue;
      }
      let headerView: Uint8Array;
      if (this.headerFill === 0 && chunk.length - at >= HEADER_SIZE) {
        headerView = chunk.subarray(at, at + HEADER_SIZE);
        at += HEADER_SIZE;
      } else {
        const n = Math.min(HEADER_SIZE - this.headerFill, chunk.length - at);
        this.header.set(chunk.subarray(at, at + n), this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill < HEADER_SIZE) break;
        this.headerFill = 0;
        headerView = this.header;
      }
      const view = new DataView(headerView.buffer, headerView.byteOffset, HEADER_SIZE);
      const type = view.getUint8(0);
      const streamId = view.getUint32(2);
      const length = view.getUint32(6);
      if (type < FrameType.HELLO || type > FrameType.WINDOW_RETURN) {
        throw new FrameError(`unknown frame type ${type}`);
      }
      if (length > MAX_PAYLOAD) {
        throw new FrameError(`${frameName(type)} frame of ${length} bytes exceeds ${MAX_PAYLOAD}`);
      }
      if (chunk.length - at >= length) {
        frames.push(decodePayload(type, streamId, chunk.subarray(at, at + length)));
        at += length;
      } else if (type === FrameType.DATA) {
        this.streamId = streamId;
        this.dataLeft = length;
      } else {
        this.type = type;
        this.streamId = streamId;
        this.partial = new Uint8Array(length);
        this.partialFill = 0;
      }
    }
    return frames;
  }
}

// ---------------------------------------------------------------------------------------
// Addresses

/** The 4 bytes of a dotted-quad IPv4 literal, or null if `s` is not one. */
export function parseIPv4(s: string): Uint8Array | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return null;
    const n = Number(parts[i]);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

/** The 16 bytes of an IPv6 literal (with `::` and an optional trailing IPv4), or null. */
export function parseIPv6(input: string): Uint8Array | null {
  const s = input.startsWith("[") && input.endsWith("]") ? input.slice(1, -1) : input;
  if (!s.includes(":") || s.includes("%")) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string): number[] | null => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      if (i === pieces.length - 1 && p.includes(".")) {
        const v4 = parseIPv4(p);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) out.push(parseInt(p, 16));
      else return null;
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...new Array(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

function formatIPv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 text for 16 address bytes (longest zero run of ≥2 groups becomes `::`). */
function formatIPv6(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[2 * i] << 8) | b[2 * i + 1]);
  let bestAt = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (bestAt < 0) return hex(g);
  return `${hex(g.slice(0, bestAt))}::${hex(g.slice(bestAt + bestLen))}`;
}
