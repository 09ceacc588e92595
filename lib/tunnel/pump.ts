/**
 * Splicing two ByteChannels into each other: a read-then-write loop each way, with no Web
 * Streams between them (see ByteChannel for what that saves).
 */
import type { ByteChannel, Duplex } from "./types.ts";

/**
 * Copies `a` into `b` and `b` into `a` until both directions have ended; resolves then, or
 * once either side failed. The end of one direction (EOF, FIN) is passed on as a half-close
 * while the other keeps flowing; a failure on either side aborts both, with the reason.
 */
export function pump(a: ByteChannel, b: ByteChannel): Promise<void> {
  let failed = false;
  const fail = (error: unknown) => {
    if (failed) return;
    failed = true;
    const reason = error instanceof Error ? error.message : String(error);
    a.abort(reason);
    b.abort(reason);
  };
  a.onFailure?.(fail);
  b.onFailure?.(fail);
  return Promise.all([copy(a, b).catch(fail), copy(b, a).catch(fail)]).then(() => {});
}

async function copy(from: ByteChannel, to: ByteChannel): Promise<void> {
  for (let chunk; (chunk = await from.read()) !== null;) await to.write(chunk);
  await to.closeWrite();
}

/** A Duplex that may also be reset (as a tunnel stream can), which is how it is aborted. */
export type ResettableDuplex = Duplex & { reset?(reason?: string): void };

/**
 * `peer` as a ByteChannel: itself if it is one (a tunnel stream), its `channel` if it has one
 * (a connection), else a channel reading and writing its Web Streams (which it then locks).
 */
export function channelOf(peer: ByteChannel | ResettableDuplex): ByteChannel {
  if ("read" in peer) return peer;
  if (peer.channel) return peer.channel;
  const duplex = peer;
  const reader = duplex.readable.getReader();
  const writer = duplex.writable.getWriter();
  return {
    read: async () => {
      const { done, value } = await reader.read();
      return done ? null : value;
    },
    write: (chunk) => writer.write(chunk),
    closeWrite: () => writer.close(),
    // pipeTo watched both ends; a loop waiting on one side must still hear the other fail.
    onFailure(callback) {
      const failed = (e: unknown) => callback(e instanceof Error ? e : new Error(String(e)));
      reader.closed.catch(failed);
      writer.closed.catch(failed);
    },
    abort(reason) {
      duplex.reset?.(reason);
      const error = new Error(reason);
      reader.cancel(error).catch(() => {});
      writer.abort(error).catch(() => {});
    },
  };
}
