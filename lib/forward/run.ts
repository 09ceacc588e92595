/**
 * The forwarding run: from bound listeners to an agent and its tunnels, until stopped.
 *
 * Order matters for what a bad run leaves behind: every target is resolved (and every
 * listener settled) before the agent pod exists, so a typo creates nothing in the cluster;
 * once the agent exists, every exit path deletes it.
 */
import { describeError, UsageError } from "../errors.ts";
import { parseDuration } from "../cli/duration.ts";
import {
  AGENT_IDLE_EXIT_ENV,
  agentGoneReason,
  type AgentPod,
  startAgentPod,
} from "../kube/agent_pod.ts";
import { checkAgentAccess } from "../kube/access.ts";
import { type Kube, loadKube } from "../kube/config.ts";
import { dialPortForward } from "../kube/portforward.ts";
import { type FollowPods, followPods } from "../kube/ready_pods.ts";
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
import { OpenError, type Tunnel } from "../tunnel/types.ts";
import { AgentSupervisor } from "./agent_supervisor.ts";
import { withDeadline } from "./deadline.ts";
import { TunnelPool } from "./pool.ts";
import { VERSION } from "../version.ts";

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
  // Aborted by the user's signal, or by a failure that ends the run (the agent could not be
  // replaced): either way serving stops and the agent is deleted.
  const stop = new AbortController();
  let fatal: unknown;
  const onSignal = () => stop.abort();
  signal.addEventListener("abort", onSignal, { once: true });
  if (signal.aborted) stop.abort();
  let pool: TunnelPool | undefined;
  stop.signal.addEventListener("abort", () => pool?.close(), { once: true });
  const supervisor = new AgentSupervisor({
    start: () =>
      startAgentPod(kube, {
        namespace: run.agentNamespace ?? kube.namespace,
        image: run.agentImage,
        patch: run.patch,
        podRunningTimeoutMs: run.podRunningTimeoutMs,
        signal: stop.signal,
        idleExit: agentIdleExit(),
        // The agent ends a silent UDP session when relay does, not at its own default.
        udpIdleTimeout: `${plan.udpIdleTimeoutMs}ms`,
      }),
    connect: (agent) => openTunnel(kube, agent),
    goneReason: (agent) =>
      withDeadline(() => agentGoneReason(kube, agent), DIAL_TIMEOUT_MS, "reading the agent pod"),
    log: (line) => logger.info(line),
    onFailure: (error) => {
      fatal ??= error;
      stop.abort();
    },
  });
  let started = false;
  try {
    // Workload and headless-Service targets watch their pods until relay stops (stop.signal
    // ends every watch before kube.close() below).
    const follow = followPods({
      watch: kube.watch,
      core: kube.core,
      signal: stop.signal,
      onError: (line) => logger.debug(line),
    });
    // Both before any Job exists: a withheld permission fails naming it, before a Job relay
    // could not reach or delete. They ask different questions, so at once; a bad target is
    // told first, as it would be alone.
    const [resolved, access] = await Promise.allSettled([
      resolveRoutes(kube, plan, listeners, follow),
      checkAgentAccess(kube, run.agentNamespace ?? kube.namespace),
    ]);
    if (resolved.status === "rejected") throw resolved.reason;
    if (access.status === "rejected") throw access.reason;
    const routes = resolved.value;
    if (stop.signal.aborted) return;
    started = true;
    const agent = await supervisor.start();
    logger.debug(`agent pod ${agent.namespace}/${agent.podName} is running`);
    if (stop.signal.aborted) return;
    pool = new TunnelPool({
      size: run.tunnels,
      connect: () => supervisor.connect(),
      log: (line) => logger.debug(line),
    });
    await pool.start(run.podRunningTimeoutMs);
    logger.debug(`connected to relay agent ${pool.peerVersion}`);
    if (pool.peerVersion !== VERSION) {
      logger.info(`warning: the agent runs relay ${pool.peerVersion}, this is relay ${VERSION}`);
    }
    if (stop.signal.aborted) return;
    await serve(routes, pool, logger, stop.signal);
  } catch (error) {
    // Whatever was in progress when the user stopped relay failed because of the stop.
    if (!stop.signal.aborted) throw error;
  } finally {
    signal.removeEventListener("abort", onSignal);
    pool?.close();
    if (started) await stopAgent(supervisor, logger);
    // Ends the pod watches on every exit path, an error before serving included.
    stop.abort();
    kube.close();
  }
  if (fatal) throw fatal;
}

/**
 * Deletes the agent and says so, so a user who stopped relay knows nothing is left running;
 * a failed delete is an error line, not a failed exit (the agent still exits when idle).
 */
async function stopAgent(supervisor: AgentSupervisor, logger: Logger): Promise<void> {
  try {
    const agent = await supervisor.stop();
    if (agent) logger.info(`deleted agent pod ${agent.namespace}/${agent.podName}`);
  } catch (error) {
    logger.error(`could not delete the agent: ${reason(error)}`);
  }
}

/**
 * Keep-alive interval of the client's tunnels. A ping goes out after one to two intervals of
 * silence, so 2 s keeps an idle tunnel alive through anything that cuts connections idle for
 * 5 s or more (haproxy's `timeout tunnel`, cloud load balancers at 60 s, the kubelet's
 * streaming idle timeout at 4 h), and a tunnel whose agent stopped answering is replaced
 * within about 6 s. A ping is a few bytes: the cost is nothing.
 */
export const TUNNEL_KEEPALIVE_MS = 2_000;

/** How long one port-forward upgrade may take. */
const DIAL_TIMEOUT_MS = 15_000;

/** One tunnel to `agent`: its port-forward, then the handshake with its token. */
async function openTunnel(kube: Kube, agent: AgentPod): Promise<Tunnel> {
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
    return await connectTunnel(transport, {
      token: agent.token,
      keepAliveMs: TUNNEL_KEEPALIVE_MS,
    });
  } catch (err) {
    await transport.writable.abort(err).catch(() => {});
    await transport.readable.cancel(err).catch(() => {});
    throw err;
  }
}

/** The hidden `RELAY_AGENT_IDLE_EXIT` knob, checked here so a typo fails before any Job. */
function agentIdleExit(): string | undefined {
  const value = Deno.env.get(AGENT_IDLE_EXIT_ENV);
  if (!value) return undefined;
  parseDuration(value, AGENT_IDLE_EXIT_ENV);
  return value;
}

/** Resolves every binding's target and settles its listeners on the resolved protocol. */
async function resolveRoutes(
  kube: Kube,
  plan: Plan,
  listeners: ListenerSet,
  follow: FollowPods,
): Promise<Route[]> {
  const routes: Route[] = [];
  const bindOptions = {
    addresses: plan.options.addresses,
    udp: { idleTimeoutMs: plan.udpIdleTimeoutMs },
  };
  for (const forward of plan.forwards) {
    const bindings = listeners.bindings.filter((b) => b.forward === forward);
    const resolved = await resolveTarget(
      kube,
      forward.target,
      bindings.map((b) => b.port),
      follow,
    );
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
        (error) =>
          logger.error(
            `accepting on ${listener.hostname}:${listener.port}: ${describeError(error)}`,
          ),
      ));
    }
    for (const listener of binding.udp) {
      serving.push(
        listener.serve(
          async (session) => {
            const source = `${session.remote.hostname}:${session.remote.port}`;
            try {
              const destination = await forward.destination();
              const stream = await pool.open({ protocol: "udp", ...destination });
              logger.debug(`udp session ${source} -> ${forward.label} opened`);
              splice(stream, session);
              // Either end may finish first: the local idle timer, or the agent's (a FIN).
              await Promise.race([stream.closed, session.closed]);
              stream.reset("session ended");
              session.close();
              // Drops are how UDP sessions shed overload; say how many, never hide them.
              const dropped = session.dropped + stream.dropped;
              logger.debug(`udp session ${source} -> ${forward.label} ended; ${dropped} dropped`);
            } catch (error) {
              if (!pool.stopped) logger.error(`${forward.label}/udp: ${reason(error)}`);
              session.close();
            }
          },
          (error) =>
            logger.error(`udp ${listener.hostname}:${listener.port}: ${describeError(error)}`),
        )
          .then(() => {
            // Datagrams lost before relay could read them belong to no session; report them once.
            const lost = listener.kernelDropped;
            if (lost > 0) {
              logger.info(
                `udp ${listener.hostname}:${listener.port}: ${lost} datagrams dropped before relay ` +
                  `read them (receive buffer full)`,
              );
            }
          }),
      );
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
    // A connection that came in as relay stops is simply closed.
    if (!pool.stopped) logger.error(`connection to ${forward.label} failed: ${reason(error)}`);
    closeQuietly(conn);
    return;
  }
  await spliceConn(conn, stream);
}

function reason(error: unknown): string {
  if (error instanceof OpenError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
