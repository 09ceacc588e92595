/** Cutting a tunnel's byte stream into frames, however the transport splits it. */
import { decodePayload, frameName } from "./codec.ts";
import { type Frame, FrameError, FrameType, HEADER_SIZE, MAX_PAYLOAD } from "./frame.ts";

/** The highest frame type this end knows. */
const LAST_TYPE = Math.max(...Object.values(FrameType));

/**
 * Turns a byte stream, cut anywhere, into frames.
 *
 * DATA payloads are views into the chunks they arrived in (no copy), so the caller must not
 * reuse a chunk's buffer while any of them is held (see BufferPool.share). A DATA frame cut
 * across chunks comes out as one piece per chunk, each but the last marked `more`, because a
 * port-forward cuts nearly every frame and assembling each would copy every byte moved. Any
 * other frame cut across chunks is assembled, into a buffer no larger than MAX_PAYLOAD. After
 * a FrameError the decoder is poisoned: every later push throws too.
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
      if (type < FrameType.HELLO || type > LAST_TYPE) {
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
