/**
 * `relay agent`'s own flags (the in-pod end); the token comes from the environment. A few lines
 * of parsing rather than commander or node:util's parseArgs: the agent starts on every relay
 * start, and either import costs it time to listening and idle memory in every agent pod
 * (node:util brings up Deno's Node compatibility layer, 5–6 MB; docs/MEASUREMENTS.md).
 */
import { type AgentSettings, type DestinationRule, parseDestinationRule } from "../contract.ts";
import { UsageError } from "../errors.ts";
import { parseDuration } from "./duration.ts";
import { parsePortNumber } from "./ports.ts";

/** The agent's flags, parsed; durations in milliseconds, absent means the agent's default. */
export type AgentArgs = Partial<AgentSettings>;

/** What `relay agent …` asks for: run with these flags, or print help. */
export type AgentInvocation = { run: AgentArgs } | { print: string };

/** The flags that take a value; `--allow` may be repeated, the others' last value counts. */
const VALUE_FLAGS = ["port", "udp-idle-timeout", "idle-exit", "connect-timeout", "allow"] as const;
type ValueFlag = typeof VALUE_FLAGS[number];

const HELP = `Usage: relay agent [options]

Run the in-cluster end of relay's tunnels. Started by relay inside the agent
pod; listens on 127.0.0.1 only and needs RELAY_AGENT_TOKEN_SHA256 (the SHA-256
of the session token, in hex) in its environment.

Options:
  --port <n>                     TCP port on 127.0.0.1 to accept tunnels on
                                 (default: 4646)
  --udp-idle-timeout <duration>  end a UDP session after this silence (default:
                                 60s)
  --idle-exit <duration>         exit when no tunnel is connected this long
                                 (default: 5m, 0 never)
  --connect-timeout <duration>   give up on one TCP connect after this long
                                 (default: 10s)
  --allow <rule>                 a destination it may open, PROTOCOL/HOST/PORT
                                 (HOST * any address, PORT 0 any port), or any;
                                 repeatable (default: anything)
  -h, --help                     print this help
`;

/** Parses the words after `relay agent`; bad input is a one-line UsageError. */
export function parseAgentArgs(args: readonly string[]): AgentInvocation {
  const words = readWords(args);
  if (words.help) return { print: HELP };
  const opts = words.values;
  const parsed: AgentArgs = {};
  if (opts.port !== undefined) {
    parsed.port = parsePortNumber(
      opts.port,
      0,
      "port",
      `invalid --port ${JSON.stringify(opts.port)}`,
    );
  }
  if (opts["udp-idle-timeout"] !== undefined) {
    parsed.udpIdleMs = positive(opts["udp-idle-timeout"], "--udp-idle-timeout");
  }
  if (opts["idle-exit"] !== undefined) {
    parsed.idleExitMs = parseDuration(opts["idle-exit"], "--idle-exit");
  }
  if (opts["connect-timeout"] !== undefined) {
    parsed.connectTimeoutMs = positive(opts["connect-timeout"], "--connect-timeout");
  }
  if (opts.allow !== undefined) parsed.allow = parseAllow(opts.allow);
  return { run: parsed };
}

interface Words {
  help: boolean;
  values: { [flag in Exclude<ValueFlag, "allow">]?: string } & { allow?: string[] };
}

/**
 * `--flag value`, `--flag=value`, `-h`/`--help`; no positionals. A value that starts with a dash
 * is taken for a forgotten one, as node:util's parseArgs takes it.
 */
function readWords(args: readonly string[]): Words {
  const words: Words = { help: false, values: {} };
  const fail = (problem: string): never => {
    throw new UsageError(`relay agent: ${problem}`);
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      if (i + 1 < args.length) return fail(`too many arguments: '${args[i + 1]}'`);
      break;
    }
    if (!arg.startsWith("-") || arg === "-") return fail(`too many arguments: '${arg}'`);
    const eq = arg.indexOf("=");
    const name = eq > 0 && arg.startsWith("--") ? arg.slice(2, eq) : arg.replace(/^--?/, "");
    if (arg === "-h" || name === "help" && arg.startsWith("--")) {
      if (eq > 0) return fail(`option '--help' does not take an argument`);
      words.help = true;
      continue;
    }
    const flag = VALUE_FLAGS.find((known) => known === name);
    if (!flag || !arg.startsWith("--")) {
      return fail(`unknown option '${eq > 0 ? arg.slice(0, eq) : arg}'`);
    }
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else if (i + 1 < args.length && !args[i + 1].startsWith("-")) value = args[++i];
    if (value === undefined) return fail(`option '--${flag}' argument missing`);
    if (flag === "allow") (words.values.allow ??= []).push(value);
    else words.values[flag] = value;
  }
  return words;
}

function parseAllow(values: string[]): DestinationRule[] | "any" {
  if (values.includes("any")) return "any";
  return values.map((text) => {
    const rule = parseDestinationRule(text);
    if (!rule) {
      throw new UsageError(
        `relay agent: invalid --allow ${JSON.stringify(text)}: expected PROTOCOL/HOST/PORT or any`,
      );
    }
    return rule;
  });
}

function positive(text: string, flag: string): number {
  const ms = parseDuration(text, flag);
  if (ms <= 0) {
    throw new UsageError(`invalid ${flag} ${JSON.stringify(text)}: expected a duration above 0`);
  }
  return ms;
}
