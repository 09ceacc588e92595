/**
 * `relay agent`: the in-pod end of relay's tunnels.
 *
 * Its flags are the AgentSettings of lib/contract.ts (parsed in lib/cli/agent_args.ts). What it
 * checks tunnels against, the session token's SHA-256, comes from the environment; the agent
 * never holds the token itself.
 */
import {
  AGENT_DEFAULTS,
  AGENT_TOKEN_DIGEST_ENV,
  type AgentSettings,
  isTokenDigest,
} from "../lib/contract.ts";
import { describeError } from "../lib/errors.ts";
import { BufferPool } from "../lib/net/buffer_pool.ts";
import { trimWhenQuiet } from "../lib/net/memory_return.ts";
import { VERSION } from "../lib/version.ts";
import { type AgentConfig, startAgent } from "./server.ts";

export { type AgentConfig, type AgentHandle, startAgent } from "./server.ts";
export type { Dialer, Resolver, TcpConnector } from "./dial.ts";
export { AGENT_DEFAULTS };

/** `relay agent` options as parsed from the command line (durations in milliseconds). */
export interface AgentOptions extends Partial<AgentSettings> {
  /** The token's SHA-256 in hex; default: the RELAY_AGENT_TOKEN_SHA256 environment variable. */
  tokenDigest?: string;
  /** Where the ready line goes (default: stdout). */
  out?: (line: string) => void;
  /** Where log lines go (default: stderr). */
  log?: (line: string) => void;
  /** The port, already bound (early_listener.ts); else the agent binds `port`. */
  listener?: Deno.TcpListener;
}

/**
 * Runs the agent until SIGTERM/SIGINT or idle exit; resolves with the process exit code
 * (0 on a normal stop, 2 when the token's digest is missing or the port cannot be bound).
 */
export async function runAgent(options: AgentOptions = {}): Promise<number> {
  const log = options.log ?? ((line: string) => console.error(line));
  const out = options.out ?? ((line: string) => console.log(line));
  const tokenDigest = options.tokenDigest ?? Deno.env.get(AGENT_TOKEN_DIGEST_ENV);
  if (!tokenDigest) {
    log(
      `relay agent: ${AGENT_TOKEN_DIGEST_ENV} is not set; refusing to start without a ` +
        `session token to check tunnels against`,
    );
    return 2;
  }
  if (!isTokenDigest(tokenDigest)) {
    log(
      `relay agent: ${AGENT_TOKEN_DIGEST_ENV} "${tokenDigest}" is not a SHA-256 in ` +
        `lowercase hex (64 characters)`,
    );
    return 2;
  }
  const buffers = new BufferPool();
  let agent;
  try {
    agent = startAgent(
      {
        tokenDigest,
        port: options.port ?? AGENT_DEFAULTS.port,
        udpIdleMs: options.udpIdleMs,
        idleExitMs: options.idleExitMs,
        connectTimeoutMs: options.connectTimeoutMs,
        allow: options.allow,
        log,
        listener: options.listener,
        buffers,
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
  // What a burst of connections left in the heap goes back to the node once they are done.
  const running = new AbortController();
  trimWhenQuiet(running.signal, { release: () => buffers.dropSpares() });
  try {
    return await agent.finished;
  } finally {
    running.abort();
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  }
}
