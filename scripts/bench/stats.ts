/**
 * The arithmetic of the benchmark: percentiles of samples, medians across rounds, ratios
 * that stay honest when one side is missing.
 */

/**
 * The `p`-th percentile (0–100) of `values` by the nearest-rank method, or NaN for no
 * values. Nearest-rank rather than interpolation: every figure reported is one that was
 * actually measured.
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/**
 * The median of `values`, ignoring NaN (a round that produced no figure), or NaN when
 * nothing is left. An even count averages the middle two, as the usual median does.
 */
export function median(values: readonly number[]): number {
  const finite = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = finite.length >> 1;
  return finite.length % 2 === 1 ? finite[mid] : (finite[mid - 1] + finite[mid]) / 2;
}

/** `a / b`, or null when either is missing or `b` is zero (JSON has no NaN). */
export function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b)) {
    return null;
  }
  return b === 0 ? null : round(a / b, 3);
}

/** Rounds to `digits` decimals; NaN and infinities become null, for JSON. */
export function round(value: number, digits = 2): number | null {
  if (!Number.isFinite(value)) return null;
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/**
 * Rotates `items` left by `by` places: round r of a scenario runs the tools in rotated
 * order, so no tool always runs first (cold) or last (after the others heated the machine).
 */
export function rotate<T>(items: readonly T[], by: number): T[] {
  if (items.length === 0) return [];
  const k = ((by % items.length) + items.length) % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

/**
 * The highest rate of a rising-rate UDP run that lost nothing, and every lower step also
 * lost nothing (a lucky step after a lossy one does not count); 0 when the first lost.
 */
export function maxRateWithoutLoss(steps: readonly { rate: number; lost: number }[]): number {
  let best = 0;
  for (const step of [...steps].sort((a, b) => a.rate - b.rate)) {
    if (step.lost > 0) break;
    best = step.rate;
  }
  return best;
}
