/**
 * The command line, end to end: argv → an {@link Invocation}. Every problem with the input
 * surfaces here as a one-line {@link UsageError}, before anything touches the cluster.
 */
import { Command, CommanderError, Option } from "@commander-js/extra-typings";
import { UsageError } from "../errors.ts";
import type { ForwardSpec, Plan, ReverseSpec, RunOptions, TargetRef } from "../plan.ts";
import { DEFAULT_AGENT_IMAGE, VERSION } from "../version.ts";
import { parseAddresses } from "./addresses.ts";
import { type AgentArgs, parseAgentArgs } from "./agent_args.ts";
import { parseDuration } from "./duration.ts";
import { parseForwardArgs } from "./forward_args.ts";
import { DESCRIPTION, EXAMPLES, USAGE } from "./help.ts";
import { parseLocalForward, parseReverseForward } from "./mirrord_flags.ts";
import { parsePatch } from "./patch.ts";
import { parseNamespace, parseTargetRef } from "./target.ts";
import { parseTargetsFile } from "./targets_file.ts";
import { formatTarget } from "../log.ts";

/** What the command line asks relay to do. */
export type Invocation =
  | { command: "forward"; plan: Plan }
  /** `relay agent …`: run the in-pod end with these flags. */
  | { command: "agent"; options: AgentArgs }
  /** `--help`, `-V`, `relay version`: print `text` to stdout and exit 0. */
  | { command: "print"; text: string };

/** How the parser reads `-f`, `--patch-file` and `-f -`; tests substitute their own. */
export interface CliIo {
  readTextFile(path: string): Promise<string>;
  readStdin(): Promise<string>;
}

/** Reads from the real file system and stdin. */
export const denoIo: CliIo = {
  readTextFile: (path) => Deno.readTextFile(path),
  readStdin: () => new Response(Deno.stdin.readable).text(),
};

/**
 * Hidden knob: how long an agent with no tunnel waits before exiting (its `--idle-exit`), as
 * a duration (`20s`). Tests set it short to show a SIGKILLed client leaves nothing behind;
 * users keep the agent's default.
 */
export const AGENT_IDLE_EXIT_ENV = "RELAY_AGENT_IDLE_EXIT";

const DEFAULTS = {
  tunnels: 2,
  podRunningTimeout: "1m",
  udpIdleTimeout: "60s",
  requestTimeout: "0",
} as const;

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/**
 * relay's commander program: flags, help text and subcommand names. Its action only hands
 * the words and flags to `onForward`; validation happens after, in {@link parseCommandLine}.
 * Exported so tooling (shell completion) can walk the same flags.
 */
export function createProgram(
  onForward: (words: string[], opts: CommandOptions) => void = () => {},
) {
  const program = new Command()
    .name("relay")
    .usage(USAGE)
    .description(DESCRIPTION)
    .argument("[target-and-ports...]")
    .option("-n, --namespace <namespace>", "namespace of the targets (default: the context's)")
    .option(
      "-l, --address <addresses>",
      "local addresses to listen on, comma-separated or repeated; localhost means 127.0.0.1 and ::1 (default: 127.0.0.1)",
      collect,
    )
    .option("-f, --file <path>", "read targets from a file, one a line ('-' for stdin)")
    .option(
      "-L, --port-forward <spec>",
      "forward [local:]host:port[@udp] (mirrord's form), repeatable",
      collect,
    )
    .option(
      "-R, --reverse-port-forward <spec>",
      "reverse forward remote[:local][@udp] from the --target pod to this machine, repeatable",
      collect,
    )
    .option("--target <target>", "pod or workload whose network the agent joins (needed by -R)")
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
    .option("--as <user>", "user to impersonate")
    .option("--as-group <group>", "group to impersonate, repeatable", collect)
    .option(
      "--request-timeout <duration>",
      "give up on one API request after this long (default: 0, never)",
    )
    .option(
      "--pod-running-timeout <duration>",
      `how long to wait for the agent pod to be running (default: ${DEFAULTS.podRunningTimeout})`,
    )
    .option("-v, --verbose", "print more about what relay is doing")
    .version(`relay ${VERSION}`, "-V, --version", "print relay's version")
    .helpOption("-h, --help", "print this help")
    .addHelpText("after", EXAMPLES)
    .showSuggestionAfterError(true)
    .action((words, opts) => onForward(words, opts));
  // Listed for --help; parseCommandLine dispatches both before commander sees them, since
  // `agent` has flags of its own.
  program.command("agent").description(
    "run the in-cluster end of the tunnel (inside the agent pod)",
  );
  program.command("version").description("print relay's version");
  return program;
}

/** The flags as commander hands them over, before validation. */
export type CommandOptions = {
  namespace?: string;
  address?: string[];
  file?: string;
  portForward?: string[];
  reversePortForward?: string[];
  target?: string;
  patch?: string;
  patchFile?: string;
  agentImage?: string;
  "server.image"?: string;
  agentNamespace?: string;
  "server.namespace"?: string;
  tunnels?: string;
  udpIdleTimeout?: string;
  kubeconfig?: string;
  context?: string;
  as?: string;
  asGroup?: string[];
  requestTimeout?: string;
  podRunningTimeout?: string;
  verbose?: true;
};

/** Short flags that take a value, which kubectl (pflag) also accepts as `-n=VALUE`. */
const SHORT_VALUE_FLAGS = new Set(["-n", "-l", "-f", "-L", "-R", "-p"]);

/**
 * kubectl's spellings commander does not know: `-v=6`, `-v 6` or `--v=6` (relay has one
 * verbose level) and `-n=NS` for any short flag that takes a value.
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
  const program = createProgram((words, opts) => asked = { words, opts })
    .exitOverride()
    .configureOutput({
      writeOut: (text) => printed += text,
      writeErr: (text) => printed += text,
      // Our caller prints the one-line UsageError; commander's own copy would be a second line.
      outputError: () => {},
    });
  try {
    program.parse(normalizeKubectlSpellings(argv), { from: "user" });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.exitCode === 0) return { command: "print", text: printed };
    if (error.code === "commander.help") return { command: "print", text: printed };
    throw new UsageError(error.message.replace(/^error: /, ""));
  }
  if (!asked) return { command: "print", text: printed || program.helpInformation() };
  return { command: "forward", plan: await toPlan(asked.words, asked.opts, io) };
}

/** Validates parsed flags and words and assembles the plan. */
async function toPlan(words: string[], opts: CommandOptions, io: CliIo): Promise<Plan> {
  const namespace = opts.namespace === undefined
    ? undefined
    : parseNamespace(opts.namespace, "--namespace");
  const forwards: ForwardSpec[] = [];
  if (words.length > 0) forwards.push(...parseForwardArgs(words, { namespace, source: "argv" }));
  if (opts.file !== undefined) {
    const text = await readNamed(opts.file, "-f", io);
    const name = opts.file === "-" ? "stdin" : opts.file;
    forwards.push(...parseTargetsFile(text, { name, namespace }));
  }
  forwards.push(...(opts.portForward ?? []).map(parseLocalForward));
  const reverses = (opts.reversePortForward ?? []).map(parseReverseForward);
  const agentTarget = opts.target === undefined
    ? undefined
    : parseAgentTarget(opts.target, namespace);
  if (forwards.length === 0 && reverses.length === 0) {
    throw new UsageError(
      "nothing to forward: give TARGET PORT..., -f FILE, -L or -R (see relay --help)",
    );
  }
  if (reverses.length > 0 && !agentTarget) {
    throw new UsageError(
      `${reverses[0].source} needs --target: the pod or workload whose port to take over`,
    );
  }
  checkLocalPortsDistinct(forwards);
  checkRemotePortsDistinct(reverses);

  const options: RunOptions = {
    addresses: parseAddresses(opts.address ?? []),
    asGroups: opts.asGroup ?? [],
    requestTimeoutMs: parseDuration(
      opts.requestTimeout ?? DEFAULTS.requestTimeout,
      "--request-timeout",
    ),
    agentImage: pickAgentImage(opts.agentImage, opts["server.image"]),
    podRunningTimeoutMs: parsePositiveDuration(
      opts.podRunningTimeout ?? DEFAULTS.podRunningTimeout,
      "--pod-running-timeout",
    ),
    tunnels: parseTunnels(opts.tunnels ?? String(DEFAULTS.tunnels)),
    verbose: opts.verbose ?? false,
  };
  const agentIdleExit = Deno.env.get(AGENT_IDLE_EXIT_ENV);
  if (agentIdleExit) {
    parseDuration(agentIdleExit, AGENT_IDLE_EXIT_ENV);
    options.agentIdleExit = agentIdleExit;
  }
  if (opts.kubeconfig !== undefined) options.kubeconfig = nonEmpty(opts.kubeconfig, "--kubeconfig");
  if (opts.context !== undefined) options.context = nonEmpty(opts.context, "--context");
  if (namespace !== undefined) options.namespace = namespace;
  if (opts.as !== undefined) options.as = nonEmpty(opts.as, "--as");
  const agentNamespace = pickAgreed(
    ["--agent-namespace", opts.agentNamespace],
    ["--server.namespace", opts["server.namespace"]],
  );
  if (agentNamespace !== undefined) {
    options.agentNamespace = parseNamespace(agentNamespace, "--agent-namespace");
  }
  const patch = await readPatch(opts.patch, opts.patchFile, io);
  if (patch) options.patch = patch;

  const udpIdleTimeoutMs = parsePositiveDuration(
    opts.udpIdleTimeout ?? DEFAULTS.udpIdleTimeout,
    "--udp-idle-timeout",
  );
  const plan: Plan = { options, forwards, reverses, udpIdleTimeoutMs };
  if (agentTarget) plan.agentTarget = agentTarget;
  return plan;
}

/** A duration that must be above 0: a zero timeout could never be met. */
function parsePositiveDuration(text: string, flag: string): number {
  const ms = parseDuration(text, flag);
  if (ms <= 0) {
    throw new UsageError(`invalid ${flag} "${text}": expected a duration above 0, like 60s`);
  }
  return ms;
}

async function readNamed(path: string, flag: string, io: CliIo): Promise<string> {
  if (path === "-") return await io.readStdin();
  try {
    return await io.readTextFile(path);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : error instanceof Deno.errors.IsADirectory
      ? "is a directory"
      : (error as Error).message?.split("\n")[0] ?? String(error);
    throw new UsageError(`cannot read ${flag} ${JSON.stringify(path)}: ${reason}`);
  }
}

async function readPatch(
  inline: string | undefined,
  file: string | undefined,
  io: CliIo,
): Promise<Record<string, unknown> | undefined> {
  if (inline !== undefined && file !== undefined) {
    throw new UsageError("--patch and --patch-file both given: use one of them");
  }
  if (inline !== undefined) return parsePatch(inline, "--patch");
  if (file !== undefined) {
    const text = await readNamed(file, "--patch-file", io);
    return parsePatch(text, `--patch-file ${JSON.stringify(file)}`);
  }
  return undefined;
}

function parseAgentTarget(text: string, namespace: string | undefined): TargetRef {
  const target = parseTargetRef(text, namespace);
  if (target.kind === "host" || target.kind === "ip") {
    throw new UsageError(
      `invalid --target "${text}": expected a pod or workload (pod/, deploy/, sts/, ds/, rs/, svc/)`,
    );
  }
  return target;
}

/** The value of a flag given under either of its two names (relay's and krelay's), if any. */
function pickAgreed(
  [name, value]: [string, string | undefined],
  [aliasName, aliasValue]: [string, string | undefined],
): string | undefined {
  if (value !== undefined && aliasValue !== undefined && value !== aliasValue) {
    throw new UsageError(
      `${name} ${JSON.stringify(value)} and ${aliasName} ${
        JSON.stringify(aliasValue)
      } disagree: give one`,
    );
  }
  return value ?? aliasValue;
}

function pickAgentImage(agentImage?: string, serverImage?: string): string {
  const image = pickAgreed(["--agent-image", agentImage], ["--server.image", serverImage]);
  if (image === undefined) return DEFAULT_AGENT_IMAGE;
  if (image.trim() === "" || /\s/.test(image)) {
    throw new UsageError(
      `invalid --agent-image ${JSON.stringify(image)}: expected an image reference`,
    );
  }
  return image;
}

function parseTunnels(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 64) {
    throw new UsageError(`invalid --tunnels ${JSON.stringify(text)}: expected a number 1–64`);
  }
  return n;
}

function nonEmpty(value: string, flag: string): string {
  if (value.trim() === "") throw new UsageError(`${flag} is empty: expected a value`);
  return value;
}

/** Two forwards on one local port and protocol could never both bind. */
function checkLocalPortsDistinct(forwards: readonly ForwardSpec[]): void {
  const owners = new Map<string, ForwardSpec>();
  for (const forward of forwards) {
    for (const port of forward.ports) {
      const local = port.localPort ?? (typeof port.remote === "number" ? port.remote : undefined);
      if (!local) continue; // random, or decided by a named port later
      // A named port without @proto may turn out to be either protocol, so it claims both.
      const protocols = port.protocol
        ? [port.protocol]
        : typeof port.remote === "string"
        ? ["tcp", "udp"]
        : ["tcp"];
      for (const protocol of protocols) {
        const key = `${local}/${protocol}`;
        const owner = owners.get(key);
        if (owner) {
          throw new UsageError(
            `local port ${key} is used twice: by ${formatTarget(owner.target)} (${owner.source}) ` +
              `and ${formatTarget(forward.target)} (${forward.source})`,
          );
        }
        owners.set(key, forward);
      }
    }
  }
}

function checkRemotePortsDistinct(reverses: readonly ReverseSpec[]): void {
  const seen = new Map<string, ReverseSpec>();
  for (const reverse of reverses) {
    const key = `${reverse.remotePort}/${reverse.protocol}`;
    const earlier = seen.get(key);
    if (earlier) {
      throw new UsageError(
        `remote port ${key} is reversed twice: ${earlier.source} and ${reverse.source}`,
      );
    }
    seen.set(key, reverse);
  }
}
