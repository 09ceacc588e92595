/**
 * The command line, end to end: argv → an {@link Invocation}. Every problem with the input
 * surfaces here as a one-line {@link UsageError}, before anything touches the cluster.
 */
import { Command, CommanderError, Option } from "@commander-js/extra-typings";
import { UsageError } from "../errors.ts";
import type { Plan } from "../plan.ts";
import { DEFAULT_AGENT_IMAGE, VERSION } from "../version.ts";
import { type AgentArgs, parseAgentArgs } from "./agent_args.ts";
import { DESCRIPTION, EXAMPLES, USAGE } from "./help.ts";
import { type CliIo, type CommandOptions, DEFAULTS, toPlan } from "./plan_build.ts";
import { proxyCommand, type ProxyCommandOptions, toProxyPlan } from "./proxy.ts";

export type { CliIo, CommandOptions };
export { AGENT_IDLE_EXIT_ENV } from "./plan_build.ts";

/** What the command line asks relay to do. */
export type Invocation =
  /** Forwards, reverse forwards and (relay proxy) the proxy: one session. */
  | { command: "forward"; plan: Plan }
  /** `relay agent …`: run the in-pod end with these flags. */
  | { command: "agent"; options: AgentArgs }
  /** `--help`, `-V`, `relay version`: print `text` to stdout and exit 0. */
  | { command: "print"; text: string };

/** Reads from the real file system and stdin. */
export const denoIo: CliIo = {
  readTextFile: (path) => Deno.readTextFile(path),
  readStdin: () => new Response(Deno.stdin.readable).text(),
};

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/**
 * relay's commander program: flags, help text and subcommand names. Its actions only hand
 * the words and flags to `onForward` (or `onProxy`, for relay proxy); validation happens
 * after, in {@link parseCommandLine}. Exported so tooling (shell completion) can walk the same
 * flags.
 */
export function createProgram(
  onForward: (words: string[], opts: CommandOptions) => void = () => {},
  onProxy: (words: string[], opts: ProxyCommandOptions) => void = () => {},
) {
  const program = new Command()
    .name("relay")
    .usage(USAGE)
    .description(DESCRIPTION)
    .argument("[target-and-ports...]")
    .option("-n, --namespace <namespace>", "namespace of the targets (default: the context's)")
    .option(
      "-l, --address <addresses>",
      "local addresses to listen on, comma-separated or repeated; localhost means 127.0.0.1 and, where it can, ::1 (default: localhost)",
      collect,
    )
    .option(
      "-f, --file <path>",
      "read targets from a file, one a line ('-' for stdin), repeatable; or a mirrord config (target, feature.network.incoming)",
      collect,
    )
    .option(
      "-L, --port-forward <spec>",
      "forward [local:]host:port[@udp] (mirrord's form), repeatable",
      collect,
    )
    .option(
      "-R, --reverse-port-forward <spec>",
      "connections to port remote of the --target pod come to local port local (TCP), repeatable",
      collect,
    )
    .option(
      "--target <target>",
      "pod or workload whose network the agent joins; -L and targets then leave from it",
      collect,
    )
    .option(
      "--steal",
      "-R takes the app's port over: its connections come to the local port, not the app",
    )
    .option(
      "--mirror",
      "-R copies what callers send the app's port to the local port; the app still answers (default for a served port)",
    )
    .option(
      "--http-header-filter <regex>",
      "steal only HTTP requests with a header line (Name: value) matching regex; the rest reach the app",
    )
    .option(
      "--http-path-filter <regex>",
      "steal only HTTP requests whose path matches regex; the rest reach the app",
    )
    .option("-p, --patch <patch>", "merge patch (JSON or YAML) applied to the agent pod")
    .option("--patch-file <path>", "file holding a merge patch for the agent pod")
    .option("--agent-image <image>", `agent image (default: ${DEFAULT_AGENT_IMAGE})`)
    .option("--server.image <image>", "alias of --agent-image (krelay's name)")
    .option("--agent-namespace <namespace>", "namespace for the agent pod (default: the target's)")
    .addOption(new Option("--server.namespace <namespace>").hideHelp())
    .option("--tunnels <n>", `tunnels to keep open to the agent (default: ${DEFAULTS.tunnels})`)
    .option(
      "--udp-idle-timeout <duration>",
      `end a UDP session after this long without datagrams (default: ${DEFAULTS.udpIdleTimeout})`,
    )
    .option("--kubeconfig <path>", "path to the kubeconfig file")
    .option("--context <name>", "kubeconfig context to use")
    .option("--cluster <name>", "kubeconfig cluster to use (default: the context's)")
    .option("--user <name>", "kubeconfig user to use (default: the context's)")
    .option("-s, --server <url>", "the API server's address")
    .option("--token <token>", "bearer token for the API server")
    .option("--certificate-authority <path>", "CA certificate file for the API server")
    .option("--client-certificate <path>", "client certificate file for TLS")
    .option("--client-key <path>", "client key file for TLS")
    .option(
      "--tls-server-name <name>",
      "refused: relay checks the API server's certificate for the --server URL's host",
    )
    .option(
      "--insecure-skip-tls-verify",
      "refused: relay always checks the API server's certificate (=false is accepted)",
    )
    .option("--as <user>", "user to impersonate")
    .option("--as-group <group>", "group to impersonate, repeatable", collect)
    .option("--as-uid <uid>", "UID to impersonate")
    .option(
      "--request-timeout <duration>",
      "give up on one API request after this long (default: 0, never)",
    )
    .option(
      "--pod-running-timeout <duration>",
      `how long to wait for the agent pod to be running (default: ${DEFAULTS.podRunningTimeout})`,
    )
    .option("-v, --verbose", "print more about what relay is doing")
    .option(
      "-q, --quiet",
      "no live view or progress: ready lines, errors, warnings and notable events",
    )
    .option(
      "-o, --output <format>",
      "text (the default; a live view on a terminal) or json: one event per line on stdout",
    )
    .version(`relay ${VERSION}`, "-V, --version", "print relay's version")
    .helpOption("-h, --help", "print this help")
    .addHelpText("after", EXAMPLES)
    .showSuggestionAfterError(true)
    // Options after `proxy` are the subcommand's, not the forwarding form's.
    .enablePositionalOptions()
    .action((words, opts) => onForward(words, opts));
  program.addCommand(proxyCommand(program.options, onProxy));
  // Listed for --help; parseCommandLine dispatches both before commander sees them, since
  // `agent` has flags of its own.
  program.command("agent").description(
    "run the in-cluster end of the tunnel (inside the agent pod)",
  );
  program.command("version").description("print relay's version");
  return program;
}

/** Short flags that take a value, which kubectl (pflag) also accepts as `-n=VALUE`. */
const SHORT_VALUE_FLAGS = new Set(["-n", "-l", "-f", "-L", "-R", "-p", "-o", "-s"]);

/**
 * kubectl's spellings commander does not know: `-v=6`, `-v 6` or `--v=6` (relay has one
 * verbose level), `-n=NS` for any short flag that takes a value, and a bool flag's `=false`.
 */
function normalizeKubectlSpellings(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const level = /^--?v(?:=|)(\d+)$/.exec(arg);
    const badLevel = /^--?v=(.*)$/.exec(arg);
    const shortWithValue = /^(-[a-zA-Z])=(.*)$/s.exec(arg);
    if (level) {
      if (Number(level[1]) > 0) out.push("--verbose");
    } else if (badLevel) {
      throw new UsageError(
        `invalid ${arg.split("=")[0]} ${JSON.stringify(badLevel[1])}: expected a level (a number)`,
      );
    } else if (arg === "-v" && /^\d+$/.test(argv[i + 1] ?? "")) {
      if (Number(argv[++i]) > 0) out.push("--verbose");
    } else if (shortWithValue && SHORT_VALUE_FLAGS.has(shortWithValue[1])) {
      out.push(shortWithValue[1], shortWithValue[2]);
    } else if (/^--insecure-skip-tls-verify=(false|0)$/i.test(arg)) {
      // pflag's bool flags take =VALUE; kubectl's explicit default asks for nothing.
    } else if (/^--insecure-skip-tls-verify=(true|1)$/i.test(arg)) {
      out.push("--insecure-skip-tls-verify");
    } else {
      out.push(arg);
    }
  }
  return out;
}

/**
 * Parses relay's arguments (without the program name). Rejects with {@link UsageError} on
 * any bad input; `io` reads the files the flags name.
 */
export async function parseCommandLine(
  argv: readonly string[],
  io: CliIo = denoIo,
): Promise<Invocation> {
  // The agent has its own flags; commander must not see them.
  if (argv[0] === "agent") {
    const agent = parseAgentArgs(argv.slice(1));
    return "print" in agent
      ? { command: "print", text: agent.print }
      : { command: "agent", options: agent.run };
  }
  if (argv[0] === "version") {
    if (argv.length > 1) {
      throw new UsageError(`"relay version" takes no arguments, got "${argv[1]}"`);
    }
    // The agent is always the client's own version; a forward reports the one it reached (-v),
    // and warns if a custom --agent-image runs another.
    return { command: "print", text: `relay ${VERSION}\nagent image ${DEFAULT_AGENT_IMAGE}\n` };
  }
  if (argv[0] === "help" && argv.length === 1) argv = ["--help"];
  let printed = "";
  let asked: { words: string[]; opts: CommandOptions } | undefined;
  let askedProxy: { words: string[]; opts: ProxyCommandOptions } | undefined;
  const program = createProgram(
    (words, opts) => asked = { words, opts },
    (words, opts) => askedProxy = { words, opts },
  );
  // Subcommands too: they took their settings from the program before these were made.
  for (const command of [program, ...program.commands]) {
    command.exitOverride().configureOutput({
      writeOut: (text) => printed += text,
      writeErr: (text) => printed += text,
      // Our caller prints the one-line UsageError; commander's own copy would be a second line.
      outputError: () => {},
    });
  }
  try {
    program.parse(normalizeKubectlSpellings(argv), { from: "user" });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.exitCode === 0) return { command: "print", text: printed };
    if (error.code === "commander.help") return { command: "print", text: printed };
    throw new UsageError(error.message.replace(/^error: /, ""));
  }
  if (askedProxy) {
    const before = Object.keys(program.opts())[0];
    if (before !== undefined) {
      const flag = program.options.find((o) => o.attributeName() === before)?.long ?? before;
      throw new UsageError(
        `relay proxy: flags go after "proxy" (relay proxy -n NS …), but ${flag} came before it`,
      );
    }
    return {
      command: "forward",
      plan: await toProxyPlan(askedProxy.words, askedProxy.opts, io),
    };
  }
  if (!asked) return { command: "print", text: printed || program.helpInformation() };
  return { command: "forward", plan: await toPlan(asked.words, asked.opts, io) };
}
