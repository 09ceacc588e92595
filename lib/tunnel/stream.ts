/**
 * One stream of a tunnel: receive queue and credit (what the peer may still send us), send
 * credit (what we may still send the peer), half-close and reset. Driven synchronously by
 * the session's frame dispatcher, so one stream never holds up another.
 */
import { UDP_SHARED_WINDOW, UDP_WINDOW } from "../contract.ts";
import { readableOf, writableOf } from "../net/channel.ts";
import { FrameType } from "./frame.ts";
import type { OpenRequest, TunnelStream } from "./types.ts";
import type { FrameWriter } from "./writer.ts";
import { ReceiveWindow, type StreamLimits } from "./receive_window.ts";

/** Largest DATA payload for TCP; keeps frames big when data is available. */
export const MAX_DATA = 64 * 1024;

/** What a stream needs from its session. */
export interface StreamHost {
  readonly writer: FrameWriter;
  /** Called once, when the stream has finished both ways or was reset. */
  streamDone(id: number): void;
  /** Nothing holds `chunk`'s bytes any more (see TunnelOptions.buffers). */
  release(chunk: Uint8Array): void;
}

/** Thrown into a stream's readable/writable when it was reset or its tunnel died. */
export class StreamResetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StreamResetError";
  }
}

/**
 * The session's implementation of TunnelStream. Its ByteChannel methods (read, write,
 * closeWrite) are the stream; `readable` and `writable` are Web Streams made on them when
 * first asked for, so a spliced connection, which never asks, costs neither. A stream is read
 * one way or the other, never both.
 */
export class MuxStream implements TunnelStream {
  readonly closed: Promise<void>;
  /** Settles with the peer's answer to the OPEN (see TunnelStream.opened). */
  readonly opened: Promise<void>;
  dropped = 0;
  private settleOpened: { resolve: () => void; reject: (e: unknown) => void } | null = null;

  private readonly udp: boolean;
  private resolveClosed!: () => void;
  private webReadable: ReadableStream<Uint8Array> | undefined;
  private webWritable: WritableStream<Uint8Array> | undefined;
  private writeController: WritableStreamDefaultController | undefined;
  private failureListeners: ((error: Error) => void)[] = [];

  // receive side
  private queue: Uint8Array[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  /** The read() waiting for data, if any. */
  private reader:
    | { resolve: (chunk: Uint8Array | null) => void; reject: (e: unknown) => void }
    | null = null;
  private remoteFin = false;
  private readDone = false;
  /** The pieces so far of a datagram cut across transport reads (UDP). */
  private datagramPieces: Uint8Array[] = [];
  /** What the peer may have in flight toward us, and the credit owed to it. */
  private readonly window: ReceiveWindow;

  // send side
  private readonly initialCredit: number;
  private sendCredit: number;
  private creditWaiter: { resolve: () => void; reject: (e: unknown) => void } | null = null;
  private localFin = false;
  /** When a write last started or finished (TCP): how long the sender has been quiet. */
  private lastWrite = performance.now();
  private writing = false;

  private failure: StreamResetError | null = null;
  private done = false;

  constructor(
    readonly id: number,
    readonly request: OpenRequest,
    private readonly host: StreamHost,
    private readonly limits: StreamLimits,
  ) {
    this.udp = request.protocol === "udp";
    this.initialCredit = this.udp ? Math.min(limits.sendWindow, UDP_WINDOW) : limits.sendWindow;
    this.sendCredit = this.initialCredit;
    if (this.udp) limits.udpStreams.open++;
    this.window = new ReceiveWindow(limits, this.udp);
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.opened = new Promise((resolve, reject) => (this.settleOpened = { resolve, reject }));
    // Nobody need wait for the answer: an unawaited refusal is not an unhandled rejection.
    this.opened.catch(() => {});
  }

  /** The peer answered the OPEN with ok (or this end accepted the stream). */
  markOpened(): void {
    this.settleOpened?.resolve();
    this.settleOpened = null;
  }

  /** The peer refused the OPEN: `opened` rejects with its reason (before the teardown). */
  markRefused(error: Error): void {
    this.settleOpened?.reject(error);
    this.settleOpened = null;
  }

  /** The receive side as a Web Stream (made on first use; see the class's doc). */
  get readable(): ReadableStream<Uint8Array> {
    return this.webReadable ??= readableOf(this, () => this.onReadCancel());
  }

  /** The send side as a Web Stream (made on first use; see the class's doc). */
  get writable(): WritableStream<Uint8Array> {
    return this.webWritable ??= writableOf(this, (c) => void (this.writeController = c));
  }

  /** Bytes received and not yet read (for TCP never more than the receive window). */
  get buffered(): number {
    return this.queuedBytes;
  }

  /** The current receive window (TCP: grows from the initial one while the reader keeps up). */
  get receiveWindow(): number {
    return this.window.size;
  }

  /** As reset: the ByteChannel name for it. */
  abort(reason: string): void {
    this.reset(reason);
  }

  onFailure(callback: (error: Error) => void): void {
    if (this.failure) callback(this.failure);
    else this.failureListeners.push(callback);
  }

  /** Abandons both directions and tells the peer. */
  reset(reason = "reset"): void {
    // Already failed (the peer's RESET, the tunnel's end): its splice aborting in answer must
    // not send the peer a RESET back.
    if (this.done || this.failure) return;
    this.host.writer.sendRaw(FrameType.RESET, this.id, new TextEncoder().encode(reason));
    this.teardown(new StreamResetError(`stream reset: ${reason}`));
  }

  // ----- driven by the session --------------------------------------------------------

  /**
   * A DATA frame, or a piece of one (`more`: the frame goes on in the next DATA), arrived.
   * Returns false if the peer broke flow control.
   */
  onData(payload: Uint8Array, more = false): boolean {
    if (this.done || this.readDone) return true;
    if (this.remoteFin) return false;
    if (this.udp) {
      // A datagram is only ever delivered whole: its pieces wait as views, copied once.
      if (more || this.datagramPieces.length > 0) {
        this.datagramPieces.push(payload);
        if (more) return true;
        payload = joinPieces(this.datagramPieces);
        for (const piece of this.datagramPieces) this.host.release(piece);
        this.datagramPieces = [];
      }
      // The sender may overshoot its credit by one datagram at most; more is abuse.
      if (this.queuedBytes + payload.length > this.window.size + MAX_DATA) return false;
      if (this.queue.length - this.queueHead >= this.limits.udpQueue) {
        this.dropped++;
        // A dropped datagram is done with: its credit goes back, or the sender would starve.
        this.consumed(payload.length);
        return true;
      }
    } else if (this.queuedBytes + payload.length > this.window.size) {
      return false;
    } else {
      const headStart = this.window.resumed();
      if (headStart > 0) this.host.writer.sendRaw(FrameType.WINDOW, this.id, u32(headStart));
    }
    if (this.reader) {
      this.deliver(payload);
    } else {
      // A small view into a large transport chunk would pin the whole chunk while it waits,
      // so the window would no longer bound memory: copy those out.
      if (payload.length * 4 < payload.buffer.byteLength) {
        const copy = payload.slice();
        this.host.release(payload);
        payload = copy;
      }
      this.queue.push(payload);
      this.queuedBytes += payload.length;
    }
    return true;
  }

  /** The peer will send no more. */
  onFin(): void {
    if (this.done || this.remoteFin) return;
    this.remoteFin = true;
    if (this.reader && this.queueHead === this.queue.length) this.endRead();
    this.maybeDone();
  }

  /**
   * The peer's sender gave back `decrement` bytes of credit it held beyond the initial
   * window (having lowered its own credit first): the window shrinks by as much, not below
   * the initial one, and the growth goes back to the session's budget.
   */
  onWindowReturn(decrement: number): void {
    if (this.done || this.udp) return;
    this.window.shrink(decrement);
  }

  /**
   * Called now and then by the session: a TCP stream that has written nothing for `idleMs`
   * gives back the credit it holds beyond the initial window (see onWindowReturn). Its own
   * credit is lowered first, and the frame goes in order behind any DATA already queued, so
   * the peer never sees more than the smaller window allows.
   */
  returnIdleCredit(now: number, idleMs: number): void {
    if (this.udp || this.done || this.failure || this.localFin || this.writing) return;
    if (now - this.lastWrite < idleMs) return;
    const excess = this.sendCredit - this.initialCredit;
    if (excess <= 0) return;
    this.sendCredit -= excess;
    this.host.writer.sendRaw(FrameType.WINDOW_RETURN, this.id, u32(excess));
  }

  /** The peer granted `increment` more bytes. */
  onWindow(increment: number): void {
    if (this.done) return;
    this.sendCredit = Math.min(this.sendCredit + increment, 2 ** 31);
    const waiter = this.creditWaiter;
    this.creditWaiter = null;
    waiter?.resolve();
  }

  /** The peer reset the stream, or the tunnel went away. */
  teardown(error: StreamResetError): void {
    if (this.done) return;
    // Reset before any answer (by either end, or the tunnel's end): the open never completed.
    this.markRefused(error);
    this.failure = error;
    this.queue = [];
    this.queueHead = 0;
    this.queuedBytes = 0;
    // A Web Streams writer that is not writing now learns of it here, as a splice does
    // through onFailure; a reader learns of it from its next read.
    try {
      this.writeController?.error(error);
    } catch {
      // already closed
    }
    this.readDone = true;
    const reader = this.reader;
    this.reader = null;
    reader?.reject(error);
    const waiter = this.creditWaiter;
    this.creditWaiter = null;
    waiter?.reject(error);
    const listeners = this.failureListeners;
    this.failureListeners = [];
    for (const listener of listeners) listener(error);
    this.finish();
  }

  // ----- receive side ------------------------------------------------------------------

  /**
   * The next chunk received (for UDP: one whole datagram), or null once the peer has sent FIN
   * and everything before it was read. Rejects once the stream is reset. One read at a time.
   */
  read(): Promise<Uint8Array | null> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.queueHead < this.queue.length) {
      const chunk = this.queue[this.queueHead];
      this.queue[this.queueHead++] = EMPTY;
      if (this.queueHead === this.queue.length) {
        this.queue = [];
        this.queueHead = 0;
      } else if (this.queueHead > 256) {
        this.queue = this.queue.slice(this.queueHead);
        this.queueHead = 0;
      }
      this.queuedBytes -= chunk.length;
      this.consumed(chunk.length);
      return Promise.resolve(chunk);
    }
    if (this.remoteFin || this.readDone) {
      this.endRead();
      return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => (this.reader = { resolve, reject }));
  }

  private deliver(payload: Uint8Array): void {
    const reader = this.reader!;
    this.reader = null;
    this.consumed(payload.length);
    reader.resolve(payload);
  }

  private endRead(): void {
    const reader = this.reader;
    this.reader = null;
    reader?.resolve(null);
    if (this.readDone) return;
    this.readDone = true;
    this.maybeDone();
  }

  /**
   * The stream is known to both ends (our OPEN is sent, or we accepted the peer's): grant the
   * peer its head start beyond the initial window (see ReceiveWindow.headStart).
   */
  grantHeadStart(): void {
    if (this.done || this.remoteFin) return;
    const increment = this.window.headStart();
    if (increment > 0) this.host.writer.sendInOrder(FrameType.WINDOW, this.id, u32(increment));
  }

  /** Our reader took `n` bytes: give the peer credit in batches of a quarter window. */
  private consumed(n: number): void {
    if (this.remoteFin) return;
    const increment = this.window.taken(n);
    if (increment > 0) this.host.writer.sendRaw(FrameType.WINDOW, this.id, u32(increment));
  }

  private onReadCancel(): void {
    if (this.readDone) return;
    this.readDone = true;
    this.queue = [];
    this.queueHead = 0;
    this.queuedBytes = 0;
    // Nobody will read what the peer still sends: stop it, like a socket closed with unread data.
    if (!this.remoteFin) this.reset("reader cancelled");
    else this.maybeDone();
  }

  // ----- send side ---------------------------------------------------------------------

  /**
   * Sends `chunk` (UDP: as one datagram), waiting for the peer's credit and the tunnel's
   * room; rejects once the stream is reset. One write at a time.
   */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    const writer = this.host.writer;
    if (this.udp) {
      if (chunk.length > MAX_DATA) return void this.dropped++;
      // Out of credit, this session waits, and only it: its source is a bounded queue that
      // drops (the listener's per-session queue, the agent socket's receive buffer), so a
      // flood is shed where it enters, without spending the CPU to carry it this far first.
      while (this.sendCredit <= 0 || this.overSharedCap()) {
        await new Promise<void>((resolve, reject) => (this.creditWaiter = { resolve, reject }));
        if (this.failure) throw this.failure;
      }
      // Never wait on the shared writer: when TCP streams have filled it, datagrams drop.
      if (writer.full) return void this.dropped++;
      writer.sendRaw(FrameType.DATA, this.id, chunk);
      this.sendCredit -= chunk.length;
      return;
    }
    // A write that throws has failed the stream, which then gives nothing back.
    this.writing = true;
    let at = 0;
    while (at < chunk.length) {
      while (this.sendCredit <= 0) {
        await new Promise<void>((resolve, reject) => (this.creditWaiter = { resolve, reject }));
      }
      // Wait for room before queueing, not after: else every stream could queue a chunk
      // beyond the writer's high-water mark.
      while (writer.full && !this.failure) await writer.room();
      if (this.failure) throw this.failure;
      const n = Math.min(this.sendCredit, chunk.length - at, MAX_DATA);
      // Frames are copied out in order, so once the last piece is, the whole chunk is free
      // for its source to read into again.
      const copied = at + n === chunk.length ? () => this.host.release(chunk) : undefined;
      writer.sendRaw(FrameType.DATA, this.id, chunk.subarray(at, at + n), copied);
      this.sendCredit -= n;
      at += n;
    }
    this.writing = false;
    this.lastWrite = performance.now();
  }

  /** Whether this UDP stream has its share in flight while others share the tunnel. */
  private overSharedCap(): boolean {
    return this.limits.udpStreams.open > 1 &&
      this.initialCredit - this.sendCredit >= UDP_SHARED_WINDOW;
  }

  /** Sends FIN: the peer's reads end once they have taken everything sent before it. */
  closeWrite(): void {
    if (this.failure) throw this.failure;
    this.localFin = true;
    this.host.writer.sendRaw(FrameType.FIN, this.id, EMPTY);
    this.maybeDone();
  }

  // ----- lifecycle ---------------------------------------------------------------------

  private maybeDone(): void {
    if (
      this.localFin && this.remoteFin && (this.readDone || this.queueHead === this.queue.length)
    ) {
      this.finish();
    }
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    if (this.udp) this.limits.udpStreams.open--;
    else this.window.close();
    this.host.streamDone(this.id);
    this.resolveClosed();
  }
}

const EMPTY = new Uint8Array(0);

/** A credit frame's payload: `n` as a big-endian u32. */
function u32(n: number): Uint8Array {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setUint32(0, n);
  return payload;
}

/** The bytes of `pieces`, end to end. */
function joinPieces(pieces: Uint8Array[]): Uint8Array {
  let size = 0;
  for (const piece of pieces) size += piece.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const piece of pieces) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}
