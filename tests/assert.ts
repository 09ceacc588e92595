/**
 * The assertions the unit tests share. JSR's @std/assert cannot be reached here, so these are
 * Node's `node:assert/strict` under the familiar names, plus the few checks it has no single
 * call for.
 */
import { deepStrictEqual, match, ok, rejects, throws } from "node:assert/strict";

// deno-lint-ignore no-explicit-any
type Class<T> = new (...args: any[]) => T;

/**
 * Fails unless `actual` deep-strict-equals `expected`. Node's `deepStrictEqual`: the failure shows
 * a diff, after `message` when one is given.
 */
export const assertEquals: typeof deepStrictEqual = deepStrictEqual;

/** Fails with `message` unless `value` is truthy. Node's `ok`. */
export const assert: typeof ok = ok;

/** Fails unless `text` matches `pattern`. Node's `match`. */
export const assertMatch: typeof match = match;

/**
 * Fails unless `text` contains `part`, showing all of `text` when it does not. Node has no
 * substring check, and `match` would need `part` escaped into a RegExp.
 */
export function assertStringIncludes(text: string, part: string, message?: string): void {
  ok(
    text.includes(part),
    `${message ? `${message}: ` : ""}expected to find ${JSON.stringify(part)} in:\n${text}`,
  );
}

/**
 * Fails unless `value` is an instance of `type`, and returns it typed as one: an `asserts`
 * signature could not return it, and the test would have to repeat the expression to use it.
 */
export function assertInstanceOf<T>(value: unknown, type: Class<T>, message?: string): T {
  ok(
    value instanceof type,
    `${message ? `${message}: ` : ""}expected a ${type.name}, got ${Deno.inspect(value)}`,
  );
  return value;
}

/** `error`, once it has proved to be a `type` whose message mentions `includes` (when given). */
function checkError<E extends Error>(error: unknown, type: Class<E>, includes?: string): E {
  const e = assertInstanceOf(error, type);
  if (includes !== undefined) {
    ok(
      e.message.includes(includes),
      `expected the ${type.name} to mention ${JSON.stringify(includes)}, got: ${e.message}`,
    );
  }
  return e;
}

/**
 * Fails unless `fn` throws a `type` whose message contains `includes` (when given), and returns
 * that error so the test can look at the rest of it. Node's `throws` takes a class or a
 * validation object, not a class and a substring, and returns nothing.
 */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  type: Class<E>,
  includes?: string,
): E {
  let caught: unknown;
  throws(fn, (error: unknown) => {
    caught = error;
    return true;
  });
  return checkError(caught, type, includes);
}

/**
 * Fails unless the promise `fn` returns rejects with a `type` whose message contains `includes`
 * (when given), and returns that error. A function, as for {@link assertThrows}: Node's `rejects`
 * then fails the test when `fn` throws synchronously instead of returning a rejected promise.
 */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: Class<E>,
  includes?: string,
): Promise<E> {
  let caught: unknown;
  await rejects(fn, (error: unknown) => {
    caught = error;
    return true;
  });
  return checkError(caught, type, includes);
}

/**
 * Waits until `read()` is above 0 and has not changed for `quietMs`: how a test learns that
 * a sender has used up its credit, without betting on how long that takes on a busy machine.
 * Fails naming `what` after `timeoutMs`.
 */
export async function plateau(
  what: string,
  read: () => number,
  { quietMs = 100, timeoutMs = 10_000 } = {},
): Promise<number> {
  const until = performance.now() + timeoutMs;
  let last = read();
  let since = performance.now();
  while (performance.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    const now = read();
    if (now !== last) {
      last = now;
      since = performance.now();
    } else if (now > 0 && performance.now() - since >= quietMs) {
      return now;
    }
  }
  throw new Error(`${what} did not settle within ${timeoutMs} ms (last: ${last})`);
}

/**
 * Settles as `promise` does, or fails naming `what` once `ms` have passed: a hang fails the
 * test with a message instead of stalling the run.
 */
export async function within<T>(promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
