/** Reading `deno test`'s closing summary line. */

/**
 * Tests and steps a summary line says were ignored: `2 ignored` and `0 ignored (1 step)` both
 * count.
 */
export function ignoredCount(summary: string): number {
  const match = /(\d+) ignored(?: \((\d+) steps?\))?/.exec(summary);
  return match ? Number(match[1]) + Number(match[2] ?? 0) : 0;
}
