/**
 * Splicing two ByteChannels into each other: a read-then-write loop each way, with no Web
 * Streams between them (see ByteChannel for what that saves); and the conversions between
 * channels and Web Streams, both ways.
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
    const reason = reasonText(error, "failed");
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

/**
 * A ReadableStream of what `channel` reads; cancelling it calls `cancel` (by default, aborts
 * the channel). Pulls only when read (high-water mark 0), so nothing waits in it.
 */
export function readableOf(
  channel: ByteChannel,
  cancel: () => void = () => channel.abort("reader cancelled"),
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = await channel.read();
      if (chunk === null) controller.close();
      else controller.enqueue(chunk);
    },
    cancel,
  }, { highWaterMark: 0 });
}

/**
 * A WritableStream that writes to `channel`: close() half-closes it, abort() aborts it with the
 * reason. `start` is given the controller (to error the stream from outside).
 */
export function writableOf(
  channel: ByteChannel,
  start?: (controller: WritableStreamDefaultController) => void,
): WritableStream<Uint8Array> {
  return new WritableStream<Uint8Array>({
    start,
    write: (chunk) => channel.write(chunk),
    close: () => channel.closeWrite(),
    abort: (reason) => channel.abort(reasonText(reason, "writer aborted")),
  });
}

/** An abort or failure reason as the text a stream reset carries. */
function reasonText(reason: unknown, fallback: string): string {
  if (reason instanceof Error) return reason.message;
  if (typeof reason === "string" && reason) return reason;
  return fallback;
}
