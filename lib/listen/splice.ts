/** Joins a local TCP connection to a tunnel stream, both ways. */
import type { Duplex } from "../tunnel/types.ts";
// The tunnel's own socket adapter: reads to EOF without closing, closes by closeWrite (FIN).
import { closeQuietly, connDuplex } from "../tunnel/duplex.ts";

export { closeQuietly };

/** A duplex that can also be reset, like a TunnelStream. */
export type Peer = Duplex & { reset?(reason?: string): void };

/**
 * Pipes `conn` and `peer` into each other until both directions end, then closes `conn`.
 *
 * Half-close survives: EOF on the socket closes `peer.writable` (a FIN through the tunnel)
 * while the other direction keeps flowing, and the end of `peer.readable` half-closes the
 * socket. An error on either side resets the other (the tunnel stream is reset, the socket
 * closed) and the promise still resolves: a failed connection is not the caller's failure.
 */
export async function spliceConn(conn: Deno.Conn, peer: Peer): Promise<void> {
  const abort = new AbortController();
  const fail = (reason: unknown) => {
    if (abort.signal.aborted) return;
    abort.abort(reason);
    peer.reset?.(reason instanceof Error ? reason.message : String(reason));
    closeQuietly(conn);
  };
  const signal = abort.signal;
  const socket = connDuplex(conn);
  const upstream = socket.readable.pipeTo(peer.writable, { signal }).catch(fail);
  const downstream = peer.readable.pipeTo(socket.writable, { signal }).catch(fail);
  await Promise.all([upstream, downstream]);
  closeQuietly(conn);
}
