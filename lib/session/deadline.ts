/** Bounding calls that have no timeout of their own (a WebSocket upgrade, an API read). */

/**
 * Runs `start` and resolves as its promise does, or rejects with "`what` timed out after N s"
 * once `ms` have passed. The signal `start` is given aborts then, with that error, so the work
 * can stop (a WebSocket still opening is closed). A result that arrives late anyway is handed
 * to `discard` so nothing leaks.
 */
export function withDeadline<T>(
  start: (signal: AbortSignal) => Promise<T>,
  ms: number,
  what: string,
  discard?: (late: T) => void,
): Promise<T> {
  const giveUp = new AbortController();
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      const error = new Error(`${what} timed out after ${Math.round(ms / 1000)} s`);
      giveUp.abort(error);
      reject(error);
    }, ms);
    start(giveUp.signal).then(
      (value) => {
        clearTimeout(timer);
        if (settled) discard?.(value);
        else resolve(value);
        settled = true;
      },
      (error) => {
        clearTimeout(timer);
        if (!settled) reject(error);
        settled = true;
      },
    );
  });
}
