/**
 * Conversions between ByteChannels and Web Streams, both ways, and an in-memory Duplex pair.
 */
import { describeError } from "../errors.ts";
import type { ByteChannel, Duplex } from "./types.ts";

/** A Duplex that may also be reset (as a tunnel stream can), which is how it is aborted. */
export type ResettableDuplex = Duplex & { reset?(reason?: string): void };

/** What a splice joins: a channel, or any duplex (see channelOf). */
export type Peer = ByteChannel | ResettableDuplex;

/**
 * `peer` as a ByteChannel: itself if it is one (a tunnel stream), its `channel` if it has one
 * (a connection), else a channel reading and writing its Web Streams (which it then locks).
 */
export function channelOf(peer: Peer): ByteChannel {
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
    // A loop waiting on one side must still hear the other fail.
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
    abort: (reason) => channel.abort(describeError(reason, "writer aborted")),
  });
}

/**
 * A Duplex over `channel` whose Web Streams are made only when first asked for; `cancel` is
 * what cancelling its readable does (default: abort the channel).
 */
export function duplexOf(
  channel: ByteChannel,
  options: { cancel?: () => void; chunkFreeAfterWrite?: boolean } = {},
): Duplex {
  let readable: ReadableStream<Uint8Array> | undefined;
  let writable: WritableStream<Uint8Array> | undefined;
  return {
    channel,
    chunkFreeAfterWrite: options.chunkFreeAfterWrite,
    get readable() {
      return readable ??= readableOf(channel, options.cancel);
    },
    get writable() {
      return writable ??= writableOf(channel);
    },
  };
}

/** Two connected duplexes: bytes written to one's writable come out of the other's readable. */
export function duplexPair(): [Duplex, Duplex] {
  const aToB = new TransformStream<Uint8Array, Uint8Array>();
  const bToA = new TransformStream<Uint8Array, Uint8Array>();
  return [
    { readable: bToA.readable, writable: aToB.writable },
    { readable: aToB.readable, writable: bToA.writable },
  ];
}
