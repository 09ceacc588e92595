/**
 * A session: one agent, a pool of tunnels to it, and the entry points that use them (the
 * forward direction today; reverse forwards and the proxy beside it), from start to cleanup.
 *
 * Order matters for what a bad run leaves behind: every entry prepares (resolves its targets)
 * before the agent exists, so a typo creates nothing in the cluster; once the agent exists,
 * every exit path deletes it.
 */
import type { V1Pod } from "@kubernetes/client-node";
import { type DestinationRule, formatDestinationRule } from "../contract.ts";
import { describeError, UsageError } from "../errors.ts";
import { agentGoneReason, type AgentPod } from "../kube/agent_pod.ts";
import { type Kube, loadKube } from "../kube/config.ts";
import { type FollowPods, followPods } from "../kube/ready_pods.ts";
import type { Logger } from "../log.ts";
import { BufferPool } from "../net/buffer_pool.ts";
import { trimWhenQuiet } from "../net/memory_return.ts";
import type { Plan } from "../plan.ts";
import { SessionStatus } from "../status/session_status.ts";
import type {
  OpenHandler,
  OpenOptions,
  OpenRequest,
  Tunnel,
  TunnelStream,
} from "../tunnel/types.ts";
import { VERSION } from "../version.ts";
import { withDeadline } from "./deadline.ts";
import { placementFor } from "./placement.ts";
import { TunnelPool } from "./pool.ts";
import { AgentSupervisor } from "./supervisor.ts";
import { DIAL_TIMEOUT_MS, dialTunnel } from "./tunnel_dial.ts";

/** What an entry point may use before the agent exists. */
export interface PrepareContext {
  kube: Kube;
  /** The pod the agent will join (--target), resolved first; undefined for its own pod. */
  target?: V1Pod;
  /** Follows the Ready pods of workload and headless-Service targets until the run ends. */
  follow: FollowPods;
  /** The namespace the agent runs in, whose names its resolver completes. */
  agentNamespace: string;
}

/** What an entry point serves with once the tunnels are up. */
export interface ServeContext {
  /** Opens a stream on the least loaded tunnel to the agent. */
  open(request: OpenRequest, options?: OpenOptions): Promise<TunnelStream>;
  /** Whether the session is stopping: opens failing now fail because of it. */
  readonly stopped: boolean;
  /** The session's buffer pool: sockets spliced with streams read into it. */
  buffers: BufferPool;
  /** Where connections leave from when not relay's own agent pod, now: `pod/web-7f9c`. */
  readonly via?: string;
  /** Aborted when the session stops. */
  signal: AbortSignal;
  /** Routes, their counters and the session's events: entries count what they carry here. */
  status: SessionStatus;
}

/** One entry point of a session: the forward direction, a reverse forward, the proxy. */
export interface SessionEntry {
  /** Resolves targets and settles listeners; may use the cluster, creates nothing in it. */
  prepare(context: PrepareContext): Promise<void>;
  /** Serves until `context.signal` aborts; resolves then. */
  serve(context: ServeContext): Promise<void>;
  /** Told of every tunnel as it comes up, the first and each replacement. */
  onTunnel?(tunnel: Tunnel): void;
  /** Answers the agent's opens (reverse forwards); at most one entry has it. */
  onOpen?: OpenHandler;
  /** After prepare: what the agent must be allowed to open for this entry, or `any`. */
  destinations?(): DestinationRule[] | "any";
}

/** What {@link runSession} is given. */
export interface SessionOptions {
  plan: Plan;
  logger: Logger;
  /** Aborted on SIGINT/SIGTERM: stop serving, clean up the agent, then resolve. */
  signal: AbortSignal;
  entries: SessionEntry[];
  /** Where the run's state and events go; a fresh one if not given. */
  status?: SessionStatus;
}

/**
 * Fails with exit 2 for what the command line can ask and relay cannot do yet, or what does
 * not go together, before any listener is bound or the cluster is asked anything.
 */
export function refuseUnsupported(plan: Plan): void {
  const udp = plan.reverses.find((r) => r.protocol === "udp");
  if (udp) {
    throw new UsageError(`${udp.source}: reverse forwarding of UDP is not supported yet`);
  }
  if (!plan.agentTarget) return;
  const target = `--target ${plan.agentTarget.kind}/${plan.agentTarget.name}`;
  if (plan.options.patch) {
    throw new UsageError(
      `--patch changes relay's own agent pod; with ${target} the agent joins that pod instead`,
    );
  }
  if (plan.options.agentNamespace) {
    throw new UsageError(
      `--agent-namespace ${plan.options.agentNamespace}: with ${target} the agent runs in ` +
        `the target pod's namespace`,
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
  const status = options.status ?? new SessionStatus();
  refuseUnsupported(plan);
  const run = plan.options;
  const kube = loadKube({
    kubeconfig: run.kubeconfig,
    context: run.context,
    overrides: run.kubeOverrides,
    namespace: run.namespace,
    as: run.as,
    asGroups: run.asGroups,
    asUid: run.asUid,
    requestTimeoutMs: run.requestTimeoutMs,
  });
  const placement = placementFor(kube, plan);
  const buffers = new BufferPool();
  // Aborted by the user's signal, or by a failure that ends the run (the agent could not be
  // replaced): either way serving stops and the agent is deleted.
  const stop = new AbortController();
  let fatal: unknown;
  const onSignal = () => stop.abort();
  signal.addEventListener("abort", onSignal, { once: true });
  if (signal.aborted) stop.abort();
  let pool: TunnelPool | undefined;
  let poolClosed: Promise<void> | undefined;
  // An agent in someone else's pod is told the session is over, so it exits at once.
  const closePool = () =>
    poolClosed ??= (async () => {
      // Tunnels closing from here on close because the run ends (a failure too), not lost.
      status.stopping = true;
      if (supervisor.current?.ephemeral) await pool?.endSession("relay stopped");
      pool?.close();
    })();
  stop.signal.addEventListener("abort", () => {
    status.stopping = true;
    void closePool();
  }, { once: true });
  const onTunnel = (tunnel: Tunnel) => {
    // The agent is reachable: the pool's other tunnels may use the spare there is, if any.
    kube.spares.stopRefilling();
    status.tunnelUp();
    tunnel.closed.finally(() => status.tunnelDown(tunnel.closeReason ?? "closed"));
    entries.forEach((entry) => entry.onTunnel?.(tunnel));
  };
  let agentsStarted = 0;
  const startAgent = async () => {
    const agent = await placement.start(stop.signal, allow, {
      progress: (phase, pod) => status.agentPhase(phase, pod),
      // Port-forwards to the agent then need only their upgrade once its pod runs: two, as the
      // first often comes a moment before the agent listens (spare_connection.ts). Dialed once
      // the agent's creation is on its way, as their TLS work would otherwise delay it.
      requested: () => kube.spares.refill(2),
    });
    status.agentPhase(
      agentsStarted++ === 0 ? "started" : "replaced",
      `${agent.namespace}/${agent.podName}`,
    );
    return agent;
  };
  const onOpen = entries.find((entry) => entry.onOpen)?.onOpen;
  const supervisor = new AgentSupervisor({
    start: startAgent,
    connect: (agent) => dialTunnel(kube, agent, { buffers, onOpen }),
    goneReason: (agent) =>
      withDeadline(() => agentGoneReason(kube, agent), DIAL_TIMEOUT_MS, "reading the agent pod"),
    log: (line) => logger.info(line),
    onFailure: (error) => {
      fatal ??= error;
      stop.abort();
    },
  });
  let started = false;
  // The agent's destination policy: what the entries opens, known once they have prepared.
  let allow: DestinationRule[] | "any" = [];
  try {
    // Workload and headless-Service targets watch their pods until relay stops (stop.signal
    // ends every watch before kube.close() below).
    const follow = followPods({
      watch: kube.watch,
      core: kube.core,
      signal: stop.signal,
      onError: (line) => logger.debug(line),
    });
    // All before any agent exists: a bad target or a withheld permission fails naming it,
    // before anything relay could not reach or delete. The target pod first, as entries
    // check ports against it; a bad target is told first, as it would be alone.
    // Until the agent is asked for, nothing exists to clean up: a stop ends the run at once,
    // even while an API server that accepts but never answers holds a call.
    const stopped = new Promise<"stopped">((resolve) => {
      if (stop.signal.aborted) resolve("stopped");
      stop.signal.addEventListener("abort", () => resolve("stopped"), { once: true });
    });
    const target = await Promise.race([placement.resolve(), stopped]);
    if (target === "stopped") return;
    const settled = await Promise.race([
      Promise.allSettled([
        prepareAll(entries, { kube, follow, target, agentNamespace: placement.namespace }),
        placement.checkAccess(),
      ]),
      stopped,
    ]);
    if (settled === "stopped") return;
    const [prepared, access] = settled;
    if (prepared.status === "rejected") throw prepared.reason;
    if (access.status === "rejected") throw access.reason;
    allow = destinationsOf(entries);
    if (stop.signal.aborted) return;
    started = true;
    const agent = await supervisor.start();
    logger.debug(`agent ${describeAgent(agent)} is running`);
    if (stop.signal.aborted) return;
    pool = new TunnelPool({
      size: run.tunnels,
      connect: () => supervisor.connect(),
      log: (line) => logger.debug(line),
      onTunnel,
      // Streams go out before the agent answers a tunnel's HELLO: its refusal ends the run.
      onRefused: (error) => {
        if (stop.signal.aborted) return;
        fatal ??= error;
        stop.abort();
      },
    });
    await pool.start(run.podRunningTimeoutMs);
    pool.agreed.then((version) => {
      logger.debug(`connected to relay agent ${version}`);
      if (version !== VERSION) {
        logger.info(`warning: the agent runs relay ${version}, this is relay ${VERSION}`);
      }
    });
    if (stop.signal.aborted) return;
    const streams = pool;
    const context: ServeContext = {
      open: (request, options) => streams.open(request, options),
      get stopped() {
        return streams.stopped;
      },
      buffers,
      signal: stop.signal,
      // The agent's pod may change (a rollout of a --target workload).
      get via() {
        const current = supervisor.current ?? agent;
        return current.ephemeral ? `pod/${current.podName}` : undefined;
      },
      status,
    };
    // What a burst of connections left in the heap goes back to the system once they are done,
    // and what starting up left (its API calls, TLS, the CLI's parsing) once the tunnel is up.
    trimWhenQuiet(stop.signal, { release: () => buffers.dropSpares(), startsBusy: true });
    await Promise.all(entries.map((entry) => entry.serve(context)));
  } catch (error) {
    // Whatever was in progress when the user stopped relay failed because of the stop.
    if (!stop.signal.aborted) throw error;
  } finally {
    signal.removeEventListener("abort", onSignal);
    await closePool();
    if (started) await stopAgent(supervisor, logger, status);
    // Ends the pod watches on every exit path, an error before serving included.
    stop.abort();
    kube.close();
  }
  if (fatal) throw fatal;
}

/** Every entry's destinations, once each, or `any` if one entry needs anything. */
function destinationsOf(entries: SessionEntry[]): DestinationRule[] | "any" {
  const rules = new Map<string, DestinationRule>();
  for (const entry of entries) {
    const wanted = entry.destinations?.() ?? [];
    if (wanted === "any") return "any";
    for (const rule of wanted) rules.set(formatDestinationRule(rule), rule);
  }
  return [...rules.values()];
}

/** Prepares entries one after another, so the first bad target is the one reported. */
async function prepareAll(entries: SessionEntry[], context: PrepareContext): Promise<void> {
  for (const entry of entries) await entry.prepare(context);
}

/** `pod ns/relay-agent-x` or `in pod ns/web-7f9c`, for log lines. */
function describeAgent(agent: AgentPod): string {
  return agent.ephemeral
    ? `in pod ${agent.namespace}/${agent.podName} (container ${agent.container})`
    : `pod ${agent.namespace}/${agent.podName}`;
}

/**
 * Deletes the agent (or, in a target pod, what the session made for it) and says so, so a
 * user who stopped relay knows nothing is left running; a failed delete is an error line, not
 * a failed exit (the agent still exits when idle).
 */
async function stopAgent(
  supervisor: AgentSupervisor,
  logger: Logger,
  status: SessionStatus,
): Promise<void> {
  try {
    const agent = await supervisor.stop();
    if (!agent) return;
    status.agentPhase("deleted", `${agent.namespace}/${agent.podName}`);
    logger.info(
      agent.ephemeral
        ? `stopped the agent in pod ${agent.namespace}/${agent.podName} (its ephemeral ` +
          `container ${agent.container} stays listed as Terminated)`
        : `deleted agent pod ${agent.namespace}/${agent.podName}`,
    );
  } catch (error) {
    logger.error(`could not delete the agent: ${describeError(error)}`);
  }
}
