/** Durations as kubectl's flags take them: Go syntax (`30s`, `1m30s`, `500ms`) or bare seconds. */
import { UsageError } from "../errors.ts";

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

const TERM = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;

/**
 * Parses `text` to milliseconds (rounded up, so `1ns` is not "no timeout"). A bare number is
 * seconds, as kubectl's `--request-timeout` allows. Negative values are refused.
 */
export function parseDuration(text: string, flag: string): number {
  const fail = () =>
    new UsageError(
      `invalid ${flag} ${JSON.stringify(text)}: expected a duration like 0, 30s, 1m or 1h30m`,
    );
  if (/^\d+(?:\.\d+)?$/.test(text)) return Math.ceil(Number(text) * 1000);
  if (text === "") throw fail();
  let total = 0;
  TERM.lastIndex = 0;
  while (TERM.lastIndex < text.length) {
    const match = TERM.exec(text);
    if (!match) throw fail();
    total += Number(match[1]) * UNIT_MS[match[2]];
  }
  return Math.ceil(total);
}
