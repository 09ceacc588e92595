/**
 * `-o json`: every event as one line of JSON on stdout (NDJSON), and a `stats` event every
 * few seconds and at the end, for editors and test harnesses that wait for readiness and
 * watch traffic without scraping text. The shapes are docs/events.schema.json's.
 */
import type { SessionStatus } from "./session_status.ts";

/** How often a `stats` event is written while relay runs. */
export const STATS_INTERVAL_MS = 5_000;

/** Writes `status`'s events to `write` (one line each) until the returned stop is called. */
export function writeJsonEvents(
  status: SessionStatus,
  write: (line: string) => void,
  intervalMs = STATS_INTERVAL_MS,
): () => void {
  const unsubscribe = status.subscribe((event) => write(JSON.stringify(event)));
  const timer = setInterval(() => status.stats(), intervalMs);
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    status.stats();
    unsubscribe();
  };
}
