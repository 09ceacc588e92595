/**
 * The forwarding run: from bound listeners to an agent and its tunnels, until stopped.
 *
 * Order matters for what a bad run leaves behind: every target is resolved (and every
 * listener settled) before the agent pod exists, so a typo creates nothing in the cluster;
 * once the agent exists, every exit path deletes it.
 */
import { UsageError } from "../errors.ts";
import { type AgentPod, startAgentPod } from "../kube/agent_pod.ts";
import { type Kube, loadKube } from "../kube/config.ts";
import { dialPortForward } from "../kube/portforward.ts";
import { type ResolvedForward, resolveTarget } from "../kube/resolve.ts";
import {
  bindPort,
  closeBinding,
  type ListenerSet,
  type PortBinding,
  readyFacts,
} from "../listen/bind.ts";
import { closeQuietly, spliceConn } from "../listen/splice.ts";
import type { Logger } from "../log.ts";
import type { Plan } from "../plan.ts";
import { connectTunnel } from "../tunnel/handshake.ts";
import { splice } from "../tunnel/session.ts";
import { OpenError } from "../tunnel/types.ts";
import { TunnelPool } from "./pool.ts";

/** What {@link runForwards} is given by main.ts. */
export interface RunForwardsOptions {
  /** The parsed, validated command line. */
  plan: Plan;
  /**
   * Every local listener, already bound (so a busy port failed before any cluster work).
   * Ready lines are printed by the run once each port's target is resolved; `listeners`
   * stays owned by main.ts, which closes it after the run settles.
   */
  listeners: ListenerSet;
  logger: Logger;
  /** Aborted on SIGINT/SIGTERM: stop accepting, clean up the agent, then resolve. */
  signal: AbortSignal;
}

/** One bound port and where its connections go. */
interface Route {
  binding: PortBinding;
  forward: ResolvedForward;
}

/**
 * Runs every forward of `options.plan` until `options.signal` is aborted (then resolves,
 * and relay exits 0) or a runtime failure makes it impossible to go on (then rejects: exit
 * 1, or 2 when the error is a UsageError, such as a named port the target lacks).
 */
export async function runForwards(options: RunForwardsOptions): Promise<void> {
  const { plan, listeners, logger, signal } = options;
  if (plan.reverses.length > 0) {
    throw new UsageError(
      `${plan.reverses[0].source}: reverse forwarding (-R) is not supported yet`,
    );
  }
  const run = plan.options;
  const kube = loadKube({
    kubeconfig: run.kubeconfig,
    context: run.context,
    namespace: run.namespace,
    as: run.as,
    asGroups: run.asGroups,
    requestTimeoutMs: run.requestTimeoutMs,
  });
  let agent: AgentPod | undefined;
  let pool: TunnelPool | undefined;
  const stopAgent = () => agent?.stop().catch(() => {});
  signal.addEventListener("abort", () => void stopAgent(), { once: true });
  try {
    const routes = await resolveRoutes(kube, plan, listeners);
    if (signal.aborted) return;
    agent = await startAgentPod(kube, {
      namespace: run.agentNamespace ?? kube.namespace,
      image: run.agentImage,
      patch: run.patch,
      podRunningTimeoutMs: run.podRunningTimeoutMs,
      signal,
    });
    logger.debug(`agent pod ${agent.namespace}/${agent.podName} is running`);
    if (signal.aborted) return;
    const started = agent;
    pool = new TunnelPool({
      size: run.tunnels,
      dial: () =>
        dialPortForward(kube, {
          namespace: started.namespace,
          pod: started.podName,
          port: started.port,
        }),
      handshake: (transport) => connectTunnel(transport, { token: started.token }),
      log: (line) => logger.debug(line),
    });
    await pool.start(run.podRunningTimeoutMs);
    logger.debug(`connected to relay agent ${pool.peerVersion}`);
    if (signal.aborted) return;
    await serve(routes, pool, logger, signal);
  } catch (error) {
    // Whatever was in progress when the user stopped relay failed because of the stop.
    if (!signal.aborted) throw error;
  } finally {
    pool?.close();
    await stopAgent();
    kube.close();
  }
}

/** Resolves every binding's target and settles its listeners on the resolved protocol. */
async function resolveRoutes(kube: Kube, plan: Plan, listeners: ListenerSet): Promise<Route[]> {
  const routes: Route[] = [];
  const bindOptions = {
    addresses: plan.options.addresses,
    udp: { idleTimeoutMs: plan.udpIdleTimeoutMs },
  };
  for (const forward of plan.forwards) {
    const bindings = listeners.bindings.filter((b) => b.forward === forward);
    const resolved = await resolveTarget(kube, forward.target, bindings.map((b) => b.port));
    bindings.forEach((binding, i) => {
      const target = resolved[i];
      const want = target.protocol;
      const deferred = binding.deferred[want];
      if (deferred) throw deferred;
      // A port bound for both protocols (a name) or for the other one (a number whose
      // Service port is UDP only) keeps exactly the listeners the resolved protocol needs.
      const other = want === "tcp" ? binding.udp : binding.tcp;
      for (const listener of other.splice(0)) listener.close();
      const mine = want === "tcp" ? binding.tcp : binding.udp;
      if (mine.length === 0) {
        const remote = typeof binding.port.remote === "number" ? binding.port.remote : 0;
        bindPort(binding, binding.localPort ?? binding.port.localPort ?? remote, want, bindOptions);
      }
      routes.push({ binding, forward: target });
    });
  }
  return routes;
}

/** Accepts on every listener until the signal aborts, one tunnel stream per connection. */
async function serve(
  routes: Route[],
  pool: TunnelPool,
  logger: Logger,
  signal: AbortSignal,
): Promise<void> {
  const serving: Promise<void>[] = [];
  for (const { binding, forward } of routes) {
    readyFacts(binding, forward.protocol).forEach((facts) => logger.ready(facts));
    for (const listener of binding.tcp) {
      serving.push(listener.serve(
        (conn) => forwardConnection(conn, forward, pool, logger),
        (error) => logger.error(`accepting on ${listener.hostname}:${listener.port}: ${error}`),
      ));
    }
    for (const listener of binding.udp) {
      serving.push(listener.serve(async (session) => {
        try {
          const destination = await forward.destination();
          const stream = await pool.open({ protocol: "udp", ...destination });
          splice(stream, session);
          await Promise.race([stream.closed, session.closed]);
          stream.reset("session ended");
          session.close();
        } catch (error) {
          logger.error(`${forward.label}/udp: ${reason(error)}`);
          session.close();
        }
      }));
    }
  }
  await new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    signal.addEventListener("abort", () => resolve(), { once: true });
  });
  for (const { binding } of routes) closeBinding(binding);
  await Promise.allSettled(serving);
}

async function forwardConnection(
  conn: Deno.TcpConn,
  forward: ResolvedForward,
  pool: TunnelPool,
  logger: Logger,
): Promise<void> {
  let stream;
  try {
    const destination = await forward.destination();
    stream = await pool.open({ protocol: "tcp", ...destination });
  } catch (error) {
    logger.error(`connection to ${forward.label} failed: ${reason(error)}`);
    closeQuietly(conn);
    return;
  }
  await spliceConn(conn, stream);
}

function reason(error: unknown): string {
  if (error instanceof OpenError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
