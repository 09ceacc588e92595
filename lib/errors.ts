/**
 * Errors that decide relay's exit code. Anything else that escapes is a runtime failure (1).
 */

/** Exit code for bad input: a usage error, reported before anything touches the cluster. */
export const EXIT_USAGE = 2;
/** Exit code for a failure at run time (cluster unreachable, agent died, …). */
export const EXIT_FAILURE = 1;

/**
 * Bad input from the user: a flag, a port, a target, a file or a local address that cannot
 * be used. Its message is ONE line that names the bad value and what was expected, so it can
 * be printed as is; the process then exits with {@link EXIT_USAGE}.
 */
export class UsageError extends Error {
  /** The process exit code this error maps to. */
  readonly exitCode: number = EXIT_USAGE;

  constructor(message: string, options?: ErrorOptions) {
    // A multi-line message would break the one-line contract; fold it rather than trust callers.
    super(message.replace(/\s*\n\s*/g, " ").trim(), options);
    this.name = "UsageError";
  }
}

/** The exit code an error thrown out of a run maps to. */
export function exitCodeOf(error: unknown): number {
  return error instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE;
}

/**
 * Any thrown value as one line of text: the one way relay turns an error into words. An
 * operating-system error's code (ECONNREFUSED) leads when its message lacks it; nothing a
 * terminal would act on survives (an escape or NUL typed or read is shown escaped, as JSON
 * would). An empty reason gives `fallback`.
 */
export function describeError(error: unknown, fallback = "unknown error"): string {
  let text = error instanceof Error ? error.message : error == null ? "" : String(error);
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^E[A-Z0-9_]+$/.test(code) && !text.includes(code)) {
    text = `${code} ${text}`;
  }
  const oneLine = text.replace(/\s*\n\s*|\t/g, " ").trim();
  // deno-lint-ignore no-control-regex
  const shown = oneLine.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${hex4(c.charCodeAt(0))}`);
  return shown || fallback;
}

function hex4(code: number): string {
  return code.toString(16).padStart(4, "0");
}
