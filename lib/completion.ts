/**
 * Shell completions for relay, from @bomb.sh/tab's commander adapter.
 *
 * The scripts it prints are small and ask the binary for candidates on each TAB
 * (`relay complete -- <words>`, answered in cobra's format: `value<TAB>description` lines and a
 * `:<directive>` line), so they never go stale when commands or options change, and later
 * completions (namespaces, pods) can be answered by relay itself.
 */
import type { Command } from "commander";
import tab from "@bomb.sh/tab/commander";

/** The shells `relay completion <shell>` prints a script for (tab also accepts powershell). */
export const COMPLETION_SHELLS = ["bash", "zsh", "fish"] as const;

/** One of {@link COMPLETION_SHELLS}. */
export type CompletionShell = (typeof COMPLETION_SHELLS)[number];

/**
 * The smallest view of a commander program this module needs; both `commander`'s and
 * `@commander-js/extra-typings`' Command satisfy it, so main.ts can pass its program as is.
 */
export interface CompletableProgram {
  name(): string;
  commands: readonly unknown[];
  parseAsync(argv: string[], options: { from: "user" }): Promise<unknown>;
}

/** main.ts dispatches these to {@link runCompletion} before its own parsing, as it does `agent`. */
export { isCompletionRequest } from "./completion_request.ts";

/**
 * Answers a completion request against `program` (relay's full command tree, built but not yet
 * parsed), writing the script or the candidates to stdout. An unknown shell is a commander
 * usage error, reported the way `program` reports errors.
 */
export async function runCompletion(
  program: CompletableProgram,
  argv: readonly string[],
): Promise<void> {
  addCompletionCommands(program);
  await program.parseAsync([...argv], { from: "user" });
}

/**
 * Adds `completion <bash|zsh|fish>`, which prints the script to source, and a hidden
 * `complete -- <words>`, which the script calls on each TAB, to `program`.
 *
 * Call it after every other command and option is registered: the adapter reads the command
 * tree once, when called.
 */
export function addCompletionCommands(program: CompletableProgram): void {
  // The adapter is typed against plain commander; extra-typings' Command is the same class at
  // run time with richer generics, which TypeScript cannot see through.
  tab(program as unknown as Command, { completionCommandName: "completion" });
}
