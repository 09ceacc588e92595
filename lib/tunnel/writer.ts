/**
 * The single writer of a tunnel's transport: frames are queued from anywhere, then copied
 * back to back into one buffer per batch and written with one call, so many small frames
 * (window updates, pongs, small data) cost one transport write.
 */
import { encodePayload, writeHeader } from "./codec.ts";
import { type Frame, FrameType, HEADER_SIZE } from "./frame.ts";

/** Bytes queued beyond which data senders wait (control frames are never refused). */
export const HIGH_WATER = 1024 * 1024;
/**
 * Control frames (credit, pongs) queued beyond this mean the peer sends them faster than it
 * reads the answers (a ping flood): the writer fails, which closes the tunnel.
 */
export const MAX_URGENT_BYTES = 1024 * 1024;
/**
 * What a woken sender is assumed to queue (a stream's largest DATA frame): room for this
 * much wakes one more waiter.
 */
const ROOM_PER_WAITER = 64 * 1024;
/** Most bytes copied into one transport write. */
const BATCH_BYTES = 256 * 1024;

/**
 * Where batches go: the transport's channel. Each batch has `headroom` free bytes before it
 * in its buffer (see HeadroomWriter).
 */
export interface BatchSink {
  write(batch: Uint8Array): Promise<void>;
  close(): Promise<void>;
  abort(): Promise<void>;
}

interface Queued {
  type: number;
  streamId: number;
  payload: Uint8Array;
  /** Called once the payload has been copied into a batch (see sendRaw). */
  copied?: () => void;
}

/** What a queue slot holds once its frame was copied into a batch. */
const SENT: Queued = { type: 0, streamId: 0, payload: new Uint8Array(0) };

/** Serializes frames onto a transport's writable. */
export class FrameWriter {
  private queue: Queued[] = [];
  /**
   * Credit and keep-alive frames, which go out ahead of queued data: a WINDOW frame stuck
   * behind a MiB of the other direction's data stretches every stream's credit round trip,
   * and with it what a window can carry. Their order relative to DATA/FIN does not matter.
   */
  private urgent: Queued[] = [];
  private urgentBytes = 0;
  private head = 0;
  private queued = 0;
  private flushing = false;
  private roomWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private failure: unknown = null;

  /** Told once if the transport refuses a write. */
  onError: (error: unknown) => void = () => {};

  private readonly headroom: number;
  /** The batch buffer, between writes (see Duplex.chunkFreeAfterWrite). */
  private spare: ArrayBuffer | undefined;
  private readonly reuseBatches: boolean;

  /**
   * `transport`: `headroom` bytes are left free before each batch; `chunkFreeAfterWrite`
   * lets one buffer carry every batch (see Duplex).
   */
  constructor(
    private readonly writer: BatchSink,
    transport: { headroom?: number; chunkFreeAfterWrite?: boolean } = {},
  ) {
    this.headroom = transport.headroom ?? 0;
    this.reuseBatches = transport.chunkFreeAfterWrite === true;
  }

  /** Bytes waiting to be written. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** True when data senders should wait (see `room`) or, for UDP, drop. */
  get full(): boolean {
    return this.queued >= HIGH_WATER;
  }

  /** Queues a frame; never blocks. DATA payloads are not copied until the batch is built. */
  send(frame: Frame): void {
    this.sendRaw(frame.type, frame.streamId, encodePayload(frame));
  }

  /**
   * Queues a frame from its parts. `copied` is told when the payload has been copied into a
   * batch, after which the writer holds none of its bytes; never, if the transport failed
   * first (the payload is then simply dropped).
   */
  sendRaw(type: number, streamId: number, payload: Uint8Array, copied?: () => void): void {
    if (this.failure !== null) return;
    const urgent = type === FrameType.WINDOW || type === FrameType.PING ||
      type === FrameType.PONG;
    if (urgent) {
      this.urgentBytes += HEADER_SIZE + payload.length;
      if (this.urgentBytes > MAX_URGENT_BYTES) {
        this.failure = new Error(
          `the peer does not read: over ${MAX_URGENT_BYTES} bytes of control frames queued`,
        );
        this.onError(this.failure);
        return;
      }
    }
    (urgent ? this.urgent : this.queue).push({ type, streamId, payload, copied });
    this.queued += HEADER_SIZE + payload.length;
    this.flushSoon();
  }

  /**
   * Queues a frame behind those already queued, even one that would otherwise go ahead (a
   * WINDOW): a stream's first grant must not reach the peer before the OPEN naming the stream.
   */
  sendInOrder(type: number, streamId: number, payload: Uint8Array): void {
    if (this.failure !== null) return;
    this.queue.push({ type, streamId, payload });
    this.queued += HEADER_SIZE + payload.length;
    this.flushSoon();
  }

  private flushSoon(): void {
    if (!this.flushing) {
      this.flushing = true;
      // Let the current task queue more frames before the first batch is cut.
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Resolves when the queue has room for this sender (at once if it is not full). Waiters
   * are woken in arrival order, only as many as the free room takes: waking them all would
   * let every waiting stream queue a frame the moment it drained.
   */
  room(): Promise<void> {
    if (!this.full || this.failure !== null) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** Resolves when everything queued so far has been handed to the transport. */
  drained(): Promise<void> {
    if (!this.flushing || this.failure !== null) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Closes the transport's writable after the queue drains (or aborts it on `abort`). */
  async close(abort = false): Promise<void> {
    if (!abort) await this.drained();
    const failed = this.failure !== null;
    this.failure ??= new Error("tunnel writer closed");
    this.queue = [];
    this.urgent = [];
    this.wake();
    try {
      if (abort || failed) await this.writer.abort();
      else await this.writer.close();
    } catch {
      // the transport is already gone; nothing left to tell it
    }
  }

  private async flush(): Promise<void> {
    try {
      while (
        (this.urgent.length > 0 || this.head < this.queue.length) && this.failure === null
      ) {
        const batch = this.cutBatch();
        await this.writer.write(batch);
        if (this.reuseBatches) this.spare = batch.buffer as ArrayBuffer;
        if (this.queued < HIGH_WATER) this.wakeRoom();
      }
    } catch (e) {
      if (this.failure === null) {
        this.failure = e;
        this.onError(e);
      }
    } finally {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
      this.flushing = false;
      this.wake();
    }
  }

  private cutBatch(): Uint8Array {
    const urgent = this.urgent;
    this.urgent = [];
    this.urgentBytes = 0;
    let size = 0;
    for (const f of urgent) size += HEADER_SIZE + f.payload.length;
    let end = this.head;
    while (end < this.queue.length) {
      const n = HEADER_SIZE + this.queue[end].payload.length;
      if (size > 0 && size + n > BATCH_BYTES) break;
      size += n;
      end++;
    }
    // The one copy on the way out: the transport frames this batch in place (headroom). A
    // reused buffer is batch-sized from the start, so every later batch fits in it; it is
    // lent to this batch's write and handed back in flush once that resolves.
    if (this.reuseBatches) this.spare ??= new ArrayBuffer(this.headroom + BATCH_BYTES);
    const spare = this.spare;
    this.spare = undefined;
    const buffer = spare !== undefined && spare.byteLength >= this.headroom + size
      ? spare
      : new ArrayBuffer(this.headroom + size);
    const out = new Uint8Array(buffer, this.headroom, size);
    let at = 0;
    for (const { type, streamId, payload, copied } of urgent) {
      writeHeader(out, at, type, streamId, payload.length);
      out.set(payload, at + HEADER_SIZE);
      at += HEADER_SIZE + payload.length;
      copied?.();
    }
    for (let i = this.head; i < end; i++) {
      const { type, streamId, payload, copied } = this.queue[i];
      // The slot would keep the payload's buffer alive until the next compaction: under
      // steady load, up to a thousand frames' worth.
      this.queue[i] = SENT;
      writeHeader(out, at, type, streamId, payload.length);
      out.set(payload, at + HEADER_SIZE);
      at += HEADER_SIZE + payload.length;
      copied?.();
    }
    this.head = end;
    this.queued -= size;
    // Compact now and then so the array does not grow without bound under steady load.
    if (this.head > 1024) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return out;
  }

  private wakeRoom(): void {
    if (this.failure !== null) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const w of waiters) w();
      return;
    }
    let free = HIGH_WATER - this.queued;
    let woken = 0;
    while (woken < this.roomWaiters.length && free > 0) {
      this.roomWaiters[woken++]();
      free -= ROOM_PER_WAITER;
    }
    if (woken > 0) this.roomWaiters = this.roomWaiters.slice(woken);
    // A woken sender may queue nothing (its stream was reset meanwhile); with nothing to
    // flush, nothing would wake the rest.
    if (woken > 0 && this.roomWaiters.length > 0) {
      queueMicrotask(() => {
        if (!this.flushing) this.wakeRoom();
      });
    }
  }

  private wake(): void {
    this.wakeRoom();
    if (this.flushing) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
