/**
 * The pause after a failed accept. Out of file descriptors (EMFILE), the connection stays in the
 * listen backlog and accepting again at once is a busy loop (docs/MEASUREMENTS.md); pausing,
 * doubling up to a second, lets the process's own connections end.
 */
const MIN_PAUSE_MS = 10;
const MAX_PAUSE_MS = 1_000;
/** While accepts keep failing, one report this often (the first failure is always told). */
const REPORT_EVERY_MS = 10_000;

/** Pacing and reporting of a listener's failed accepts; one per listener. */
export class AcceptBackoff {
  #pauseMs = 0;
  #lastReport = -Infinity;

  /**
   * After a failed accept: whether to report it (the first of a run of failures, then one
   * every 10 s while they go on), and the pause to wait before accepting again.
   */
  failed(): { report: boolean; pauseMs: number; pause: () => Promise<void> } {
    this.#pauseMs = Math.min(Math.max(this.#pauseMs * 2, MIN_PAUSE_MS), MAX_PAUSE_MS);
    const now = performance.now();
    const report = now - this.#lastReport >= REPORT_EVERY_MS;
    if (report) this.#lastReport = now;
    const pauseMs = this.#pauseMs;
    const pause = () => new Promise<void>((resolve) => setTimeout(resolve, pauseMs));
    return { report, pauseMs, pause };
  }

  /** After an accept that worked: the next failure starts a new run, reported at once. */
  succeeded(): void {
    this.#pauseMs = 0;
    this.#lastReport = -Infinity;
  }
}
