/** Bounding calls that have no timeout of their own (a WebSocket upgrade, an API read). */

/**
 * Resolves as `promise` does, or rejects with "`what` timed out after N s" once `ms` have
 * passed. A result that arrives late is handed to `discard` so nothing leaks (a WebSocket
 * that opened after its caller gave up is closed there).
 */
export function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  discard?: (late: T) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      reject(new Error(`${what} timed out after ${Math.round(ms / 1000)} s`));
    }, ms);
    promise.then(
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
