/**
 * The tunnel protocol, as the client (lib/) and the agent (agent/) use it: the wire format
 * and the multiplexer. Sockets and splicing live in lib/net/.
 */
export * from "./types.ts";
export {
  type AcceptOptions,
  acceptTunnel,
  type ConnectOptions,
  connectTunnel,
  HandshakeError,
  type HandshakeFailure,
  type HandshakeOptions,
  openTunnel,
} from "./handshake.ts";
export { DEFAULT_KEEPALIVE_MS, DEFAULT_STREAM_WINDOW } from "./defaults.ts";
export { Session } from "./session.ts";
export { MuxStream, StreamResetError } from "./stream.ts";
export { FrameError, MAX_PAYLOAD, PROTOCOL_VERSION } from "./frame.ts";
