/** One tunnel to an agent: a port-forward to its pod, then the handshake with its token. */
import { CLIENT_KEEPALIVE_MS } from "../contract.ts";
import type { AgentPod } from "../kube/agent_pod.ts";
import type { Kube } from "../kube/config.ts";
import { dialPortForward } from "../kube/portforward.ts";
import type { BufferPool } from "../net/buffer_pool.ts";
import { openTunnel } from "../tunnel/handshake.ts";
import type { Tunnel, TunnelOptions } from "../tunnel/types.ts";
import { withDeadline } from "./deadline.ts";

/** How long one port-forward upgrade may take. */
export const DIAL_TIMEOUT_MS = 15_000;

/** What a tunnel of the session is opened with, beside the agent's token. */
export interface TunnelDialOptions {
  /** The session's buffer pool (see TunnelOptions.buffers). */
  buffers?: BufferPool;
  /** Opens from the agent (reverse forwards). */
  onOpen?: TunnelOptions["onOpen"];
}

/** Opens one tunnel to `agent`; the agent's answer to its HELLO settles `handshake` later. */
export async function dialTunnel(
  kube: Kube,
  agent: AgentPod,
  options: TunnelDialOptions = {},
): Promise<Tunnel> {
  // An API server that is still starting may accept the upgrade and never answer it; a
  // dial that hangs would stall the pool's reconnect loop for good.
  const transport = await withDeadline(
    (signal) =>
      dialPortForward(
        kube,
        { namespace: agent.namespace, pod: agent.podName, port: agent.port },
        { signal },
      ),
    DIAL_TIMEOUT_MS,
    `port-forward to pod/${agent.podName}`,
    (late) => void late.readable.cancel().catch(() => {}),
  );
  try {
    return await openTunnel(transport, {
      token: agent.token,
      keepAliveMs: CLIENT_KEEPALIVE_MS,
      buffers: options.buffers,
      onOpen: options.onOpen,
    });
  } catch (err) {
    await transport.writable.abort(err).catch(() => {});
    await transport.readable.cancel(err).catch(() => {});
    throw err;
  }
}
