/** Joins a local TCP connection to a tunnel stream, both ways. */
import { channelOf, pump, type ResettableDuplex } from "../tunnel/pump.ts";
import type { ByteChannel } from "../tunnel/types.ts";
// The tunnel's own socket adapter: reads to EOF without closing, closes by closeWrite (FIN).
import { closeQuietly, ConnChannel } from "../tunnel/duplex.ts";

export { closeQuietly };

/** What a connection is spliced with: a tunnel stream, or any duplex that can be reset. */
export type Peer = ByteChannel | ResettableDuplex;

/**
 * Copies `conn` and `peer` into each other until both directions end, then closes `conn`.
 *
 * Half-close survives: EOF on the socket half-closes `peer` (a FIN through the tunnel) while
 * the other direction keeps flowing, and the end of `peer`'s data half-closes the socket. An
 * error on either side resets the other (the tunnel stream is reset, the socket closed) and
 * the promise still resolves: a failed connection is not the caller's failure.
 */
export async function spliceConn(conn: Deno.Conn, peer: Peer): Promise<void> {
  await pump(new ConnChannel(conn), channelOf(peer));
  closeQuietly(conn);
}
