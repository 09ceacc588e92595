/**
 * RFC 6455 framing for a WebSocket client: an incremental parser of what the server sends and
 * an encoder of masked frames. No extension is ever negotiated, so reserved bits must be zero.
 */

/** Frame opcodes (RFC 6455 §5.2). */
export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

/** Close codes this client sends or tells apart (RFC 6455 §7.4.1). */
export const CloseCode = {
  NORMAL: 1000,
  PROTOCOL_ERROR: 1002,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  TOO_BIG: 1009,
} as const;

/** The peer broke the protocol; `closeCode` is what the Close frame sent back says. */
export class WebSocketProtocolError extends Error {
  constructor(message: string, readonly closeCode: number = CloseCode.PROTOCOL_ERROR) {
    super(message);
    this.name = "WebSocketProtocolError";
  }
}

/** A frame's payload, or the part of it that one pushed chunk carried. */
export interface FramePiece {
  opcode: number;
  /** The frame ends its message. */
  fin: boolean;
  /**
   * Data frames: a view into the chunk it arrived in, never copied. Control frames are always
   * whole (first and last) and their payload is a copy when it was cut across chunks.
   */
  payload: Uint8Array;
  /** This piece starts its frame. */
  first: boolean;
  /** This piece ends its frame. */
  last: boolean;
}

/** Largest payload a frame may announce: the length must fit a JavaScript number exactly. */
const MAX_FRAME_LENGTH = Number.MAX_SAFE_INTEGER;
const MAX_CONTROL_PAYLOAD = 125;

/**
 * Cuts a server's byte stream into frame pieces, however the stream is split. After a
 * protocol error the parser stays failed: every later push throws the same error.
 */
export class FrameParser {
  /** Header bytes gathered so far when a header was cut (at most 2 + 8). */
  readonly #header = new Uint8Array(10);
  #headerFill = 0;
  #opcode = 0;
  #fin = false;
  /** Payload bytes of the current frame still to come; -1 while reading a header. */
  #left = -1;
  #started = false;
  /** A control frame's payload being gathered across chunks. */
  #control: Uint8Array | null = null;
  #controlFill = 0;
  #failed: WebSocketProtocolError | null = null;

  /** True between frames: a clean place for the stream to end. */
  get idle(): boolean {
    return this.#left < 0 && this.#headerFill === 0;
  }

  /** Feeds `chunk`; returns the pieces it completed, in order. */
  push(chunk: Uint8Array): FramePiece[] {
    if (this.#failed) throw this.#failed;
    try {
      return this.#push(chunk);
    } catch (error) {
      this.#failed = error instanceof WebSocketProtocolError
        ? error
        : new WebSocketProtocolError(`undecodable input: ${error}`);
      throw this.#failed;
    }
  }

  #push(chunk: Uint8Array): FramePiece[] {
    const pieces: FramePiece[] = [];
    let at = 0;
    while (at < chunk.length || this.#left === 0) {
      if (this.#left < 0) {
        at = this.#readHeader(chunk, at);
        if (this.#left < 0) break; // the header goes on in the next chunk
      }
      if (this.#opcode >= Opcode.CLOSE) {
        at = this.#gatherControl(chunk, at, pieces);
        continue;
      }
      const n = Math.min(this.#left, chunk.length - at);
      this.#left -= n;
      pieces.push({
        opcode: this.#opcode,
        fin: this.#fin,
        payload: chunk.subarray(at, at + n),
        first: !this.#started,
        last: this.#left === 0,
      });
      this.#started = true;
      at += n;
      if (this.#left === 0) this.#left = -1;
    }
    return pieces;
  }

  /** Reads (the rest of) a header from `chunk` at `at`; sets #left once it is whole. */
  #readHeader(chunk: Uint8Array, at: number): number {
    if (this.#headerFill === 0 && chunk.length - at >= 2) {
      const need = headerLength(chunk[at + 1]);
      if (chunk.length - at >= need) {
        this.#startFrame(chunk, at);
        return at + need;
      }
    }
    // Cut header: gather it byte by byte (at most ten bytes).
    while (at < chunk.length) {
      this.#header[this.#headerFill++] = chunk[at++];
      if (this.#headerFill >= 2 && this.#headerFill === headerLength(this.#header[1])) {
        this.#headerFill = 0;
        this.#startFrame(this.#header, 0);
        break;
      }
    }
    return at;
  }

  #startFrame(bytes: Uint8Array, at: number): void {
    const b0 = bytes[at];
    const b1 = bytes[at + 1];
    if (b0 & 0x70) {
      throw new WebSocketProtocolError("the server set reserved bits, and no extension was agreed");
    }
    if (b1 & 0x80) throw new WebSocketProtocolError("the server masked a frame");
    const opcode = b0 & 0x0f;
    const fin = (b0 & 0x80) !== 0;
    let length = b1 & 0x7f;
    if (length === 126) length = (bytes[at + 2] << 8) | bytes[at + 3];
    else if (length === 127) {
      const high = ((bytes[at + 2] << 24) | (bytes[at + 3] << 16) | (bytes[at + 4] << 8) |
        bytes[at + 5]) >>> 0;
      const low = ((bytes[at + 6] << 24) | (bytes[at + 7] << 16) | (bytes[at + 8] << 8) |
        bytes[at + 9]) >>> 0;
      length = high * 2 ** 32 + low;
      if (length > MAX_FRAME_LENGTH) {
        throw new WebSocketProtocolError(`a frame announced ${length} bytes`, CloseCode.TOO_BIG);
      }
    }
    if (opcode >= Opcode.CLOSE) {
      if (opcode > Opcode.PONG) throw new WebSocketProtocolError(`unknown opcode ${opcode}`);
      if (!fin) throw new WebSocketProtocolError("a control frame was fragmented");
      if (length > MAX_CONTROL_PAYLOAD) {
        throw new WebSocketProtocolError(`a control frame of ${length} bytes (at most 125)`);
      }
    } else if (opcode > Opcode.BINARY) {
      throw new WebSocketProtocolError(`unknown opcode ${opcode}`);
    }
    this.#opcode = opcode;
    this.#fin = fin;
    this.#left = length;
    this.#started = false;
  }

  /** Control payloads are at most 125 bytes: always handed on whole. */
  #gatherControl(chunk: Uint8Array, at: number, pieces: FramePiece[]): number {
    const n = Math.min(this.#left, chunk.length - at);
    let payload: Uint8Array | null = null;
    if (this.#control === null && n === this.#left) {
      payload = chunk.subarray(at, at + n);
    } else {
      this.#control ??= new Uint8Array(this.#left);
      this.#control.set(chunk.subarray(at, at + n), this.#controlFill);
      this.#controlFill += n;
      if (n === this.#left) payload = this.#control;
    }
    this.#left -= n;
    if (payload !== null) {
      pieces.push({ opcode: this.#opcode, fin: true, payload, first: true, last: true });
      this.#control = null;
      this.#controlFill = 0;
      this.#left = -1;
    }
    return at + n;
  }
}

/** Header bytes (without a mask: the server sends none) given the second byte. */
function headerLength(b1: number): number {
  const length = b1 & 0x7f;
  return length === 126 ? 4 : length === 127 ? 10 : 2;
}

/** Where a frame's payload starts in an encoder buffer: the header goes right before it. */
const PAYLOAD_AT = 16;
/** Encoder buffers of this size (a tunnel batch and its headers) are kept for reuse. */
const KEPT_BUFFER_BYTES = PAYLOAD_AT + 256 * 1024 + 64;
const KEPT_BUFFERS = 4;
/** Frames up to this size get a buffer of their own size (see FrameEncoder.#take). */
const SMALL_FRAME_BYTES = 64 * 1024;

/**
 * A buffer frames are built in, with views made once: masking XORs eight bytes at a time
 * through `words`, the payload starting eight-byte aligned at PAYLOAD_AT.
 */
class FrameBuffer {
  readonly bytes: Uint8Array;
  readonly words: BigUint64Array;
  constructor(size: number) {
    const buffer = new ArrayBuffer(size);
    this.bytes = new Uint8Array(buffer);
    this.words = new BigUint64Array(buffer, 0, size >>> 3);
  }
}

/** A frame ready to write; give it back to its encoder once written. */
export interface EncodedFrame {
  readonly bytes: Uint8Array;
  readonly buffer: FrameBuffer;
}

/** Builds masked client frames in buffers it reuses once they are released. */
export class FrameEncoder {
  readonly #free: FrameBuffer[] = [];
  /** Random masking keys, drawn a few thousand at a time (one call per frame costs more). */
  readonly #keys = new Uint8Array(4096);
  #keyAt = this.#keys.length;
  /** The key repeated to eight bytes, read back as one word for maskInPlace. */
  readonly #keyBytes = new Uint8Array(8);
  readonly #keyWord = new BigUint64Array(this.#keyBytes.buffer);

  /**
   * One frame whose payload is `parts` back to back, masked with a fresh random key. The parts
   * are copied: they are free again when this returns.
   */
  encode(opcode: number, parts: readonly Uint8Array[], fin = true): EncodedFrame {
    let length = 0;
    for (const part of parts) length += part.length;
    const buffer = this.#take(PAYLOAD_AT + length);
    const out = buffer.bytes;
    const headerLength = 6 + (length < 126 ? 0 : length < 65536 ? 2 : 8);
    let h = PAYLOAD_AT - headerLength;
    const start = h;
    out[h++] = (fin ? 0x80 : 0) | opcode;
    if (length < 126) out[h++] = 0x80 | length;
    else if (length < 65536) {
      out[h++] = 0x80 | 126;
      out[h++] = length >>> 8;
      out[h++] = length & 0xff;
    } else {
      out[h++] = 0x80 | 127;
      const high = Math.floor(length / 2 ** 32);
      for (let shift = 24; shift >= 0; shift -= 8) out[h++] = (high >>> shift) & 0xff;
      for (let shift = 24; shift >= 0; shift -= 8) out[h++] = (length >>> shift) & 0xff;
    }
    if (this.#keyAt + 4 > this.#keys.length) {
      crypto.getRandomValues(this.#keys);
      this.#keyAt = 0;
    }
    const key = this.#keys.subarray(this.#keyAt, this.#keyAt + 4);
    this.#keyAt += 4;
    out.set(key, h);
    let at = PAYLOAD_AT;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    for (let i = 0; i < 8; i++) this.#keyBytes[i] = key[i & 3];
    maskInPlace(buffer, PAYLOAD_AT, length, key, this.#keyWord[0]);
    return { bytes: out.subarray(start, PAYLOAD_AT + length), buffer };
  }

  /** The frame has been written: its buffer may carry another. */
  release(frame: EncodedFrame): void {
    const { buffer } = frame;
    if (buffer.bytes.length === KEPT_BUFFER_BYTES && this.#free.length < KEPT_BUFFERS) {
      this.#free.push(buffer);
    }
  }

  /**
   * A buffer for a frame of `size` bytes. Only large frames take a kept-size buffer: a frame
   * waits in the connection's queue until written, and while the network is slower than the
   * tunnel, hundreds of small frames (credit, pongs, short batches) queue up behind large ones.
   */
  #take(size: number): FrameBuffer {
    if (size <= SMALL_FRAME_BYTES) return new FrameBuffer((size + 7) & ~7);
    if (size <= KEPT_BUFFER_BYTES) return this.#free.pop() ?? new FrameBuffer(KEPT_BUFFER_BYTES);
    return new FrameBuffer(size + 8);
  }
}

/**
 * XORs `length` bytes at `start` (eight-byte aligned) with the repeated 4-byte `key`, eight
 * bytes per step: `keyWord` is the key repeated twice as read through a 64-bit view, so the
 * platform's byte order does not matter.
 */
function maskInPlace(
  buffer: FrameBuffer,
  start: number,
  length: number,
  key: Uint8Array,
  keyWord: bigint,
): void {
  const { bytes, words } = buffer;
  const end = start + length;
  const wordsEnd = end >>> 3;
  for (let i = start >>> 3; i < wordsEnd; i++) words[i] ^= keyWord;
  for (let i = wordsEnd << 3; i < end; i++) bytes[i] ^= key[(i - start) & 3];
}

/** The payload of a Close frame: the code (none for NO_STATUS), then the reason as UTF-8. */
export function closePayload(code: number, reason = ""): Uint8Array {
  if (code === CloseCode.NO_STATUS) return new Uint8Array(0);
  let text = new TextEncoder().encode(reason);
  if (text.length > MAX_CONTROL_PAYLOAD - 2) {
    // Cut at a character's first byte: the reason must stay UTF-8.
    let end = MAX_CONTROL_PAYLOAD - 2;
    while (end > 0 && (text[end] & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const payload = new Uint8Array(2 + text.length);
  payload[0] = code >>> 8;
  payload[1] = code & 0xff;
  payload.set(text, 2);
  return payload;
}

/** Reads a Close frame's payload; a code no endpoint may send is a protocol error. */
export function parseClosePayload(payload: Uint8Array): { code: number; reason: string } {
  if (payload.length === 0) return { code: CloseCode.NO_STATUS, reason: "" };
  if (payload.length === 1) throw new WebSocketProtocolError("a Close frame of one byte");
  const code = (payload[0] << 8) | payload[1];
  const sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
  if (!sendable) throw new WebSocketProtocolError(`a Close frame with code ${code}`);
  let reason: string;
  try {
    reason = new TextDecoder("utf-8", { fatal: true }).decode(payload.subarray(2));
  } catch {
    throw new WebSocketProtocolError("a Close reason that is not UTF-8", CloseCode.INVALID_DATA);
  }
  return { code, reason };
}
