/** The few assertions the lib/kube tests need (JSR's @std/assert cannot be reached here). */
import { isDeepStrictEqual } from "node:util";

/** Fail with `message` unless `condition` holds. */
export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new Error(message);
}

/** Fail unless `actual` deep-equals `expected`. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(
      `${message ? `${message}: ` : ""}expected ${Deno.inspect(expected)}, got ${
        Deno.inspect(actual)
      }`,
    );
  }
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E> = new (...args: any[]) => E;

function check<E extends Error>(error: unknown, type?: ErrorClass<E>, includes?: string): E {
  if (type && !(error instanceof type)) {
    throw new Error(`expected ${type.name}, got ${Deno.inspect(error)}`);
  }
  const message = error instanceof Error ? error.message : String(error);
  if (includes && !message.includes(includes)) {
    throw new Error(`expected the error to mention ${JSON.stringify(includes)}, got: ${message}`);
  }
  return error as E;
}

/** Fail unless `fn` throws (an instance of `type`, mentioning `includes`); returns the error. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  type?: ErrorClass<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (error) {
    return check(error, type, includes);
  }
  throw new Error("expected a throw");
}

/** Fail unless `fn` rejects (an instance of `type`, mentioning `includes`); returns the error. */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  type?: ErrorClass<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (error) {
    return check(error, type, includes);
  }
  throw new Error("expected a rejection");
}
