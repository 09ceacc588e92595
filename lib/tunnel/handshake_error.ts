/** How a tunnel's handshake can fail; shared by the handshake and the session that finishes it. */
import type { HelloErrorCode } from "./frame.ts";

/** Why a tunnel could not be set up. */
export type HandshakeFailure = HelloErrorCode | "protocol" | "closed" | "timeout";

/** A tunnel whose handshake failed: wrong token, other protocol version, not a relay peer. */
export class HandshakeError extends Error {
  constructor(
    readonly code: HandshakeFailure,
    message: string,
    /** The peer's relay version, when it told us. */
    readonly peerVersion?: string,
  ) {
    super(message);
    this.name = "HandshakeError";
  }

  /** The agent itself said no (token, version): another try gets the same answer. */
  get answered(): boolean {
    return this.code === "token" || this.code === "version" || this.code === "other";
  }
}
