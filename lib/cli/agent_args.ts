/** `relay agent`'s own flags (the in-pod end); the token comes from the environment. */
import { Command, CommanderError } from "@commander-js/extra-typings";
import { type AgentSettings, type DestinationRule, parseDestinationRule } from "../contract.ts";
import { UsageError } from "../errors.ts";
import { parseDuration } from "./duration.ts";
import { parsePortNumber } from "./ports.ts";

/** The agent's flags, parsed; durations in milliseconds, absent means the agent's default. */
export type AgentArgs = Partial<AgentSettings>;

/** What `relay agent …` asks for: run with these flags, or print help. */
export type AgentInvocation = { run: AgentArgs } | { print: string };

/** Parses the words after `relay agent`; bad input is a one-line UsageError. */
export function parseAgentArgs(args: readonly string[]): AgentInvocation {
  let printed = "";
  const program = new Command()
    .name("relay agent")
    .description(
      "Run the in-cluster end of relay's tunnels. Started by relay inside the agent pod; " +
        "listens on 127.0.0.1 only and needs RELAY_AGENT_TOKEN in its environment.",
    )
    .option("--port <n>", "TCP port on 127.0.0.1 to accept tunnels on (default: 4646)")
    .option("--udp-idle-timeout <duration>", "end a UDP session after this silence (default: 60s)")
    .option(
      "--idle-exit <duration>",
      "exit when no tunnel is connected this long (default: 5m, 0 never)",
    )
    .option(
      "--connect-timeout <duration>",
      "give up on one TCP connect after this long (default: 10s)",
    )
    .option(
      "--allow <rule>",
      "a destination it may open, PROTOCOL/HOST/PORT (HOST * any address, PORT 0 any port), or any; repeatable (default: anything)",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .helpOption("-h, --help", "print this help")
    .exitOverride()
    .configureOutput({
      writeOut: (text) => printed += text,
      writeErr: (text) => printed += text,
      outputError: () => {},
    });
  try {
    program.parse(args, { from: "user" });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.exitCode === 0) return { print: printed };
    throw new UsageError(`relay agent: ${error.message.replace(/^error: /, "")}`);
  }
  const opts = program.opts();
  const parsed: AgentArgs = {};
  if (opts.port !== undefined) {
    parsed.port = parsePortNumber(
      opts.port,
      0,
      "port",
      `invalid --port ${JSON.stringify(opts.port)}`,
    );
  }
  if (opts.udpIdleTimeout !== undefined) {
    parsed.udpIdleMs = positive(opts.udpIdleTimeout, "--udp-idle-timeout");
  }
  if (opts.idleExit !== undefined) parsed.idleExitMs = parseDuration(opts.idleExit, "--idle-exit");
  if (opts.connectTimeout !== undefined) {
    parsed.connectTimeoutMs = positive(opts.connectTimeout, "--connect-timeout");
  }
  if (opts.allow !== undefined) parsed.allow = parseAllow(opts.allow);
  return { run: parsed };
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
