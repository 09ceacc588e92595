/** Minimal assertions for the tunnel and agent tests (no std library is reachable). */
import { isDeepStrictEqual } from "node:util";

/** Fails unless `actual` and `expected` are deeply equal. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(
      `${message ?? "values differ"}:\n  actual:   ${show(actual)}\n  expected: ${show(expected)}`,
    );
  }
}

/** Fails unless `condition` holds. */
export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new Error(message);
}

/** Fails unless `value` is an instance of `type`. */
export function assertInstanceOf<T>(
  value: unknown,
  // deno-lint-ignore no-explicit-any
  type: new (...args: any[]) => T,
): asserts value is T {
  if (!(value instanceof type)) throw new Error(`expected ${type.name}, got ${show(value)}`);
}

/** Runs `fn`, which must throw a `type`; returns what it threw. */
export function assertThrows<T>(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  type: new (...args: any[]) => T,
): T {
  try {
    fn();
  } catch (e) {
    assertInstanceOf(e, type);
    return e;
  }
  throw new Error(`expected a ${type.name} to be thrown`);
}

/** Awaits `promise`, which must reject with a `type`; returns the rejection. */
export async function assertRejects<T>(
  promise: Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  type: new (...args: any[]) => T,
): Promise<T> {
  try {
    await promise;
  } catch (e) {
    assertInstanceOf(e, type);
    return e;
  }
  throw new Error(`expected a rejection with ${type.name}`);
}

function show(v: unknown): string {
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  try {
    const s = JSON.stringify(v);
    return s.length > 300 ? s.slice(0, 300) + "…" : s;
  } catch {
    return String(v);
  }
}
