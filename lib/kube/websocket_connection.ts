/**
 * An open WebSocket client connection (RFC 6455), after the upgrade (websocket_client.ts):
 * messages both ways, pings, the closing handshake. Client side only, no extensions. Reading
 * is pulled by the caller, so what it does not read waits in TCP's window; pings are answered
 * and the server's Close is seen while it reads.
 */
import {
  CloseCode,
  closePayload,
  type EncodedFrame,
  FrameEncoder,
  FrameParser,
  type FramePiece,
  Opcode,
  parseClosePayload,
  WebSocketProtocolError,
} from "./websocket_frames.ts";

/** A connected byte stream: TCP, TLS over TCP, or node:tls. */
export interface ByteTransport {
  /** The next bytes received, which the caller may keep; null at the end of the stream. */
  read(): Promise<Uint8Array | null>;
  /** Resolves once `bytes` is handed on, after which the caller may reuse its buffer. */
  write(bytes: Uint8Array): Promise<void>;
  /** Closes at once; a pending read then rejects or ends. */
  close(): void;
}

/** Limits and timers of a connection. */
export interface ConnectionOptions {
  /** Largest message readMessage() assembles; a larger one closes with 1009. Default 64 MiB. */
  maxMessageBytes?: number;
  /** Sends wait while more than this many bytes are unsent. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** How long a Close sent waits for the server's before the transport is closed. Default 5 s. */
  closeTimeoutMs?: number;
}

/** Part of a data message, as it arrived. */
export interface MessagePiece {
  binary: boolean;
  /** A view into the bytes read; the caller may keep it. */
  bytes: Uint8Array;
  /** This piece starts its message. */
  first: boolean;
  /** This piece ends its message. */
  last: boolean;
}

/** A whole message. */
export type Message = { binary: true; data: Uint8Array } | { binary: false; data: string };

/** How the connection ended. */
export interface CloseInfo {
  code: number;
  reason: string;
}

/**
 * The connection ended without the server's Close (`code` is CloseCode.ABNORMAL), or failed;
 * the message says how, in a few words.
 */
export class WebSocketClosedError extends Error {
  constructor(message: string, readonly code: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "WebSocketClosedError";
  }
}

/** An open WebSocket. One caller reads at a time; sends may come from anywhere. */
export class WebSocketConnection {
  /** Told of every Pong received (answers to ping()). */
  onPong: (payload: Uint8Array) => void = () => {};

  readonly #transport: ByteTransport;
  readonly #parser = new FrameParser();
  readonly #encoder = new FrameEncoder();
  readonly #maxMessage: number;
  readonly #maxBuffered: number;
  readonly #closeTimeoutMs: number;
  /** Pieces parsed and not yet handed out, from #pieces[#next] on. */
  #pieces: FramePiece[] = [];
  #next = 0;
  /** The opcode of the data message being received, -1 between messages. */
  #messageOpcode = -1;
  #closeSent = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set once the read side is done: how it ended (info or error). */
  #ended: { info: CloseInfo } | { error: Error } | null = null;
  #closed = false;
  readonly #queue: EncodedFrame[] = [];
  #unsent = 0;
  #flushing = false;
  #writeError: Error | null = null;
  #roomWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  constructor(
    transport: ByteTransport,
    readonly protocol: string,
    leftover: Uint8Array,
    options: ConnectionOptions = {},
  ) {
    this.#transport = transport;
    this.#maxMessage = options.maxMessageBytes ?? 64 * 1024 * 1024;
    this.#maxBuffered = options.maxBufferedBytes ?? 1024 * 1024;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 5000;
    if (leftover.length > 0) this.#accept(leftover);
  }

  /** True until a Close was sent or received, or the connection failed. */
  get open(): boolean {
    return !this.#closeSent && this.#ended === null && this.#writeError === null;
  }

  /** How the server closed the connection, once it has. */
  get closeInfo(): CloseInfo | undefined {
    return this.#ended && "info" in this.#ended ? this.#ended.info : undefined;
  }

  /**
   * The next piece of a data message; null once the server's Close has arrived (closeInfo says
   * with what) or after abort(). Rejects with WebSocketProtocolError when the server broke the
   * protocol, WebSocketClosedError when the connection ended without a Close.
   */
  async readPiece(): Promise<MessagePiece | null> {
    for (;;) {
      if (this.#ended) {
        if ("error" in this.#ended) throw this.#ended.error;
        return null;
      }
      const piece = this.#pieces[this.#next];
      if (piece === undefined) {
        await this.#fill();
        continue;
      }
      this.#next++;
      const message = this.#onPiece(piece);
      if (message) return message;
    }
  }

  /**
   * The next whole message; null once the server's Close has arrived. A message over
   * maxMessageBytes, or text that is not UTF-8, fails the connection.
   */
  async readMessage(): Promise<Message | null> {
    const parts: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const piece = await this.readPiece();
      if (piece === null) return null;
      size += piece.bytes.length;
      if (size > this.#maxMessage) {
        throw this.#fail(
          new WebSocketProtocolError(
            `a message over ${this.#maxMessage} bytes`,
            CloseCode.TOO_BIG,
          ),
        );
      }
      parts.push(piece.bytes);
      if (!piece.last) continue;
      const data = parts.length === 1 ? parts[0] : concat(parts, size);
      if (piece.binary) return { binary: true, data };
      try {
        return { binary: false, data: new TextDecoder("utf-8", { fatal: true }).decode(data) };
      } catch {
        throw this.#fail(
          new WebSocketProtocolError("a text message that is not UTF-8", CloseCode.INVALID_DATA),
        );
      }
    }
  }

  /**
   * Sends one message: text for a string, else binary with `data`'s parts back to back. The
   * bytes are copied before this returns; it resolves once at most maxBufferedBytes are unsent.
   */
  send(data: string | Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (typeof data === "string") return this.#send(Opcode.TEXT, [new TextEncoder().encode(data)]);
    return this.#send(Opcode.BINARY, data instanceof Uint8Array ? [data] : data);
  }

  /** Sends one message as several frames (continuations), each of `parts` a frame. */
  async sendFragmented(binary: boolean, parts: readonly Uint8Array[]): Promise<void> {
    const sent = parts.map((part, i) =>
      this.#send(
        i === 0 ? (binary ? Opcode.BINARY : Opcode.TEXT) : Opcode.CONTINUATION,
        [part],
        i === parts.length - 1,
      )
    );
    await Promise.all(sent);
  }

  /** Sends a Ping (payload at most 125 bytes); its Pong comes to onPong. */
  ping(payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (payload.length > 125) throw new RangeError("a ping payload is at most 125 bytes");
    return this.#send(Opcode.PING, [payload]);
  }

  /**
   * Starts the closing handshake: sends Close; reading goes on until the server's Close, and
   * the transport is closed then, or after closeTimeoutMs (a server that reads nothing more
   * would hold it for good).
   */
  close(code: number = CloseCode.NORMAL, reason = ""): void {
    if (this.#closeSent || this.#closed) return;
    this.#closeSent = true;
    this.#enqueue(this.#encoder.encode(Opcode.CLOSE, [closePayload(code, reason)]));
    const timer = setTimeout(() => this.abort(), this.#closeTimeoutMs);
    Deno.unrefTimer(timer);
    this.#closeTimer = timer;
    if (this.#ended) this.#closeWhenFlushed();
  }

  /** Closes the transport at once: reads end (null), sends fail. */
  abort(): void {
    this.#ended ??= { info: { code: CloseCode.ABNORMAL, reason: "aborted" } };
    this.#closeTransport();
  }

  async #fill(): Promise<void> {
    let chunk: Uint8Array | null;
    try {
      chunk = await this.#transport.read();
    } catch (error) {
      if (!this.#ended) {
        this.#ended = {
          error: new WebSocketClosedError(
            error instanceof Error ? error.message : String(error),
            CloseCode.ABNORMAL,
            { cause: error },
          ),
        };
      }
      this.#closeTransport();
      return;
    }
    if (chunk === null) {
      this.#ended ??= {
        error: new WebSocketClosedError(
          "the connection ended without a Close frame",
          CloseCode.ABNORMAL,
        ),
      };
      this.#closeTransport();
      return;
    }
    this.#accept(chunk);
  }

  #accept(chunk: Uint8Array): void {
    try {
      // Called only once every piece before was handed out.
      this.#pieces = this.#parser.push(chunk);
      this.#next = 0;
    } catch (error) {
      this.#fail(error as WebSocketProtocolError);
    }
  }

  /** Handles one frame piece: control frames here, data pieces returned to the reader. */
  #onPiece(piece: FramePiece): MessagePiece | null {
    const { opcode, payload } = piece;
    if (opcode === Opcode.PING) {
      if (!this.#closeSent) this.#enqueue(this.#encoder.encode(Opcode.PONG, [payload]));
      return null;
    }
    if (opcode === Opcode.PONG) {
      this.onPong(payload);
      return null;
    }
    if (opcode === Opcode.CLOSE) {
      let info: CloseInfo;
      try {
        info = parseClosePayload(payload);
      } catch (error) {
        this.#fail(error as WebSocketProtocolError);
        return null;
      }
      this.#ended = { info };
      // Echo the code, as RFC 6455 §5.5.1 asks; the transport closes once that is written.
      if (!this.#closeSent) this.close(info.code);
      else this.#closeWhenFlushed();
      return null;
    }
    if (piece.first) {
      if (opcode === Opcode.CONTINUATION) {
        if (this.#messageOpcode < 0) {
          this.#fail(new WebSocketProtocolError("a continuation frame outside a message"));
          return null;
        }
      } else {
        if (this.#messageOpcode >= 0) {
          this.#fail(new WebSocketProtocolError("a new message before the last one ended"));
          return null;
        }
        this.#messageOpcode = opcode;
      }
    }
    const binary = this.#messageOpcode === Opcode.BINARY;
    const first = piece.first && opcode !== Opcode.CONTINUATION;
    const last = piece.last && piece.fin;
    if (last) this.#messageOpcode = -1;
    return { binary, bytes: payload, first, last };
  }

  /** Fails the connection: a Close with the error's code, then the transport closes. */
  #fail(error: WebSocketProtocolError): WebSocketProtocolError {
    if (this.#ended) return error;
    this.#ended = { error };
    if (!this.#closeSent) this.close(error.closeCode, error.message);
    else this.#closeWhenFlushed();
    return error;
  }

  #send(opcode: number, parts: readonly Uint8Array[], fin = true): Promise<void> {
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closeSent || this.#closed) {
      return Promise.reject(
        new WebSocketClosedError("the WebSocket is closing or closed", CloseCode.ABNORMAL),
      );
    }
    this.#enqueue(this.#encoder.encode(opcode, parts, fin));
    if (this.#unsent <= this.#maxBuffered) return Promise.resolve();
    return new Promise((resolve, reject) => this.#roomWaiters.push({ resolve, reject }));
  }

  #enqueue(frame: EncodedFrame): void {
    this.#queue.push(frame);
    this.#unsent += frame.bytes.length;
    if (!this.#flushing) void this.#flush();
  }

  /** Writes queued frames in order, one at a time: a frame is never interleaved. */
  async #flush(): Promise<void> {
    this.#flushing = true;
    try {
      for (let frame = this.#queue.shift(); frame; frame = this.#queue.shift()) {
        await this.#transport.write(frame.bytes);
        this.#unsent -= frame.bytes.length;
        this.#encoder.release(frame);
        if (this.#unsent <= this.#maxBuffered) this.#wakeWaiters(null);
      }
    } catch (error) {
      this.#writeError = new WebSocketClosedError(
        `cannot write to the WebSocket: ${error instanceof Error ? error.message : error}`,
        CloseCode.ABNORMAL,
        { cause: error },
      );
      this.#queue.length = 0;
      this.#wakeWaiters(this.#writeError);
      this.#closeTransport();
    } finally {
      this.#flushing = false;
    }
    if (this.#closeSent && this.#ended) this.#closeTransport();
  }

  /** After the Close handshake: the transport closes once the queue is written. */
  #closeWhenFlushed(): void {
    if (!this.#flushing) this.#closeTransport();
  }

  #closeTransport(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#closeTimer);
    this.#transport.close();
    this.#wakeWaiters(new WebSocketClosedError("the WebSocket closed", CloseCode.ABNORMAL));
  }

  /** Lets waiting sends go on, or fails them with `error`. */
  #wakeWaiters(error: Error | null): void {
    if (this.#roomWaiters.length === 0) return;
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiters) error ? waiter.reject(error) : waiter.resolve();
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
