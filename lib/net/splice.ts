/** Splicing: two byte streams copied into each other, the one "copy both ways" relay has. */
import { describeError } from "../errors.ts";
import { channelOf, type Peer } from "./channel.ts";
import type { ByteChannel } from "./types.ts";

/** Bytes copied so far each way; `splice` adds to them as chunks pass. */
export interface SpliceCounts {
  aToB: number;
  bToA: number;
}

/**
 * Copies `a` into `b` and `b` into `a` until both directions have ended; resolves then, or
 * once either side failed. The end of one direction (EOF, FIN) is passed on as a half-close
 * while the other keeps flowing; a failure on either side aborts both, with the reason, and
 * the promise still resolves, to that reason: a failed connection is not the caller's
 * failure, but the caller may tell of it. `counts`, if given, is kept current chunk by chunk
 * (the status view's byte counters live here).
 */
export function splice(a: Peer, b: Peer, counts?: SpliceCounts): Promise<string | undefined> {
  const left = channelOf(a);
  const right = channelOf(b);
  let failure: string | undefined;
  const fail = (error: unknown) => {
    if (failure !== undefined) return;
    failure = describeError(error, "failed");
    left.abort(failure);
    right.abort(failure);
  };
  left.onFailure?.(fail);
  right.onFailure?.(fail);
  const copies = counts
    ? [countedCopy(left, right, counts, "aToB"), countedCopy(right, left, counts, "bToA")]
    : [copy(left, right), copy(right, left)];
  return Promise.all(copies.map((c) => c.catch(fail))).then(() => failure);
}

async function copy(from: ByteChannel, to: ByteChannel): Promise<void> {
  for (let chunk; (chunk = await from.read()) !== null;) await to.write(chunk);
  await to.closeWrite();
}

async function countedCopy(
  from: ByteChannel,
  to: ByteChannel,
  counts: SpliceCounts,
  way: keyof SpliceCounts,
): Promise<void> {
  for (let chunk; (chunk = await from.read()) !== null;) {
    // Counted once written, so a failed write does not show as delivered; the length is
    // taken first, since a write may hand the chunk's buffer on.
    const length = chunk.byteLength;
    await to.write(chunk);
    counts[way] += length;
  }
  await to.closeWrite();
}
