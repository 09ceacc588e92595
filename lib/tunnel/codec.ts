/** Frame payloads to bytes and back; the layout of each is documented in frame.ts. */
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from "../net/address.ts";
import type { Protocol } from "../net/types.ts";
import {
  type Frame,
  FrameError,
  FrameType,
  HEADER_SIZE,
  type HelloErrorCode,
  MAGIC,
  MAX_PAYLOAD,
} from "./frame.ts";
import type { OpenFailure, OpenRequest } from "./types.ts";
import type { IncomingMode, IncomingRequest } from "../contract.ts";

const RESULT_CODES: readonly ("ok" | OpenFailure)[] = [
  "ok",
  "no-such-host",
  "refused",
  "timeout",
  "unreachable",
  "forbidden",
  "error",
  "in-use",
  "denied",
];
/** LISTEN's modes and LISTEN_RESULT's, by their byte. */
const INCOMING_MODES: readonly IncomingRequest[] = ["listen", "steal", "mirror", "auto"];
const HELLO_ERR_CODES: readonly HelloErrorCode[] = ["token", "version", "other"];
const PROTOCOLS: readonly Protocol[] = ["tcp", "udp"];
const ADDR_IPV4 = 4;
const ADDR_IPV6 = 6;
const ADDR_NAME = 0;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: false });
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

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
    case FrameType.READY:
      w.u32(MAGIC).u32(frame.window);
      break;
    case FrameType.HELLO_OK:
      w.u16(frame.protocolVersion).shortString(frame.version, "version");
      break;
    case FrameType.HELLO_ERR:
      w.u8(HELLO_ERR_CODES.indexOf(frame.code)).u16(frame.protocolVersion);
      w.shortString(frame.version, "version").tailString(frame.message);
      break;
    case FrameType.OPEN:
      writeAddress(w, frame.request);
      break;
    case FrameType.LISTEN:
      w.u8(INCOMING_MODES.indexOf(frame.mode));
      w.longString(frame.filter?.header ?? "", "header filter");
      w.longString(frame.filter?.path ?? "", "path filter");
      writeAddress(w, frame.request);
      break;
    case FrameType.OPEN_RESULT:
      w.u8(resultByte(frame.result)).tailString(frame.message);
      break;
    case FrameType.LISTEN_RESULT:
      w.u8(resultByte(frame.result)).u8(INCOMING_MODES.indexOf(frame.mode));
      w.tailString(frame.message);
      break;
    case FrameType.WINDOW:
      w.u32(frame.increment);
      break;
    case FrameType.WINDOW_RETURN:
      w.u32(frame.decrement);
      break;
    case FrameType.RESET:
    case FrameType.GO_AWAY:
    case FrameType.SHUTDOWN:
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
  /** Length-prefixed strings must be UTF-8: a replaced byte would not encode back the same. */
  shortString(): string {
    return this.strict(this.bytes(this.u8()));
  }
  longString(): string {
    return this.strict(this.bytes(this.u16()));
  }
  private strict(bytes: Uint8Array): string {
    try {
      return strictUtf8.decode(bytes);
    } catch {
      throw new FrameError(`${this.what} frame has a string that is not UTF-8`);
    }
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
    case FrameType.READY: {
      if (r.u32() !== MAGIC) throw new FrameError("not a relay tunnel (bad magic)");
      const window = r.u32();
      r.end();
      return { type, streamId, window };
    }
    case FrameType.HELLO_OK: {
      const protocolVersion = r.u16();
      const version = r.shortString();
      r.end();
      return { type, streamId, protocolVersion, version };
    }
    case FrameType.HELLO_ERR: {
      const code = HELLO_ERR_CODES[r.u8()] ?? "other";
      const protocolVersion = r.u16();
      const version = r.shortString();
      return { type, streamId, code, protocolVersion, version, message: r.tailString() };
    }
    case FrameType.OPEN:
      return { type, streamId, request: readAddress(r) };
    case FrameType.LISTEN: {
      const mode = INCOMING_MODES[r.u8()];
      if (!mode) throw new FrameError("unknown mode in listen");
      const header = r.longString();
      const path = r.longString();
      const request = readAddress(r);
      if (!header && !path) return { type, streamId, mode, request };
      const filter = { ...(header ? { header } : {}), ...(path ? { path } : {}) };
      return { type, streamId, mode, filter, request };
    }
    case FrameType.OPEN_RESULT:
      return { type, streamId, result: readResult(r), message: r.tailString() };
    case FrameType.LISTEN_RESULT: {
      const result = readResult(r);
      const mode = INCOMING_MODES[r.u8()];
      if (!mode || mode === "auto") throw new FrameError("unknown mode in listen result");
      return { type, streamId, result, mode: mode as IncomingMode, message: r.tailString() };
    }
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
    case FrameType.SHUTDOWN:
      return { type, streamId, reason: r.tailString() };
  }
  throw new FrameError(`unknown frame type ${type}`);
}

/** A frame type's name, for messages. */
export function frameName(type: number): string {
  for (const [name, value] of Object.entries(FrameType)) if (value === type) return name;
  return `type ${type}`;
}
