/**
 * The public shape of a relay tunnel, shared by the client (lib/) and the agent (agent/).
 * The wire encoding lives beside this file and nowhere else.
 *
 * A tunnel is one byte stream between client and agent (in practice: one port-forward
 * WebSocket on the client side, one accepted localhost TCP connection on the agent side).
 * On it, either end opens **streams**: one per TCP connection or UDP session. Stream ids
 * opened by the client are odd, those opened by the agent (reverse forwards) are even.
 */
import type { HttpFilter, IncomingMode, IncomingRequest } from "../contract.ts";
import type { BufferPool } from "../net/buffer_pool.ts";
import type { ByteChannel, Duplex, Protocol } from "../net/types.ts";

export type { ByteChannel, Duplex, Protocol };

/** What a stream should connect to, as the agent will dial it. */
export interface OpenRequest {
  protocol: Protocol;
  /** An IPv4 or IPv6 literal, or a hostname resolved by the agent's resolver. */
  host: string;
  port: number;
}

/** Why an open failed; carried on the wire as one byte each. */
export type OpenFailure =
  | "no-such-host"
  | "refused"
  | "timeout"
  | "unreachable"
  | "forbidden"
  | "error"
  | "in-use"
  | "denied";

/** An open that the far end could not complete, with its reason. */
export class OpenError extends Error {
  constructor(readonly code: OpenFailure, message: string) {
    super(message);
    this.name = "OpenError";
  }
}

/**
 * One connection or UDP session on a tunnel.
 *
 * TCP: bytes in order; closing `writable` sends a half-close (FIN) and the peer's
 * `readable` ends, while the other direction keeps flowing.
 * UDP: each chunk written is one datagram and each chunk read is one datagram, never split
 * or merged; when the peer has no room, datagrams are dropped (and counted), never queued
 * without bound.
 */
export interface TunnelStream extends Duplex, ByteChannel {
  readonly id: number;
  readonly request: OpenRequest;
  /** Abandon both directions at once and tell the peer (a TCP reset). */
  reset(reason?: string): void;
  /** Settles when both directions have finished or the stream was reset. */
  readonly closed: Promise<void>;
  /** UDP datagrams dropped because a queue was full (always 0 for TCP). */
  readonly dropped: number;
  /**
   * Settles with the far end's answer to the open: resolves once it has connected, rejects
   * with its OpenError (or the reset that came first). What an `early` open reports by.
   */
  readonly opened: Promise<void>;
}

/** How to open a stream. */
export interface OpenOptions {
  /**
   * Resolve as soon as OPEN is sent, without waiting a round trip for the answer: bytes may
   * follow at once, within the far end's initial window, and wait there until it has
   * connected; a refusal then resets the stream and rejects `opened`.
   */
  early?: boolean;
}

/**
 * Decides what an incoming open becomes: the duplex to splice it with, or an OpenError.
 * `signal` aborts when the peer resets the stream (or the tunnel closes) before the answer.
 */
export type OpenHandler = (request: OpenRequest, signal?: AbortSignal) => Promise<Duplex>;

/** A listener an end keeps for its peer's LISTEN, closed with the tunnel. */
export interface KeptListener {
  /** How it took the port. */
  readonly mode: IncomingMode;
  close(): void;
}

/**
 * Decides what a LISTEN becomes: a listener whose connections the handler opens as streams on
 * `tunnel`, or an OpenError (`in-use` when something already listens there).
 */
export type ListenHandler = (
  request: OpenRequest,
  how: ListenOptions,
  tunnel: Tunnel,
) => Promise<KeptListener>;

/** How a LISTEN asks for its port to be taken. */
export interface ListenOptions {
  mode: IncomingRequest;
  /** With steal: only matching HTTP requests come to the asker. */
  filter?: HttpFilter;
}

/** Options common to both ends of a tunnel. */
export interface TunnelOptions {
  /** Handles opens from the peer: on the agent, outbound dials; on the client, reverse forwards. */
  onOpen?: OpenHandler;
  /** Handles the peer's LISTEN (the agent's reverse forwards); without it LISTEN is refused. */
  onListen?: ListenHandler;
  /** Told when the peer says the session is over (SHUTDOWN; the agent exits). */
  onSessionEnd?: (reason: string) => void;
  /** Bytes a stream may have in flight before its reader must catch up. */
  streamWindow?: number;
  /** Streams the peer may have open at once (default 4096); further opens are refused. */
  maxStreams?: number;
  /** Opens the peer may have in progress at once (default 1024); further ones are refused. */
  maxDials?: number;
  /** Most a stream's window grows to while its reader keeps up (default 32 MiB). */
  maxStreamWindow?: number;
  /** Most all streams' windows grow beyond their initial size, together (default 32 MiB). */
  maxSessionGrowth?: number;
  /**
   * Growth a new stream is granted at once, at most a quarter of the session's budget left
   * (default 4 MiB; 0: none).
   */
  streamHeadStart?: number;
  /** Send a ping after this much silence (ms); 0 turns keep-alive off. */
  keepAliveMs?: number;
  /**
   * A stream that has sent nothing for this long gives back the credit it holds beyond the
   * initial window, so its peer's window shrinks and the growth returns to the session's
   * budget (default 5 s; 0: never).
   */
  idleCreditMs?: number;
  /** Told once per stream, in either direction, when it has ended (e.g. to report UDP drops). */
  onStreamEnd?: (stream: TunnelStream) => void;
  /**
   * The pool the transport's reads are lent from, if any: DATA payloads are views of those
   * reads, released to it once written out (see lib/net/buffer_pool.ts).
   */
  buffers?: BufferPool;
}

/** A live tunnel, as either end sees it. */
export interface Tunnel {
  /** The version string the other end sent in its handshake ("" until it is done). */
  readonly peerVersion: string;
  /**
   * Settles once the agent accepted the handshake, or rejects with a HandshakeError when it
   * refused it or the tunnel closed first. A client's tunnel is usable before: its streams go
   * out behind HELLO, and fail with the tunnel if the agent refuses it.
   */
  readonly handshake: Promise<void>;
  /** Open a stream to `request`; rejects with OpenError when the far end cannot dial it. */
  open(request: OpenRequest, options?: OpenOptions): Promise<TunnelStream>;
  /**
   * Asks the peer to listen on `request.port` for as long as this tunnel lives; each
   * connection it accepts arrives as an open from the peer (TunnelOptions.onOpen). Rejects
   * with OpenError when the peer cannot listen there; resolves with the mode in effect.
   */
  listen(request: OpenRequest, how?: ListenOptions): Promise<IncomingMode>;
  /**
   * Tells the peer the session is over (SHUTDOWN): an agent exits. Resolves once the frame
   * has been handed to the transport.
   */
  endSession(reason: string): Promise<void>;
  /** Round-trip time of one ping, in milliseconds. */
  ping(): Promise<number>;
  /** Streams currently open in either direction. */
  readonly streamCount: number;
  /** Stop accepting new streams, let the open ones finish, then close. */
  goAway(): Promise<void>;
  /** Close now: every open stream is reset. */
  close(reason?: string): void;
  /** Settles when the tunnel is closed, for whatever reason. */
  readonly closed: Promise<void>;
  /** Why the tunnel closed, as soon as it is closing (null while it is open). */
  readonly closeReason: string | null;
  /** Whether new streams may be opened on it: open, and neither end going away. */
  readonly accepting: boolean;
}
