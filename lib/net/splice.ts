/** Splicing: two byte streams copied into each other, the one "copy both ways" relay has. */
import { describeError } from "../errors.ts";
import { channelOf, type Peer } from "./channel.ts";
import type { ByteChannel } from "./types.ts";

/**
 * Copies `a` into `b` and `b` into `a` until both directions have ended; resolves then, or
 * once either side failed. The end of one direction (EOF, FIN) is passed on as a half-close
 * while the other keeps flowing; a failure on either side aborts both, with the reason, and
 * the promise still resolves: a failed connection is not the caller's failure.
 */
export function splice(a: Peer, b: Peer): Promise<void> {
  const left = channelOf(a);
  const right = channelOf(b);
  let failed = false;
  const fail = (error: unknown) => {
    if (failed) return;
    failed = true;
    const reason = describeError(error, "failed");
    left.abort(reason);
    right.abort(reason);
  };
  left.onFailure?.(fail);
  right.onFailure?.(fail);
  return Promise.all([copy(left, right).catch(fail), copy(right, left).catch(fail)]).then(
    () => {},
  );
}

async function copy(from: ByteChannel, to: ByteChannel): Promise<void> {
  for (let chunk; (chunk = await from.read()) !== null;) await to.write(chunk);
  await to.closeWrite();
}
