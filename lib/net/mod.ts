/**
 * What both ends share below the tunnel: byte channels and their Web Streams, sockets,
 * splicing, buffer reuse, addresses, accept back-off and UDP drop counts.
 */
export type { ByteChannel, Duplex, HeadroomWriter, Protocol } from "./types.ts";
export {
  channelOf,
  duplexOf,
  duplexPair,
  type Peer,
  readableOf,
  type ResettableDuplex,
  writableOf,
} from "./channel.ts";
export { splice } from "./splice.ts";
export { closeQuietly, ConnChannel, connDuplex, writeAll } from "./socket.ts";
export { BufferPool } from "./buffer_pool.ts";
export { AcceptBackoff } from "./accept_backoff.ts";
export { kernelDrops, kernelDropsSoon } from "./udp_drops.ts";
