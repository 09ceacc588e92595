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
import type { OpenFailure, OpenRequest } from "./types.ts";
import {
  type HttpFilter,
  type IncomingMode,
  type IncomingRequest,
  PROTOCOL_VERSION,
} from "../contract.ts";

export { PROTOCOL_VERSION };

/** Bytes in a frame header. */
export const HEADER_SIZE = 10;

/** Largest payload of any frame: room for a 65,507-byte UDP datagram and then some. */
export const MAX_PAYLOAD = 65536;

/** The first four payload bytes of HELLO and READY: "RLAY". */
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
  SHUTDOWN: 16,
  READY: 17,
} as const;

/** Why a handshake was refused. */
export type HelloErrorCode = "token" | "version" | "other";

/**
 * Agent → client: the agent's first frame, sent the moment the port-forward reaches it, so the
 * client may send its first streams right behind HELLO instead of a round trip later. It says
 * nothing of the agent (no version) to a peer that has not shown the token yet.
 */
export interface ReadyFrame {
  type: typeof FrameType.READY;
  streamId: number;
  /** The per-stream receive window the agent grants, in bytes. */
  window: number;
}

/** Client → agent: the client's first frame (stream id 0), sent without waiting for READY. */
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

/** Agent → client: handshake accepted; before any other frame of the agent but READY. */
export interface HelloOkFrame {
  type: typeof FrameType.HELLO_OK;
  streamId: number;
  protocolVersion: number;
  version: string;
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

/**
 * GO_AWAY: the sender opens no new streams and accepts none; open ones may finish.
 * SHUTDOWN (client → agent): the session is over; the agent closes its listeners and tunnels
 * and exits, as an agent inside someone else's pod must when relay stops.
 */
export interface GoAwayFrame {
  type: typeof FrameType.GO_AWAY | typeof FrameType.SHUTDOWN;
  streamId: number;
  reason: string;
}

/**
 * Client → agent (reverse forwards): listen on `request.port` in the pod; `streamId` (from
 * the client's odd ids) names the listener. Each connection it accepts comes back as an OPEN
 * from the agent whose request is the caller's address and the listened port.
 */
export interface ListenFrame {
  type: typeof FrameType.LISTEN;
  streamId: number;
  request: OpenRequest;
  /** How to take the port (a u8 before the address). */
  mode: IncomingRequest;
  /**
   * Steal only the matching HTTP requests (two u16-length strings after the mode, header
   * then path, empty for none).
   */
  filter?: HttpFilter;
}

/** Agent → client: the answer to LISTEN. */
export interface ListenResultFrame {
  type: typeof FrameType.LISTEN_RESULT;
  streamId: number;
  result: "ok" | OpenFailure;
  /** The mode in effect (a u8 after the result; `listen` when the LISTEN failed). */
  mode: IncomingMode;
  message: string;
}

/** Any frame. */
export type Frame =
  | ReadyFrame
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
