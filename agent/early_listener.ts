/**
 * The agent's port, bound before the agent's modules load: relay opens its first port-forward
 * the moment the pod runs, and a port that listens only once the modules have loaded (tens of
 * milliseconds later) refuses it, costing a retry. Connections that arrive meanwhile wait in
 * the kernel's backlog until the agent accepts them.
 */
import { AGENT_PORT } from "../lib/contract.ts";

/**
 * Binds 127.0.0.1 on the port `relay agent ARGS` asks for, or returns undefined whenever the
 * arguments are not plainly a run (help, an odd or repeated --port) or the bind fails: the
 * agent then binds as usual, and its flag parser or bind reports the problem.
 */
export function bindAgentPortEarly(args: readonly string[]): Deno.TcpListener | undefined {
  const port = plainPort(args);
  if (port === undefined) return undefined;
  try {
    return Deno.listen({ hostname: "127.0.0.1", port, transport: "tcp" });
  } catch {
    return undefined;
  }
}

/** The port of `--port N` or `--port=N` (default AGENT_PORT), if the arguments say it plainly. */
function plainPort(args: readonly string[]): number | undefined {
  let port: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h" || arg === "--help") return undefined;
    let value: string | undefined;
    if (arg === "--port") value = args[++i];
    else if (arg.startsWith("--port=")) value = arg.slice("--port=".length);
    else continue;
    if (port !== undefined || value === undefined || !/^\d{1,5}$/.test(value)) return undefined;
    port = value;
  }
  if (port === undefined) return AGENT_PORT;
  const n = Number(port);
  return n >= 1 && n <= 65535 ? n : undefined;
}
