/**
 * A local UDP listener. Each distinct source address is a session: a duplex whose chunks
 * are whole datagrams, so it splices with a UDP tunnel stream as is.
 */
import { MAX_DATAGRAM } from "../contract.ts";
import { readableOf, writableOf } from "../net/channel.ts";
import { closeQuietly } from "../net/socket.ts";
import type { ByteChannel, Duplex } from "../net/types.ts";
import { kernelDrops } from "../net/udp_drops.ts";
import { bindError } from "./bind_error.ts";
import type { BindAddress } from "./tcp.ts";

/** While new sources keep being turned away for lack of sessions, one report this often. */
const SESSION_LIMIT_REPORT_MS = 10_000;

/** Told through `serve`'s onError: datagrams from new sources are dropped, no session is free. */
export class SessionLimitError extends Error {
  override name = "SessionLimitError";
}

/** Tuning for a UDP listener's sessions. */
export interface UdpListenerOptions {
  /** A session with no datagram either way for this long ends (ms). */
  idleTimeoutMs: number;
  /** Datagrams a session holds for a slow reader before dropping new ones. Default 64. */
  queueLength?: number;
  /** Sessions at once; datagrams from further sources are dropped. Default 1024. */
  maxSessions?: number;
}

/** One local source address talking to the listener. */
export interface UdpSession extends Duplex {
  /** The local client's address; replies written to `writable` go there. */
  readonly remote: Deno.NetAddr;
  /** Datagrams from this source dropped because the queue was full. */
  readonly dropped: number;
  /** Settles when the session has ended (idle, closed, or the listener closed). */
  readonly closed: Promise<void>;
  /** End the session now; its readable closes and later writes are dropped. */
  close(): void;
}

/** Receives each new session; the session ends on its own when idle. */
export type SessionHandler = (session: UdpSession) => void | Promise<void>;

/** One bound UDP socket whose datagrams are sorted into sessions by source address. */
export class UdpListener {
  readonly #socket: Deno.DatagramConn;
  readonly #options: Required<UdpListenerOptions>;
  readonly #sessions = new Map<string, Session>();
  #closed = false;
  #dropped = 0;
  /** Datagrams from new sources refused for lack of a session, and when that was last told. */
  #refused = 0;
  #lastRefusalReport = -Infinity;
  #kernelDroppedAtClose = 0;

  private constructor(socket: Deno.DatagramConn, options: UdpListenerOptions) {
    this.#socket = socket;
    this.#options = { queueLength: 64, maxSessions: 1024, ...options };
  }

  /** Binds now; a busy or missing address throws a UsageError naming it. */
  static bind(address: BindAddress, options: UdpListenerOptions): UdpListener {
    try {
      const socket = Deno.listenDatagram({
        hostname: address.hostname,
        port: address.port,
        transport: "udp",
      });
      return new UdpListener(socket, options);
    } catch (error) {
      throw bindError(error, address.hostname, address.port, "udp");
    }
  }

  /** The address bound. */
  get hostname(): string {
    return (this.#socket.addr as Deno.NetAddr).hostname;
  }

  /** The port bound (the chosen one when 0 was asked for). */
  get port(): number {
    return (this.#socket.addr as Deno.NetAddr).port;
  }

  /** Datagrams dropped by this listener and its sessions, ended ones included. */
  get dropped(): number {
    let total = this.#dropped;
    for (const session of this.#sessions.values()) total += session.dropped;
    return total;
  }

  /**
   * Datagrams the kernel dropped before relay read them (the socket's receive buffer was
   * full: relay fell behind); 0 where the system does not say (only Linux does).
   */
  get kernelDropped(): number {
    if (this.#closed) return this.#kernelDroppedAtClose;
    return kernelDrops(this.port, this.hostname.includes(":"), this.hostname) ?? 0;
  }

  /** Sessions currently live. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Receives until {@link close}, creating a session per new source; resolves then. */
  async serve(onSession: SessionHandler, onError?: (error: unknown) => void): Promise<void> {
    const buffer = new Uint8Array(MAX_DATAGRAM);
    while (!this.#closed) {
      let datagram: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [data, addr] = await this.#socket.receive(buffer);
        datagram = data.slice();
        from = addr as Deno.NetAddr;
      } catch (error) {
        if (this.#closed) return;
        onError?.(error);
        continue;
      }
      const key = `${from.hostname}|${from.port}`;
      let session = this.#sessions.get(key);
      if (!session) {
        if (this.#sessions.size >= this.#options.maxSessions) {
          this.#dropped++;
          this.#refused++;
          const now = performance.now();
          // Never silent (a resolver asking from a new port per query fills the table), but
          // told once per interval, not per datagram.
          if (now - this.#lastRefusalReport >= SESSION_LIMIT_REPORT_MS) {
            this.#lastRefusalReport = now;
            onError?.(
              new SessionLimitError(
                `all ${this.#options.maxSessions} UDP sessions are taken: datagrams from new ` +
                  `sources are dropped until one ends (after --udp-idle-timeout without ` +
                  `traffic); ${this.#refused} dropped so far`,
              ),
            );
          }
          continue;
        }
        session = new Session(this.#socket, from, this.#options, () => {
          this.#sessions.delete(key);
          this.#dropped += session!.dropped;
        });
        this.#sessions.set(key, session);
        const started = session;
        Promise.resolve()
          .then(() => onSession(started))
          .catch((error) => {
            onError?.(error);
            started.close();
          });
      }
      session.deliver(datagram);
    }
  }

  /** Stops receiving, ends every session and closes the socket. */
  close(): void {
    if (this.#closed) return;
    // The kernel's count goes with the socket: keep it for whoever reports after the close.
    this.#kernelDroppedAtClose = this.kernelDropped;
    this.#closed = true;
    for (const session of [...this.#sessions.values()]) session.close();
    closeQuietly(this.#socket);
  }
}

/**
 * A session's state: its queue towards the reader, its idle timer, its reply path. It is read
 * and written as a ByteChannel (a datagram each), with no Web Streams per datagram; its
 * `readable` and `writable` are made only if asked for.
 */
class Session implements UdpSession, ByteChannel {
  readonly remote: Deno.NetAddr;
  readonly closed: Promise<void>;
  #dropped = 0;
  #ended = false;
  #lastActivity = Date.now();
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Datagrams received and not yet read, at most queueLength. */
  #queue: Uint8Array[] = [];
  /** The read() waiting for a datagram, if any. */
  #reader: ((datagram: Uint8Array | null) => void) | null = null;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;
  readonly #socket: Deno.DatagramConn;
  readonly #queueLength: number;
  readonly #resolveClosed: () => void;
  readonly #onEnd: () => void;
  readonly #idleTimeoutMs: number;

  constructor(
    socket: Deno.DatagramConn,
    remote: Deno.NetAddr,
    options: Required<UdpListenerOptions>,
    onEnd: () => void,
  ) {
    this.remote = remote;
    this.#socket = socket;
    this.#queueLength = options.queueLength;
    this.#onEnd = onEnd;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    let resolveClosed!: () => void;
    this.closed = new Promise((resolve) => resolveClosed = resolve);
    this.#resolveClosed = resolveClosed;
    this.#arm(this.#idleTimeoutMs);
  }

  get channel(): ByteChannel {
    return this;
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= readableOf(this, () => this.close());
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableOf(this);
  }

  /** The next datagram from the local client; null once the session has ended and is read. */
  read(): Promise<Uint8Array | null> {
    const datagram = this.#queue.shift();
    if (datagram) return Promise.resolve(datagram);
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve) => this.#reader = resolve);
  }

  /** Sends a reply to the local client. */
  async write(datagram: Uint8Array): Promise<void> {
    if (this.#ended) return;
    this.#touch();
    try {
      await this.#socket.send(datagram, this.remote);
    } catch {
      // A reply that cannot be sent is lost, as UDP would lose it.
      this.#dropped++;
    }
  }

  /** The tunnel side ending means the far end has forgotten this session. */
  closeWrite(): void {
    this.close();
  }

  abort(): void {
    this.close();
  }

  get dropped(): number {
    return this.#dropped;
  }

  /** Hands a datagram to the reader, queues it, or drops it when the queue is full. */
  deliver(datagram: Uint8Array): void {
    if (this.#ended) return;
    this.#touch();
    const reader = this.#reader;
    this.#reader = null;
    if (reader) reader(datagram);
    else if (this.#queue.length < this.#queueLength) this.#queue.push(datagram);
    else this.#dropped++;
  }

  /** Ends the session; what was queued is still read, then null. */
  close(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#timer);
    const reader = this.#reader;
    this.#reader = null;
    reader?.(null);
    this.#onEnd();
    this.#resolveClosed();
  }

  #touch(): void {
    this.#lastActivity = Date.now();
  }

  // One timer per session, re-armed for the remainder rather than reset on every datagram.
  #arm(delay: number): void {
    const timer = setTimeout(() => {
      const idle = Date.now() - this.#lastActivity;
      if (idle >= this.#idleTimeoutMs) this.close();
      else this.#arm(this.#idleTimeoutMs - idle);
    }, delay);
    // An idle session alone must not keep the process alive.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }
}
