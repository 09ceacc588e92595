/**
 * Whether `argv` (without the program name) is a completion request: `completion <shell>`, or
 * `complete -- <words>` from a sourced script. Apart from lib/completion.ts so main.ts can ask
 * before loading anything: a request runs on every TAB, and neither loads the session nor
 * warms up TLS.
 */
export function isCompletionRequest(argv: readonly string[]): boolean {
  return argv[0] === "completion" || argv[0] === "complete";
}
