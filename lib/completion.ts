/**
 * Shell completions for relay, from @bomb.sh/tab's commander adapter.
 *
 * The scripts it prints are small and ask the binary for candidates on each TAB
 * (`relay complete -- <words>`, answered in cobra's format: `value<TAB>description` lines and a
 * `:<directive>` line), so they never go stale when commands or options change. Namespaces,
 * target kinds and the names of a kind's objects come from relay itself
 * (completion_cluster.ts), asked before the adapter's synchronous handlers run.
 */
import type { Command } from "commander";
import tab from "@bomb.sh/tab/commander";
import type { RootCommand } from "@bomb.sh/tab";
import { clusterCandidates, type CompletionQuery, completionQuery } from "./completion_cluster.ts";

/** How long a TAB may wait on the API server before it offers nothing. */
const CLUSTER_TIMEOUT_MS = 3000;

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
  commands: readonly { name(): string }[];
  parseAsync(argv: string[], options: { from: "user" }): Promise<unknown>;
}

/** main.ts dispatches these to {@link runCompletion} before its own parsing, as it does `agent`. */
export { isCompletionRequest } from "./completion_request.ts";

/**
 * Answers a completion request against `program` (relay's full command tree, built but not yet
 * parsed), writing the script or the candidates to stdout. An unknown shell is a commander
 * usage error, reported the way `program` reports errors. `agent`, the in-pod end, is not
 * offered: nobody types it.
 */
export async function runCompletion(
  program: CompletableProgram,
  argv: readonly string[],
): Promise<void> {
  const agent = program.commands.findIndex((command) => command.name() === "agent");
  if (agent >= 0) (program.commands as unknown[]).splice(agent, 1);
  const root = addCompletionCommands(program);
  // The adapter prints with console.log: bash's script gets re-sourceable on the way, and a
  // list of kinds (`pod/`) leaves the cursor after the slash.
  const log = console.log;
  if (argv[0] === "completion" && argv[1] === "bash") {
    console.log = (text: string) => log(resourceableBash(text));
  }
  if (argv[0] === "complete") {
    const words = argv.slice(argv.indexOf("--") + 1);
    const query = completionQuery(words);
    if (query) {
      const values = await clusterCandidates(query, connectForCompletion);
      offer(root, values);
      const printed: string[] = [];
      console.log = (text: string) => {
        const directive = /^:(\d+)$/.exec(text);
        if (!directive) printed.push(text);
        else if (printed.length > 0 && printed.every((line) => /^[^\t]*\/\t/.test(line))) {
          text = `:${Number(directive[1]) | NO_SPACE}`;
        }
        log(text);
      };
    }
  }
  try {
    await program.parseAsync([...argv], { from: "user" });
  } finally {
    console.log = log;
  }
}

/**
 * The bash script without `readonly` on its constants, so that sourcing it again (a second
 * ~/.bashrc read, a `source` after an upgrade) does not fail on them, as kubectl's does not;
 * and completing a `--flag=value` word by its value, as bash replaces only what follows the
 * `=` (kubectl's script does the same).
 */
function resourceableBash(script: string): string {
  const filter = '    COMPREPLY=( $(compgen -W "${completions[*]}" -- "$cur") )';
  return script.replace(/^readonly (\w+=)/gm, "$1").replace(
    filter,
    '    [[ "$cur" == -*=* ]] && cur="${cur#*=}"\n' + filter,
  );
}

/**
 * Adds `completion <bash|zsh|fish>`, which prints the script to source, and a hidden
 * `complete -- <words>`, which the script calls on each TAB, to `program`.
 *
 * Call it after every other command and option is registered: the adapter reads the command
 * tree once, when called.
 */
export function addCompletionCommands(program: CompletableProgram): RootCommand {
  // The adapter is typed against plain commander; extra-typings' Command is the same class at
  // run time with richer generics, which TypeScript cannot see through.
  return tab(program as unknown as Command, { completionCommandName: "completion" });
}

/** cobra's ShellCompDirectiveNoSpace. */
const NO_SPACE = 2;

/**
 * Offers `values` wherever the word under the cursor may be: `-n`'s value, `--target`'s, or a
 * target. The adapter calls at most one of these handlers, the one for that word.
 */
function offer(root: RootCommand, values: readonly string[]): void {
  const handler = (complete: (value: string, description: string) => void) => {
    for (const value of values) complete(value, "");
  };
  for (const name of ["namespace", "target"]) {
    const option = root.options.get(name);
    if (option) option.handler = handler;
  }
  for (const argument of root.arguments.values()) argument.handler = handler;
}

/** The cluster the typed words name, asked with a deadline a TAB can wait for. */
async function connectForCompletion(where: CompletionQuery) {
  const { loadKube } = await import("./kube/config.ts");
  const { kubeconfig, context, namespace, overrides } = where;
  return loadKube({
    kubeconfig,
    context,
    namespace,
    overrides,
    requestTimeoutMs: CLUSTER_TIMEOUT_MS,
  });
}
