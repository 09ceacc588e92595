/**
 * `relay agent`'s own flags (the in-pod end); the token comes from the environment. Parsed with
 * node:util's parseArgs rather than commander: the agent starts on every relay start, and
 * commander's import was a large part of its time to listening (figures in the commit).
 */
import { parseArgs } from "node:util";
import { type AgentSettings, type DestinationRule, parseDestinationRule } from "../contract.ts";
import { UsageError } from "../errors.ts";
import { parseDuration } from "./duration.ts";
import { parsePortNumber } from "./ports.ts";

/** The agent's flags, parsed; durations in milliseconds, absent means the agent's default. */
export type AgentArgs = Partial<AgentSettings>;

/** What `relay agent …` asks for: run with these flags, or print help. */
export type AgentInvocation = { run: AgentArgs } | { print: string };

const OPTIONS = {
  port: { type: "string" },
  "udp-idle-timeout": { type: "string" },
  "idle-exit": { type: "string" },
  "connect-timeout": { type: "string" },
  allow: { type: "string", multiple: true },
  help: { type: "boolean", short: "h" },
} as const;

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
  let opts;
  try {
    opts = parseArgs({ args: [...args], options: OPTIONS, strict: true }).values;
  } catch (error) {
    throw new UsageError(`relay agent: ${parseArgsProblem(error)}`);
  }
  if (opts.help) return { print: HELP };
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

/** parseArgs' complaint in the words relay's other flags use, on one line. */
function parseArgsProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const option = /^Unknown option '([^']+)'/.exec(message);
  if (option) return `unknown option '${option[1]}'`;
  const missing = /^Option '(\S+)[^']*' argument missing/.exec(message);
  if (missing) return `option '${missing[1]}' argument missing`;
  const positional = /^Unexpected argument '([^']*)'/.exec(message);
  if (positional) return `too many arguments: '${positional[1]}'`;
  return message.split("\n")[0];
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
