/**
 * The multiplexer: a Tunnel over one transport Duplex. One reader loop decodes frames and
 * dispatches them synchronously to streams; one FrameWriter serializes everything sent.
 */
import { describeError } from "../errors.ts";
import type { BufferPool } from "../net/buffer_pool.ts";
import { channelOf } from "../net/channel.ts";
import { splice } from "../net/splice.ts";
import type { ByteChannel } from "../net/types.ts";
import type { IncomingMode } from "../contract.ts";
import type { FrameDecoder } from "./decoder.ts";
import {
  DEFAULT_IDLE_CREDIT_MS,
  DEFAULT_KEEPALIVE_MS,
  DEFAULT_MAX_DIALS,
  DEFAULT_MAX_STREAM_WINDOW,
  DEFAULT_MAX_STREAMS,
  DEFAULT_SESSION_GROWTH,
  DEFAULT_STREAM_HEAD_START,
  DEFAULT_UDP_QUEUE,
  MAX_STREAM_ID,
} from "./defaults.ts";
import { type Frame, FrameError, FrameType } from "./frame.ts";
import { KeepAlive } from "./keepalive.ts";
import { Listeners } from "./listeners.ts";
import type { StreamLimits } from "./receive_window.ts";
import { MuxStream, StreamResetError } from "./stream.ts";
import { HandshakeError } from "./handshake_error.ts";
import type { FrameWriter } from "./writer.ts";
import {
  type ListenOptions,
  OpenError,
  type OpenFailure,
  type OpenHandler,
  type OpenOptions,
  type OpenRequest,
  type Tunnel,
  type TunnelOptions,
  type TunnelStream,
} from "./types.ts";

/** Everything a session needs once the handshake is done. */
export interface SessionInit {
  role: "client" | "agent";
  reader: ByteChannel;
  frameWriter: FrameWriter;
  decoder: FrameDecoder;
  /** Frames that arrived in the same chunk as the handshake's first frame. */
  pending: Frame[];
  /** The peer's version; "" until its answer when `answer` is given. */
  peerVersion: string;
  /**
   * A client session started on the agent's READY, before its answer to HELLO: `check` takes
   * the first frame the agent sends next and returns its version, or throws the
   * HandshakeError the session then closes with; no answer within `timeoutMs` closes it too.
   */
  answer?: { check: (frame: Frame) => string; timeoutMs: number };
  /** The window we grant (our streamWindow) and the one the peer granted us. */
  receiveWindow: number;
  sendWindow: number;
  options: TunnelOptions & { udpQueue?: number; firstStreamId?: number };
}

interface PendingOpen {
  stream: MuxStream;
  resolve: (s: TunnelStream) => void;
  reject: (e: unknown) => void;
}

/** A live tunnel. */
export class Session implements Tunnel {
  readonly closed: Promise<void>;
  readonly handshake: Promise<void>;
  /** Why the tunnel closed, once it has. */
  closeReason: string | null = null;

  private readonly writer: FrameWriter;
  private readonly reader: ByteChannel;
  private readonly decoder: FrameDecoder;
  private readonly streams = new Map<number, MuxStream>();
  private readonly opening = new Map<number, PendingOpen>();
  private readonly onOpen?: OpenHandler;
  private readonly onStreamEnd?: (stream: TunnelStream) => void;
  private readonly onSessionEnd?: (reason: string) => void;
  private readonly listeners: Listeners;
  /** Opens from the peer not yet answered, each abortable (the peer may reset it first). */
  private readonly dialing = new Map<number, AbortController>();
  private readonly maxStreams: number;
  private readonly maxDials: number;
  private readonly limits: StreamLimits;
  private readonly buffers?: BufferPool;
  private nextId: number;
  private lastPeerId = 0;
  private peerParity: number;
  private goingAway = false;
  private peerGoingAway = false;
  private emptyWaiters: (() => void)[] = [];
  private resolveClosed!: () => void;
  private readonly keepAlive: KeepAlive;
  private creditSweep?: ReturnType<typeof setInterval>;
  #peerVersion: string;
  /** Set while the agent's answer to HELLO is awaited (see SessionInit.answer). */
  private answer?: {
    check: (frame: Frame) => string;
    timer: ReturnType<typeof setTimeout>;
    resolve: () => void;
    reject: (error: HandshakeError) => void;
  };

  constructor(init: SessionInit) {
    this.#peerVersion = init.peerVersion;
    const expected = init.answer;
    if (expected) {
      this.handshake = new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const ms = expected.timeoutMs;
          this.refuse(new HandshakeError("timeout", `no answer to the handshake within ${ms} ms`));
        }, expected.timeoutMs);
        this.answer = { check: expected.check, timer, resolve, reject };
      });
      // Whoever opens streams may never look: the refusal is also the tunnel's close reason.
      this.handshake.catch(() => {});
    } else {
      this.handshake = Promise.resolve();
    }
    this.reader = init.reader;
    this.decoder = init.decoder;
    this.onOpen = init.options.onOpen;
    this.onStreamEnd = init.options.onStreamEnd;
    this.onSessionEnd = init.options.onSessionEnd;
    this.maxStreams = init.options.maxStreams ?? DEFAULT_MAX_STREAMS;
    this.maxDials = init.options.maxDials ?? DEFAULT_MAX_DIALS;
    this.buffers = init.options.buffers;
    this.writer = init.frameWriter;
    this.writer.onError = (e) => this.shutdown(`transport write failed: ${describeError(e)}`);
    this.listeners = new Listeners(this.writer, init.options.onListen);
    this.limits = {
      receiveWindow: init.receiveWindow,
      maxReceiveWindow: Math.max(
        init.receiveWindow,
        init.options.maxStreamWindow ?? DEFAULT_MAX_STREAM_WINDOW,
      ),
      headStart: init.options.streamHeadStart ?? DEFAULT_STREAM_HEAD_START,
      sendWindow: init.sendWindow,
      udpQueue: init.options.udpQueue ?? DEFAULT_UDP_QUEUE,
      growth: { left: init.options.maxSessionGrowth ?? DEFAULT_SESSION_GROWTH },
      udpStreams: { open: 0 },
      roundTrip: { ms: 0 },
    };
    this.nextId = init.options.firstStreamId ?? (init.role === "client" ? 1 : 2);
    this.peerParity = init.role === "client" ? 0 : 1;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    const keepAliveMs = init.options.keepAliveMs ?? DEFAULT_KEEPALIVE_MS;
    this.keepAlive = new KeepAlive(
      this.writer,
      keepAliveMs,
      () => this.shutdown("peer stopped answering keep-alive pings"),
    );
    const idleCreditMs = init.options.idleCreditMs ?? DEFAULT_IDLE_CREDIT_MS;
    if (idleCreditMs > 0) {
      this.creditSweep = setInterval(() => {
        const now = performance.now();
        for (const stream of this.streams.values()) stream.returnIdleCredit(now, idleCreditMs);
      }, idleCreditMs / 2);
    }
    try {
      for (const frame of init.pending) this.dispatch(frame);
    } catch (e) {
      this.shutdown(`protocol error: ${describeError(e)}`);
    }
    this.readLoop();
    // How fast a stream must take its window to grow it depends on the round trip.
    this.handshake.then(() => this.ping()).then(
      (ms) => this.limits.roundTrip.ms = ms,
      () => {},
    );
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** The peer's version, once its handshake is done ("" before). */
  get peerVersion(): string {
    return this.#peerVersion;
  }

  open(request: OpenRequest, options: OpenOptions = {}): Promise<TunnelStream> {
    if (this.closeReason !== null) {
      return Promise.reject(new Error(`tunnel closed: ${this.closeReason}`));
    }
    if (this.goingAway || this.peerGoingAway) {
      return Promise.reject(new Error("tunnel is going away; open the stream on another tunnel"));
    }
    const id = this.takeId();
    if (id === undefined) {
      return Promise.reject(new Error("tunnel is going away; open the stream on another tunnel"));
    }
    const stream = this.newStream(id, request);
    return new Promise((resolve, reject) => {
      this.opening.set(id, { stream, resolve, reject });
      try {
        this.writer.send({ type: FrameType.OPEN, streamId: id, request });
      } catch (e) {
        // an unencodable request (hostname too long, bad port) fails this open only
        this.opening.delete(id);
        this.streams.delete(id);
        reject(new OpenError("error", e instanceof Error ? e.message : String(e)));
        return;
      }
      stream.grantHeadStart();
      if (options.early) resolve(stream);
    });
  }

  listen(request: OpenRequest, how: ListenOptions = { mode: "listen" }): Promise<IncomingMode> {
    if (this.closeReason !== null) {
      return Promise.reject(new Error(`tunnel closed: ${this.closeReason}`));
    }
    const id = this.takeId();
    if (id === undefined) {
      return Promise.reject(new Error("tunnel is going away; listen on another tunnel"));
    }
    return this.listeners.ask(id, request, how);
  }

  endSession(reason: string): Promise<void> {
    if (this.closeReason !== null) return Promise.resolve();
    this.writer.send({ type: FrameType.SHUTDOWN, streamId: 0, reason });
    return this.writer.drained();
  }

  /** Whether new streams may be opened on this tunnel (not closing, nobody going away). */
  get accepting(): boolean {
    return this.closeReason === null && !this.goingAway && !this.peerGoingAway;
  }

  /**
   * The next stream id, or undefined once they are used up: the tunnel then goes away
   * (GO_AWAY, its streams finish, then it closes) instead of wrapping.
   */
  private takeId(): number | undefined {
    const id = this.nextId;
    if (id > MAX_STREAM_ID) {
      void this.goAway();
      return undefined;
    }
    this.nextId += 2;
    return id;
  }

  ping(): Promise<number> {
    if (this.closeReason !== null) {
      return Promise.reject(new Error(`tunnel closed: ${this.closeReason}`));
    }
    return this.keepAlive.ping();
  }

  async goAway(): Promise<void> {
    if (this.closeReason !== null) return;
    if (!this.goingAway) {
      this.goingAway = true;
      this.writer.send({ type: FrameType.GO_AWAY, streamId: 0, reason: "going away" });
    }
    while (this.streams.size > 0 && this.closeReason === null) {
      await new Promise<void>((resolve) => this.emptyWaiters.push(resolve));
    }
    this.shutdown("went away", true);
    await this.closed;
  }

  close(reason = "closed"): void {
    this.shutdown(reason);
  }

  // ----- inbound ----------------------------------------------------------------------

  private async readLoop(): Promise<void> {
    let reason = "tunnel closed by peer";
    try {
      while (this.closeReason === null) {
        const value = await this.reader.read();
        if (value === null) {
          if (!this.decoder.idle) reason = "tunnel closed by peer in the middle of a frame";
          break;
        }
        this.keepAlive.heard();
        const frames = this.decoder.push(value);
        this.buffers?.share(value, () => payloadViews(value, frames));
        for (const frame of frames) this.dispatch(frame);
      }
    } catch (e) {
      reason = e instanceof FrameError
        ? `protocol error: ${e.message}`
        : `tunnel read failed: ${describeError(e)}`;
    }
    this.shutdown(reason);
  }

  private dispatch(frame: Frame): void {
    if (this.closeReason !== null) return;
    if (this.answer) return this.takeAnswer(frame);
    switch (frame.type) {
      case FrameType.DATA: {
        const stream = this.streams.get(frame.streamId);
        if (stream && !stream.onData(frame.payload, frame.more)) {
          stream.reset("flow control violated");
        }
        return;
      }
      case FrameType.WINDOW:
        this.streams.get(frame.streamId)?.onWindow(frame.increment);
        return;
      case FrameType.WINDOW_RETURN:
        this.streams.get(frame.streamId)?.onWindowReturn(frame.decrement);
        return;
      case FrameType.FIN:
        this.streams.get(frame.streamId)?.onFin();
        return;
      case FrameType.RESET: {
        const reason = frame.reason || "reset";
        const pending = this.opening.get(frame.streamId);
        if (pending) {
          this.opening.delete(frame.streamId);
          pending.reject(new OpenError("error", `open reset by peer: ${reason}`));
        }
        this.dialing.get(frame.streamId)?.abort(new Error(`reset by peer: ${reason}`));
        this.streams.get(frame.streamId)?.teardown(
          new StreamResetError(`stream reset by peer: ${reason}`),
        );
        return;
      }
      case FrameType.OPEN:
        return this.acceptOpen(frame.streamId, frame.request);
      case FrameType.OPEN_RESULT:
        return this.openResult(frame.streamId, frame.result, frame.message);
      case FrameType.PING:
        this.writer.send({ type: FrameType.PONG, streamId: 0, nonce: frame.nonce });
        return;
      case FrameType.PONG:
        return this.keepAlive.pong(frame.nonce);
      case FrameType.GO_AWAY:
        this.peerGoingAway = true;
        return;
      case FrameType.LISTEN:
        this.checkPeerId(frame.streamId);
        return this.listeners.requested(
          frame.streamId,
          frame.request,
          { mode: frame.mode, ...(frame.filter ? { filter: frame.filter } : {}) },
          this,
        );
      case FrameType.LISTEN_RESULT:
        return this.listeners.answered(frame.streamId, frame.result, frame.mode, frame.message);
      case FrameType.SHUTDOWN:
        this.onSessionEnd?.(frame.reason);
        return;
      default:
        throw new FrameError(`unexpected ${frame.type} frame after the handshake`);
    }
  }

  /** The agent's first frame after READY: its answer to HELLO. */
  private takeAnswer(frame: Frame): void {
    const answer = this.answer!;
    let version: string;
    try {
      version = answer.check(frame);
    } catch (e) {
      const error = e instanceof HandshakeError ? e : new HandshakeError("protocol", String(e));
      return this.refuse(error);
    }
    clearTimeout(answer.timer);
    this.answer = undefined;
    this.#peerVersion = version;
    answer.resolve();
  }

  /** The handshake failed after the session started: the session closes with it. */
  private refuse(error: HandshakeError): void {
    if (this.failHandshake(error)) this.shutdown(error.message);
  }

  /** Rejects the awaited answer, if there is one; says whether there was. */
  private failHandshake(error: HandshakeError): boolean {
    const answer = this.answer;
    if (!answer) return false;
    clearTimeout(answer.timer);
    this.answer = undefined;
    answer.reject(error);
    return true;
  }

  /** A stream or listener id from the peer must be of its parity and above the last. */
  private checkPeerId(id: number): void {
    if (id % 2 !== this.peerParity || id <= this.lastPeerId) {
      throw new FrameError(`peer opened stream ${id}, which it may not`);
    }
    this.lastPeerId = id;
  }

  private acceptOpen(id: number, request: OpenRequest): void {
    this.checkPeerId(id);
    const refuse = (result: OpenFailure, message: string) =>
      this.writer.send({ type: FrameType.OPEN_RESULT, streamId: id, result, message });
    if (!this.onOpen) return refuse("forbidden", "this end accepts no streams");
    if (this.goingAway) return refuse("forbidden", "tunnel is going away");
    if (this.streams.size >= this.maxStreams) {
      return refuse("error", `too many streams on this tunnel (at most ${this.maxStreams})`);
    }
    if (this.dialing.size >= this.maxDials) {
      return refuse("error", `too many opens in progress (at most ${this.maxDials})`);
    }
    const dial = new AbortController();
    this.dialing.set(id, dial);
    const stream = this.newStream(id, request);
    this.onOpen(request, dial.signal).finally(() => this.dialing.delete(id)).then(
      (duplex) => {
        if (!this.streams.has(id)) {
          // reset (or tunnel closed) while dialing: drop the connection we just made
          channelOf(duplex).abort("stream reset while dialing");
          return;
        }
        this.writer.send({ type: FrameType.OPEN_RESULT, streamId: id, result: "ok", message: "" });
        stream.markOpened();
        stream.grantHeadStart();
        const { tracking } = duplex;
        void splice(stream, duplex, tracking?.counts).then((failure) => tracking?.end(failure));
      },
      (error) => {
        const code: OpenFailure = error instanceof OpenError ? error.code : "error";
        const message = error instanceof Error ? error.message : String(error);
        if (this.streams.get(id) !== stream) return;
        this.streams.delete(id);
        refuse(code, message);
        stream.teardown(new StreamResetError(message));
      },
    );
  }

  private openResult(id: number, result: "ok" | OpenFailure, message: string): void {
    const pending = this.opening.get(id);
    if (!pending) return;
    this.opening.delete(id);
    if (result === "ok") {
      pending.stream.markOpened();
      return pending.resolve(pending.stream);
    }
    const error = new OpenError(result, message || `open failed: ${result}`);
    // An early open has resolved already: its stream is what learns of the refusal.
    if (this.streams.get(id) === pending.stream) this.streams.delete(id);
    pending.stream.markRefused(error);
    pending.stream.teardown(new StreamResetError(message));
    pending.reject(error);
  }

  private newStream(id: number, request: OpenRequest): MuxStream {
    const stream = new MuxStream(id, request, {
      writer: this.writer,
      streamDone: (doneId) => this.streamDone(doneId, stream),
      release: (chunk) => this.buffers?.release(chunk),
    }, this.limits);
    this.streams.set(id, stream);
    return stream;
  }

  private streamDone(id: number, stream: MuxStream): void {
    if (this.streams.get(id) === stream) this.streams.delete(id);
    try {
      this.onStreamEnd?.(stream);
    } catch {
      // an observer's failure must not disturb the tunnel
    }
    if (this.streams.size === 0) {
      const waiters = this.emptyWaiters;
      this.emptyWaiters = [];
      for (const w of waiters) w();
    }
  }

  // ----- shutdown -----------------------------------------------------------------------

  private shutdown(reason: string, graceful = false): void {
    if (this.closeReason !== null) return;
    this.failHandshake(
      new HandshakeError("closed", `tunnel closed before the handshake: ${reason}`),
    );
    this.closeReason = reason;
    clearInterval(this.creditSweep);
    const error = new StreamResetError(`tunnel closed: ${reason}`);
    this.keepAlive.stop(error);
    for (const pending of this.opening.values()) pending.reject(error);
    this.opening.clear();
    for (const stream of [...this.streams.values()]) stream.teardown(error);
    this.streams.clear();
    for (const dial of this.dialing.values()) dial.abort(error);
    this.dialing.clear();
    this.listeners.close(error);
    for (const w of this.emptyWaiters) w();
    this.emptyWaiters = [];
    this.reader.abort(reason);
    this.writer.close(!graceful).finally(() => this.resolveClosed());
  }
}

/**
 * The DATA payloads of `frames` that are views of `chunk`: the only parts of a read that
 * decoding leaves as views, so the read's buffer is free once they are (BufferPool.share).
 * Pieces of a DATA frame cut across reads are views of their own read, like whole ones.
 */
function payloadViews(chunk: Uint8Array, frames: Frame[]): Uint8Array[] {
  return frames.flatMap((frame) =>
    frame.type === FrameType.DATA && frame.payload.buffer === chunk.buffer ? [frame.payload] : []
  );
}
