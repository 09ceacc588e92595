/**
 * The tunnel protocol, as the client (lib/) and the agent (agent/) use it.
 */
export * from "./types.ts";
export {
  acceptTunnel,
  connectTunnel,
  HandshakeError,
  type HandshakeFailure,
  type HandshakeOptions,
} from "./handshake.ts";
export { DEFAULT_KEEPALIVE_MS, DEFAULT_STREAM_WINDOW, Session, splice } from "./session.ts";
export { MuxStream, StreamResetError } from "./stream.ts";
export { connDuplex, duplexPair } from "./duplex.ts";
export { FrameError, MAX_PAYLOAD, PROTOCOL_VERSION } from "./frame.ts";
