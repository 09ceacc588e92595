/**
 * A session: one agent, a pool of tunnels to it, and the entry points that use them (the
 * forward direction today; reverse forwards and the proxy beside it), from start to cleanup.
 *
 * Order matters for what a bad run leaves behind: every entry prepares (resolves its targets)
 * before the agent exists, so a typo creates nothing in the cluster; once the agent exists,
 * every exit path deletes it.
 */
import { describeError, UsageError } from "../errors.ts";
import { agentGoneReason, startAgentPod } from "../kube/agent_pod.ts";
import { checkAgentAccess } from "../kube/access.ts";
import { type Kube, loadKube } from "../kube/config.ts";
import { type FollowPods, followPods } from "../kube/ready_pods.ts";
import type { Logger } from "../log.ts";
import { BufferPool } from "../net/buffer_pool.ts";
import type { Plan } from "../plan.ts";
import type { OpenRequest, Tunnel, TunnelStream } from "../tunnel/types.ts";
import { VERSION } from "../version.ts";
import { withDeadline } from "./deadline.ts";
import { TunnelPool } from "./pool.ts";
import { AgentSupervisor } from "./supervisor.ts";
import { DIAL_TIMEOUT_MS, dialTunnel } from "./tunnel_dial.ts";

/** What an entry point may use before the agent exists. */
export interface PrepareContext {
  kube: Kube;
  /** Follows the Ready pods of workload and headless-Service targets until the run ends. */
  follow: FollowPods;
}

/** What an entry point serves with once the tunnels are up. */
export interface ServeContext {
  /** Opens a stream on the least loaded tunnel to the agent. */
  open(request: OpenRequest): Promise<TunnelStream>;
  /** Whether the session is stopping: opens failing now fail because of it. */
  readonly stopped: boolean;
  /** The session's buffer pool: sockets spliced with streams read into it. */
  buffers: BufferPool;
  /** Aborted when the session stops. */
  signal: AbortSignal;
}

/** One entry point of a session: the forward direction, a reverse forward, the proxy. */
export interface SessionEntry {
  /** Resolves targets and settles listeners; may use the cluster, creates nothing in it. */
  prepare(context: PrepareContext): Promise<void>;
  /** Serves until `context.signal` aborts; resolves then. */
  serve(context: ServeContext): Promise<void>;
  /** Told of every tunnel as it comes up, the first and each replacement. */
  onTunnel?(tunnel: Tunnel): void;
}

/** What {@link runSession} is given. */
export interface SessionOptions {
  plan: Plan;
  logger: Logger;
  /** Aborted on SIGINT/SIGTERM: stop serving, clean up the agent, then resolve. */
  signal: AbortSignal;
  entries: SessionEntry[];
}

/**
 * Fails with exit 2 for what the command line can ask and relay cannot do yet, before any
 * listener is bound or the cluster is asked anything.
 */
export function refuseUnsupported(plan: Plan): void {
  if (plan.reverses.length > 0) {
    throw new UsageError(
      `${plan.reverses[0].source}: reverse forwarding (-R) is not supported yet`,
    );
  }
  if (plan.agentTarget) {
    throw new UsageError(
      `--target ${plan.agentTarget.kind}/${plan.agentTarget.name}: placing the agent in a ` +
        `target pod is not supported yet; drop --target to forward from relay's own agent pod`,
    );
  }
}

/**
 * Runs a session until `options.signal` is aborted (then resolves, and relay exits 0) or a
 * failure makes it impossible to go on (then rejects: exit 1, or 2 for a UsageError such as
 * a named port the target lacks).
 */
export async function runSession(options: SessionOptions): Promise<void> {
  const { plan, logger, signal, entries } = options;
  refuseUnsupported(plan);
  const run = plan.options;
  const kube = loadKube({
    kubeconfig: run.kubeconfig,
    context: run.context,
    namespace: run.namespace,
    as: run.as,
    asGroups: run.asGroups,
    requestTimeoutMs: run.requestTimeoutMs,
  });
  const buffers = new BufferPool();
  // Aborted by the user's signal, or by a failure that ends the run (the agent could not be
  // replaced): either way serving stops and the agent is deleted.
  const stop = new AbortController();
  let fatal: unknown;
  const onSignal = () => stop.abort();
  signal.addEventListener("abort", onSignal, { once: true });
  if (signal.aborted) stop.abort();
  let pool: TunnelPool | undefined;
  stop.signal.addEventListener("abort", () => pool?.close(), { once: true });
  const onTunnel = (tunnel: Tunnel) => entries.forEach((entry) => entry.onTunnel?.(tunnel));
  const supervisor = new AgentSupervisor({
    start: () =>
      startAgentPod(kube, {
        namespace: run.agentNamespace ?? kube.namespace,
        image: run.agentImage,
        patch: run.patch,
        podRunningTimeoutMs: run.podRunningTimeoutMs,
        signal: stop.signal,
        idleExit: run.agentIdleExit,
        // The agent ends a silent UDP session when relay does, not at its own default.
        udpIdleTimeout: `${plan.udpIdleTimeoutMs}ms`,
      }),
    connect: (agent) => dialTunnel(kube, agent, { buffers }),
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
    // Both before any agent exists: a withheld permission fails naming it, before a Job
    // relay could not reach or delete. At once; a bad target is told first, as it would be
    // alone.
    const [prepared, access] = await Promise.allSettled([
      prepareAll(entries, { kube, follow }),
      checkAgentAccess(kube, run.agentNamespace ?? kube.namespace),
    ]);
    if (prepared.status === "rejected") throw prepared.reason;
    if (access.status === "rejected") throw access.reason;
    if (stop.signal.aborted) return;
    started = true;
    const agent = await supervisor.start();
    logger.debug(`agent pod ${agent.namespace}/${agent.podName} is running`);
    if (stop.signal.aborted) return;
    pool = new TunnelPool({
      size: run.tunnels,
      connect: () => supervisor.connect(),
      log: (line) => logger.debug(line),
      onTunnel,
    });
    await pool.start(run.podRunningTimeoutMs);
    logger.debug(`connected to relay agent ${pool.peerVersion}`);
    if (pool.peerVersion !== VERSION) {
      logger.info(`warning: the agent runs relay ${pool.peerVersion}, this is relay ${VERSION}`);
    }
    if (stop.signal.aborted) return;
    const streams = pool;
    const context: ServeContext = {
      open: (request) => streams.open(request),
      get stopped() {
        return streams.stopped;
      },
      buffers,
      signal: stop.signal,
    };
    await Promise.all(entries.map((entry) => entry.serve(context)));
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

/** Prepares entries one after another, so the first bad target is the one reported. */
async function prepareAll(entries: SessionEntry[], context: PrepareContext): Promise<void> {
  for (const entry of entries) await entry.prepare(context);
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
    logger.error(`could not delete the agent: ${describeError(error)}`);
  }
}
