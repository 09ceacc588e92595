/**
 * The startup scenario: how long from starting a forwarding tool to the first byte echoed
 * through it, the wait a user has each time they type the command. The tool is started anew
 * for each sample and stopped after it (relay and krelay delete their in-cluster end).
 */
import { type PortSpec, startTool, type ToolName } from "./tools.ts";
import type { BenchPods } from "./tools.ts";

/** Longest a tool that says it listens may take to echo the first bytes. */
const FIRST_ECHO_TIMEOUT_MS = 30_000;

/** Milliseconds from starting `tool` to the first bytes echoed back through `port`. */
export async function timeToFirstEcho(
  tool: ToolName,
  pods: BenchPods,
  port: PortSpec,
): Promise<number> {
  const started = performance.now();
  let echoedAt = NaN;
  const endpoint = await startTool(tool, pods, [port], {
    onListening: async (host, ports) => {
      await echoOnce(host, ports[String(port)]);
      echoedAt = performance.now();
    },
  });
  await endpoint.stop();
  return echoedAt - started;
}

/**
 * One connection that sends three bytes and reads them back; retried while refused or cut
 * (a tool may listen before its path is up: the wait is part of what is measured).
 */
async function echoOnce(hostname: string, port: number): Promise<void> {
  const deadline = performance.now() + FIRST_ECHO_TIMEOUT_MS;
  const sent = Uint8Array.of(1, 2, 3);
  let lastError: unknown;
  while (performance.now() < deadline) {
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await Deno.connect({ hostname, port });
      await conn.write(sent);
      const got = new Uint8Array(3);
      let n = 0;
      while (n < 3) {
        const r = await conn.read(got.subarray(n));
        if (r === null) throw new Error("closed before the echo");
        n += r;
      }
      return;
    } catch (error) {
      lastError = error;
      await new Promise((resolve) => setTimeout(resolve, 5));
    } finally {
      try {
        conn?.close();
      } catch { /* closed already */ }
    }
  }
  throw new Error(`no echo within ${FIRST_ECHO_TIMEOUT_MS / 1000} s: ${lastError}`);
}
