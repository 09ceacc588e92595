/**
 * `relay agent`: the in-pod end of relay's tunnels.
 *
 * Its flags are the AgentSettings of lib/contract.ts (parsed in lib/cli/agent_args.ts). The
 * session token comes only from the environment, so it never shows in the command line.
 */
import { AGENT_DEFAULTS, AGENT_TOKEN_ENV, type AgentSettings } from "../lib/contract.ts";
import { describeError } from "../lib/errors.ts";
import { VERSION } from "../lib/version.ts";
import { type AgentConfig, startAgent } from "./server.ts";

export { type AgentConfig, type AgentHandle, startAgent } from "./server.ts";
export type { Dialer, Resolver, TcpConnector } from "./dial.ts";
export { AGENT_DEFAULTS };

/** `relay agent` options as parsed from the command line (durations in milliseconds). */
export interface AgentOptions extends Partial<AgentSettings> {
  /** The token; default: the RELAY_AGENT_TOKEN environment variable. */
  token?: string;
  /** Where the ready line goes (default: stdout). */
  out?: (line: string) => void;
  /** Where log lines go (default: stderr). */
  log?: (line: string) => void;
  /** The port, already bound (early_listener.ts); else the agent binds `port`. */
  listener?: Deno.TcpListener;
}

/**
 * Runs the agent until SIGTERM/SIGINT or idle exit; resolves with the process exit code
 * (0 on a normal stop, 2 when the token is missing or the port cannot be bound).
 */
export async function runAgent(options: AgentOptions = {}): Promise<number> {
  const log = options.log ?? ((line: string) => console.error(line));
  const out = options.out ?? ((line: string) => console.log(line));
  const token = options.token ?? Deno.env.get(AGENT_TOKEN_ENV);
  if (!token) {
    log(`relay agent: ${AGENT_TOKEN_ENV} is not set; refusing to start without a session token`);
    return 2;
  }
  let agent;
  try {
    agent = startAgent(
      {
        token,
        port: options.port ?? AGENT_DEFAULTS.port,
        udpIdleMs: options.udpIdleMs,
        idleExitMs: options.idleExitMs,
        connectTimeoutMs: options.connectTimeoutMs,
        allow: options.allow,
        log,
        listener: options.listener,
      } satisfies AgentConfig,
    );
  } catch (e) {
    log(
      `relay agent: cannot listen on 127.0.0.1:${options.port ?? AGENT_DEFAULTS.port}: ${
        describeError(e)
      }`,
    );
    return 2;
  }
  const signals: Deno.Signal[] = ["SIGTERM", "SIGINT"];
  const handlers = signals.map((signal) => {
    const handler = () => agent.stop(`${signal} received, exiting`);
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  out(`relay agent ${VERSION} listening on 127.0.0.1:${agent.port}`);
  try {
    return await agent.finished;
  } finally {
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  }
}
