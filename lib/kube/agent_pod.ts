/**
 * The agent's own pod: a Job (so a failed agent is not restarted and a finished one is
 * garbage-collected) whose one pod runs `relay agent`, waited for until Running, and deleted
 * on stop. Its manifest is in agent_manifest.ts, the reading of its state in agent_status.ts.
 */
import type { V1Job, V1Pod } from "@kubernetes/client-node";
import type { BatchApi, CoreApi } from "./resources.ts";
import type { Watcher } from "./api.ts";
import { type DestinationRule, tokenDigest } from "../contract.ts";
import { DEFAULT_AGENT_IMAGE } from "../version.ts";
import {
  AGENT_PORT,
  agentJobManifest,
  CONTAINER_NAME,
  randomHex,
  SESSION_LABEL,
} from "./agent_manifest.ts";
import { agentFailed, pendingReason, runningVerdict } from "./agent_status.ts";
import { apiError, statusMessageOf, statusOf, UsageError } from "./errors.ts";
import { waitForPods } from "./pod_wait.ts";

export { AGENT_PORT, agentJobManifest };
export { agentGoneReason } from "./agent_status.ts";

/** The API calls the agent lifecycle makes; a loaded Kube has them, tests pass stubs. */
export interface AgentPodApi {
  core: Pick<CoreApi, "listNamespacedPod" | "listNamespacedEvent">;
  batch: Pick<BatchApi, "createNamespacedJob" | "deleteNamespacedJob">;
  watch: Watcher;
}

/** Told of the agent's steps before it runs: its Job is being created, its pod scheduled, its
 * container being created (the image pulled). `pod` is `namespace/name` once known. */
export type AgentProgress = (phase: "creating" | "scheduled" | "pulling", pod?: string) => void;

/**
 * Called right after the request that creates the agent is made, before its answer: work the
 * running agent will need (dialing connections for its port-forwards) then goes on while the
 * pod starts, rather than holding up that request.
 */
export type AgentRequested = () => void;

/** What the agent pod should look like and how long to wait for it. */
export interface AgentPodOptions {
  /** Where the Job goes, unless the patch's metadata.namespace says otherwise. */
  namespace: string;
  /** Default DEFAULT_AGENT_IMAGE. */
  image?: string;
  /** `--patch`: a JSON merge patch for the pod template (metadata + spec). */
  patch?: Record<string, unknown>;
  /** How long the pod may take to be Running. */
  podRunningTimeoutMs: number;
  /** Default: random. */
  sessionId?: string;
  /** Default: random, 32 bytes as hex. */
  token?: string;
  /** Aborting stops the wait: the Job is deleted and the call rejects with the reason. */
  signal?: AbortSignal;
  /** The agent's `--idle-exit` (e.g. `20s`); default: the agent's own default. */
  idleExit?: string;
  /** The agent's `--udp-idle-timeout` (e.g. `60s`): relay's own, so both ends agree. */
  udpIdleTimeout?: string;
  /** What the agent may open: the session's destinations (its `--allow`). */
  allow?: readonly DestinationRule[] | "any";
  /** Told of each step while the agent starts. */
  progress?: AgentProgress;
  /** Called once the request that creates the agent has gone out (see AgentRequested). */
  requested?: AgentRequested;
}

/** A running agent pod. */
export interface AgentPod {
  readonly podName: string;
  readonly namespace: string;
  readonly sessionId: string;
  /** The session token every tunnel must present (the agent holds only its digest). */
  readonly token: string;
  /** The pod port to port-forward to. */
  readonly port: number;
  /** The agent's container: `agent` in a pod of its own, or an ephemeral one in a target. */
  readonly container: string;
  /** An ephemeral container in a target pod (--target), not a Job of its own. */
  readonly ephemeral: boolean;
  /**
   * Removes what the session made for the agent, its Job and pod; idempotent, does not wait
   * for a pod to be gone. An ephemeral container cannot be removed: that agent exits when told
   * to by the session (Tunnel.endSession) or when idle.
   */
  stop(): Promise<void>;
}

/**
 * Create the agent Job and wait until its pod is Running. On failure or timeout the Job is
 * deleted and the error names the reason (unschedulable, image pull, …).
 */
export async function startAgentPod(api: AgentPodApi, opts: AgentPodOptions): Promise<AgentPod> {
  const sessionId = opts.sessionId ?? randomHex(8);
  const token = opts.token ?? randomHex(32);
  const manifest = agentJobManifest({
    namespace: opts.namespace,
    image: opts.image ?? DEFAULT_AGENT_IMAGE,
    sessionId,
    tokenDigest: await tokenDigest(token),
    patch: opts.patch,
    idleExit: opts.idleExit,
    udpIdleTimeout: opts.udpIdleTimeout,
    allow: opts.allow,
  });
  const namespace = manifest.metadata!.namespace!;
  // The session's pods are listed and watched while the Job is created, so that the pod's
  // Running is one watch event away rather than two round trips after it.
  const waiting = new AbortController();
  const giveUp = () => waiting.abort(opts.signal!.reason);
  opts.signal?.addEventListener("abort", giveUp, { once: true });
  if (opts.signal?.aborted) giveUp();
  const about = { namespace, jobName: `relay-agent (session ${sessionId})` };
  opts.progress?.("creating");
  const running = waitRunning(api, {
    about,
    image: opts.image ?? DEFAULT_AGENT_IMAGE,
    progress: opts.progress,
    sessionId,
    timeoutMs: opts.podRunningTimeoutMs,
    signal: waiting.signal,
  });
  running.catch(() => {}); // awaited below once the Job exists; else its failure is moot
  let job: V1Job;
  try {
    const created = api.batch.createNamespacedJob({ namespace, body: manifest });
    opts.requested?.();
    job = await created;
  } catch (error) {
    waiting.abort();
    opts.signal?.removeEventListener("abort", giveUp);
    throw createError(error, namespace);
  }
  const jobName = job.metadata!.name!;
  about.jobName = jobName;
  let stopping: Promise<void> | undefined;
  const stop = () => stopping ??= deleteAgent(api, namespace, jobName, sessionId);

  try {
    const pod = await running;
    const podName = pod.metadata!.name!;
    return {
      podName,
      namespace,
      sessionId,
      token,
      port: AGENT_PORT,
      container: CONTAINER_NAME,
      ephemeral: false,
      stop,
    };
  } catch (error) {
    waiting.abort();
    await stop();
    throw error;
  } finally {
    opts.signal?.removeEventListener("abort", giveUp);
  }
}

function createError(error: unknown, namespace: string): Error {
  const status = statusOf(error);
  if (status === 404) return new UsageError(`namespace ${namespace} not found`, { cause: error });
  if (status === 422 || status === 400) {
    return new UsageError(
      `the agent Job is invalid (check --patch): ${statusMessageOf(error) ?? status}`,
      { cause: error },
    );
  }
  return apiError(error, { verb: "create", resource: "jobs", namespace });
}

/**
 * Resolves with the agent's pod once it is Running, from a list+watch of the session's pods:
 * the watch tells the moment it runs, where a poll would learn it up to an interval late.
 * Rejects at once for a pod that failed or cannot start, and at the deadline with the reason
 * it is still pending.
 */
function waitRunning(api: AgentPodApi, opts: {
  /** Names the Job in messages; its name is filled in once the Job is created. */
  about: { namespace: string; jobName: string };
  image: string;
  progress?: AgentProgress;
  sessionId: string;
  timeoutMs: number;
  signal?: AbortSignal;
}): Promise<V1Pod> {
  const { about } = opts;
  // A pod being deleted (an earlier attempt) counts only when there is no other.
  const current = (pods: V1Pod[]) => pods.find((p) => !p.metadata?.deletionTimestamp) ?? pods[0];
  let told = "";
  const tell = (phase: "scheduled" | "pulling", pod: V1Pod) => {
    if (told === phase || (told === "pulling" && phase === "scheduled")) return;
    told = phase;
    opts.progress?.(phase, `${about.namespace}/${pod.metadata?.name}`);
  };
  return waitForPods<V1Pod>(api, {
    namespace: about.namespace,
    labelSelector: `${SESSION_LABEL}=${opts.sessionId}`,
    timeoutMs: opts.timeoutMs,
    signal: opts.signal,
    check: (pods) => {
      const pod = current(pods);
      if (!pod) return undefined;
      const verdict = runningVerdict(pod);
      if (verdict === "running") return pod;
      if (verdict) return agentFailed(about, pod, verdict + imageHint(opts.image, verdict));
      if (pod.spec?.nodeName) tell("scheduled", pod);
      const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting?.reason;
      if (waiting === "ContainerCreating") tell("pulling", pod);
      return undefined;
    },
    timedOut: async (pods) => {
      const pod = current(pods);
      const why = await pendingReason(api, about, pod);
      const seconds = Math.round(opts.timeoutMs / 1000);
      return agentFailed(about, pod, `was not Running after ${seconds}s: ${why}`);
    },
  });
}

/**
 * For an agent that exited or could not start on an image the user chose: the likeliest
 * cause is an image that is not relay's agent (krelay's server image takes other arguments).
 */
function imageHint(image: string, verdict: string): string {
  if (image === DEFAULT_AGENT_IMAGE || !/^(exited|cannot start)/.test(verdict)) return "";
  return `; is ${image} relay's agent image? --agent-image (krelay's --server.image) must ` +
    `run \`relay agent\`, as ${DEFAULT_AGENT_IMAGE} does; krelay's server image cannot`;
}

/**
 * Deletes the Job; with background propagation the garbage collector deletes its pod at once, so relay needs no permission on pods it did not create itself.
 * 404 is success.
 */
async function deleteAgent(
  api: AgentPodApi,
  namespace: string,
  jobName: string,
  sessionId: string,
): Promise<void> {
  try {
    await api.batch.deleteNamespacedJob({
      name: jobName,
      namespace,
      propagationPolicy: "Background",
    });
  } catch (error) {
    if (statusOf(error) === 404) return;
    throw apiError(error, {
      verb: "delete",
      resource: "jobs",
      object: `job/${jobName} (session ${sessionId})`,
      namespace,
    });
  }
}
