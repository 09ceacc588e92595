/**
 * The agent's own pod: a Job (so a failed agent is not restarted and a finished one is
 * garbage-collected) whose one pod runs `relay agent`, hardened as DESIGN.md says, waited for
 * until Running, and deleted on stop.
 */
import type {
  BatchV1Api,
  CoreV1Api,
  CoreV1Event,
  V1Container,
  V1Job,
  V1Pod,
  V1PodTemplateSpec,
  Watch,
} from "@kubernetes/client-node";
import { DEFAULT_AGENT_IMAGE, VERSION } from "../version.ts";
import { apiError, KubeError, statusMessageOf, statusOf, UsageError } from "./errors.ts";
import { runListWatch } from "./list_watch.ts";
import { mergePatch } from "./merge_patch.ts";

/** The port the agent listens on, on its pod's 127.0.0.1. */
export const AGENT_PORT = 4646;
/** The env variable that hands the session token to the agent. */
export const AGENT_TOKEN_ENV = "RELAY_AGENT_TOKEN";
/** The agent's arguments; a --patch may not change them. */
export const AGENT_ARGS: readonly string[] = ["agent", "--port", String(AGENT_PORT)];
/**
 * Hidden knob: how long an agent with no tunnel waits before exiting (`--idle-exit`), as a
 * duration (`20s`). Tests set it short to show a SIGKILLed client leaves nothing behind; users
 * keep the agent's default (a few minutes: long enough to ride out a laptop lid or a network
 * change, short enough that an abandoned agent does not linger).
 */
export const AGENT_IDLE_EXIT_ENV = "RELAY_AGENT_IDLE_EXIT";
/** Labels every agent Job and pod carries. */
export const AGENT_NAME_LABEL = "app.kubernetes.io/name";
export const SESSION_LABEL = "relay.dev/session";

const CONTAINER_NAME = "agent";
/**
 * The agent pod's ephemeral ports (a sysctl every kubelet allows). The agent is a proxy: when
 * a client closes first, the agent's connection to the target closes first too and keeps the
 * port in TIME_WAIT for 60 s. Linux's default range (32768–60999) then holds ~28,000
 * connections a minute to one destination; long before that, from ~9,000, every connect()
 * searched the range for a free port, and on the test cluster the agent spent 90% of a core in
 * the kernel doing so. A kubelet's own port-forward dials the pod's loopback, where the kernel
 * reuses TIME_WAIT ports, so kubectl never meets this.
 */
export const AGENT_LOCAL_PORT_RANGE = "1024 65535";

/** Waiting reasons no amount of waiting fixes: fail at once rather than at the timeout. */
const HOPELESS_REASONS = new Set([
  "InvalidImageName",
  "ErrImageNeverPull",
  "CreateContainerConfigError",
  "CreateContainerError",
]);

/** The API calls the agent lifecycle makes; a loaded Kube has them, tests pass stubs. */
export interface AgentPodApi {
  core: Pick<CoreV1Api, "listNamespacedPod" | "deleteNamespacedPod" | "listNamespacedEvent">;
  batch: Pick<BatchV1Api, "createNamespacedJob" | "deleteNamespacedJob">;
  watch: Pick<Watch, "watch">;
}

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
}

/** A running agent pod. */
export interface AgentPod {
  readonly podName: string;
  readonly namespace: string;
  readonly jobName: string;
  readonly sessionId: string;
  /** The secret every tunnel must present. */
  readonly token: string;
  /** The pod port to port-forward to. */
  readonly port: number;
  /** Delete the Job and the pod; idempotent, does not wait for the pod to be gone. */
  stop(): Promise<void>;
}

/** Random bytes as lowercase hex. */
export function randomHex(bytes: number): string {
  const buffer = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buffer, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The Job for one session, --patch applied. Throws UsageError if the patch would remove the
 * token env or change the agent's arguments.
 */
export function agentJobManifest(opts: {
  namespace: string;
  image: string;
  sessionId: string;
  token: string;
  patch?: Record<string, unknown>;
  idleExit?: string;
  udpIdleTimeout?: string;
}): V1Job {
  const args = agentArgs(opts.idleExit, opts.udpIdleTimeout);
  const labels = { [AGENT_NAME_LABEL]: "relay-agent", [SESSION_LABEL]: opts.sessionId };
  const container: V1Container = {
    name: CONTAINER_NAME,
    image: opts.image,
    args,
    env: [{ name: AGENT_TOKEN_ENV, value: opts.token }],
    // Declared so the kubelet (and the test cluster's shim) know the port-forward target.
    ports: [{ name: "relay", containerPort: AGENT_PORT, protocol: "TCP" }],
    resources: {
      requests: { cpu: "10m", memory: "32Mi" },
      // No CPU limit: throttling the agent throttles every forwarded byte. Memory is bounded,
      // with room for heavy use: 1,000 connections echoing 1 MiB each peaked at 340–390 MB,
      // 2,000 at ~490 MB, where 512Mi would have had the whole forward OOM-killed.
      limits: { memory: "1Gi" },
    },
    securityContext: {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
    },
    volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
  };
  const base = {
    metadata: { namespace: opts.namespace, generateName: "relay-agent-", labels },
    spec: {
      restartPolicy: "Never",
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 5,
      securityContext: {
        runAsNonRoot: true,
        runAsUser: 65532,
        runAsGroup: 65532,
        seccompProfile: { type: "RuntimeDefault" },
        sysctls: [{ name: "net.ipv4.ip_local_port_range", value: AGENT_LOCAL_PORT_RANGE }],
      },
      containers: [container],
      // The root filesystem is read-only; the runtime may still want a scratch directory.
      volumes: [{ name: "tmp", emptyDir: { medium: "Memory", sizeLimit: "16Mi" } }],
    },
  };
  const patched = (opts.patch ? mergePatch(base, opts.patch) : base) as {
    metadata?: Record<string, unknown> & { namespace?: string; generateName?: string };
    spec?: V1PodTemplateSpec["spec"];
  };
  checkPatchKeptAgent(patched.spec, opts.token, args);

  const { namespace, generateName, ...templateMetadata } = patched.metadata ?? {};
  // The session labels find the pod again; a patch may add labels, not take these away.
  templateMetadata.labels = { ...(templateMetadata.labels as object ?? {}), ...labels };
  if (typeof namespace !== "string" || !namespace) {
    throw new UsageError("--patch: metadata.namespace must be a non-empty string");
  }
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: {
      namespace,
      generateName: typeof generateName === "string" && generateName
        ? generateName
        : "relay-agent-",
      labels,
      annotations: { "relay.dev/version": VERSION },
    },
    spec: {
      backoffLimit: 0,
      ttlSecondsAfterFinished: 60,
      template: { metadata: templateMetadata, spec: patched.spec } as V1PodTemplateSpec,
    },
  };
}

/** The agent container's arguments: the fixed ones, plus the optional flags asked for. */
function agentArgs(idleExit: string | undefined, udpIdleTimeout?: string): string[] {
  const args = idleExit ? [...AGENT_ARGS, "--idle-exit", idleExit] : [...AGENT_ARGS];
  if (udpIdleTimeout) args.push("--udp-idle-timeout", udpIdleTimeout);
  return args;
}

function checkPatchKeptAgent(
  spec: V1PodTemplateSpec["spec"],
  token: string,
  args: string[],
): void {
  const agent = spec?.containers?.find((c) => c.name === CONTAINER_NAME);
  const hint = "(a JSON merge patch replaces lists such as spec.containers whole;" +
    " patch other fields, e.g. spec.nodeSelector or spec.tolerations)";
  if (!agent) throw new UsageError(`--patch removes the "${CONTAINER_NAME}" container ${hint}`);
  if (JSON.stringify(agent.args) !== JSON.stringify(args) || agent.command) {
    throw new UsageError(`--patch changes the agent's command or arguments ${hint}`);
  }
  if (!agent.env?.some((e) => e.name === AGENT_TOKEN_ENV && e.value === token)) {
    throw new UsageError(`--patch removes the agent's ${AGENT_TOKEN_ENV} env ${hint}`);
  }
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
    token,
    patch: opts.patch,
    idleExit: opts.idleExit,
    udpIdleTimeout: opts.udpIdleTimeout,
  });
  const namespace = manifest.metadata!.namespace!;
  let job: V1Job;
  try {
    job = await api.batch.createNamespacedJob({ namespace, body: manifest });
  } catch (error) {
    throw createError(error, namespace);
  }
  const jobName = job.metadata!.name!;
  let stopping: Promise<void> | undefined;
  const stopWith = (podName?: string) =>
    stopping ??= deleteAgent(api, namespace, jobName, sessionId, podName);

  try {
    const pod = await waitRunning(api, {
      namespace,
      jobName,
      sessionId,
      timeoutMs: opts.podRunningTimeoutMs,
      signal: opts.signal,
    });
    const podName = pod.metadata!.name!;
    return {
      podName,
      namespace,
      jobName,
      sessionId,
      token,
      port: AGENT_PORT,
      stop: () => stopWith(podName),
    };
  } catch (error) {
    await stopWith();
    throw error;
  }
}

/**
 * Why a started agent can no longer serve tunnels — its pod was deleted, is being deleted, or
 * its process exited — or undefined while the pod is still Running (a failed dial then was the
 * network or the API server, not the agent). Throws when the API server cannot be asked.
 */
export async function agentGoneReason(
  api: { core: Pick<CoreV1Api, "readNamespacedPod"> },
  agent: Pick<AgentPod, "namespace" | "podName">,
): Promise<string | undefined> {
  let pod: V1Pod;
  try {
    pod = await api.core.readNamespacedPod({ name: agent.podName, namespace: agent.namespace });
  } catch (error) {
    if (statusOf(error) === 404) return "was deleted";
    throw error;
  }
  if (pod.metadata?.deletionTimestamp) return "is being deleted";
  const terminated = pod.status?.containerStatuses?.find((c) => c.name === CONTAINER_NAME)?.state
    ?.terminated;
  if (terminated) {
    return `exited (${terminated.reason ?? "code"} ${terminated.exitCode}${
      terminated.message ? `: ${terminated.message}` : ""
    })`;
  }
  const phase = pod.status?.phase;
  if (phase === "Failed" || phase === "Succeeded") {
    return `is ${phase}${podReason(pod)}`;
  }
  return undefined;
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
 * the watch tells the moment it runs (a poll found out up to an interval late, on every
 * start). Rejects at once for a pod that failed or cannot start, and at the deadline with
 * the reason it is still pending.
 */
function waitRunning(api: AgentPodApi, opts: {
  namespace: string;
  jobName: string;
  sessionId: string;
  timeoutMs: number;
  signal?: AbortSignal;
}): Promise<V1Pod> {
  const watching = new AbortController();
  const pods = new Map<string, V1Pod>();
  let settled = false;
  return new Promise<V1Pod>((resolve, reject) => {
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      opts.signal?.removeEventListener("abort", onAbort);
      watching.abort();
      outcome();
    };
    const onAbort = () => settle(() => reject(opts.signal!.reason));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const current = () => {
      const all = [...pods.values()];
      return all.find((p) => !p.metadata?.deletionTimestamp) ?? all[0];
    };
    const check = () => {
      const pod = current();
      if (!pod) return;
      const verdict = runningVerdict(pod);
      if (verdict === "running") settle(() => resolve(pod));
      else if (verdict) settle(() => reject(agentFailed(opts, pod, verdict)));
    };
    const deadline = setTimeout(() => {
      const pod = current();
      pendingReason(api, opts, pod).then((why) => {
        const seconds = Math.round(opts.timeoutMs / 1000);
        settle(() => reject(agentFailed(opts, pod, `was not Running after ${seconds}s: ${why}`)));
      });
    }, opts.timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    void runListWatch<V1Pod>({
      watch: api.watch,
      path: `/api/v1/namespaces/${opts.namespace}/pods`,
      labelSelector: `${SESSION_LABEL}=${opts.sessionId}`,
      list: () =>
        api.core.listNamespacedPod({
          namespace: opts.namespace,
          labelSelector: `${SESSION_LABEL}=${opts.sessionId}`,
        }),
      onReplace: (items) => {
        pods.clear();
        for (const pod of items) pods.set(pod.metadata?.name ?? "", pod);
        check();
      },
      onEvent: (type, pod) => {
        if (type === "DELETED") pods.delete(pod.metadata?.name ?? "");
        else pods.set(pod.metadata?.name ?? "", pod);
        check();
      },
      // A list that fails (no permission, no namespace) will not pass on a retry; a watch
      // that fails is listed again by the loop.
      onError: (error, during) => {
        if (during !== "list") return;
        const failure = apiError(error, {
          verb: "list",
          resource: "pods",
          namespace: opts.namespace,
        });
        settle(() => reject(failure));
      },
      signal: watching.signal,
    });
  });
}

/**
 * "running", why the pod will never run (it failed, exited, or cannot start), or undefined
 * while it may still come up.
 */
function runningVerdict(pod: V1Pod): "running" | string | undefined {
  const phase = pod.status?.phase;
  const state = pod.status?.containerStatuses?.find((c) => c.name === CONTAINER_NAME)?.state;
  if (phase === "Running" && state?.running) return "running";
  if (phase === "Failed" || phase === "Succeeded" || state?.terminated) {
    const t = state?.terminated;
    return t
      ? `exited (${t.reason ?? `code ${t.exitCode}`}${t.message ? `: ${t.message}` : ""})`
      : `is ${phase}${podReason(pod)}`;
  }
  const waiting = state?.waiting;
  if (waiting?.reason && HOPELESS_REASONS.has(waiting.reason)) {
    return `cannot start: ${waiting.reason}${waiting.message ? ` (${waiting.message})` : ""}`;
  }
  return undefined;
}

/** A kubelet's reason for failing a whole pod (e.g. SysctlForbidden), as " (reason: message)". */
function podReason(pod: V1Pod): string {
  const { reason, message } = pod.status ?? {};
  if (!reason && !message) return "";
  return ` (${[reason, message].filter(Boolean).join(": ")})`;
}

function agentFailed(
  opts: { namespace: string; jobName: string },
  pod: V1Pod | undefined,
  what: string,
) {
  return new KubeError(
    `agent pod ${
      pod?.metadata?.name ?? `of job ${opts.jobName}`
    } in namespace ${opts.namespace} ${what}`,
  );
}

/** Why a pod (or a Job without a pod yet) is still pending, in a few words. */
async function pendingReason(
  api: AgentPodApi,
  opts: { namespace: string; jobName: string },
  pod: V1Pod | undefined,
): Promise<string> {
  const reasons: string[] = [];
  const scheduled = pod?.status?.conditions?.find((c) => c.type === "PodScheduled");
  if (scheduled?.status === "False") {
    reasons.push(
      `${scheduled.reason ?? "not scheduled"}${scheduled.message ? `: ${scheduled.message}` : ""}`,
    ); // deno-fmt-ignore
  }
  for (const status of pod?.status?.containerStatuses ?? []) {
    const waiting = status.state?.waiting;
    if (waiting?.reason) {
      reasons.push(`${waiting.reason}${waiting.message ? `: ${waiting.message}` : ""}`);
    }
  }
  // Events tell what the status does not: admission refusals, quota, image pull details.
  const object = pod?.metadata?.name ?? opts.jobName;
  const event = await lastWarning(api, opts.namespace, object);
  if (event && !reasons.some((r) => event.message && r.includes(event.message))) {
    reasons.push(`${event.reason ?? "event"}: ${event.message ?? ""}`.trim());
  }
  if (!pod && reasons.length === 0) reasons.push(`the Job created no pod`);
  return reasons.length ? reasons.join("; ") : `phase ${pod?.status?.phase ?? "unknown"}`;
}

async function lastWarning(
  api: AgentPodApi,
  namespace: string,
  name: string,
): Promise<CoreV1Event | undefined> {
  try {
    const events = (await api.core.listNamespacedEvent({
      namespace,
      fieldSelector: `involvedObject.name=${name}`,
    })).items.filter((e) => e.type === "Warning");
    const time = (e: CoreV1Event) =>
      new Date(e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? 0).getTime();
    events.sort((a, b) => time(b) - time(a));
    return events[0];
  } catch {
    return undefined; // events are a nicety; lacking permission to list them is no failure
  }
}

/** Delete the Job (its pod with it) and, so it goes at once, the pod too; 404 is success. */
async function deleteAgent(
  api: AgentPodApi,
  namespace: string,
  jobName: string,
  sessionId: string,
  podName?: string,
): Promise<void> {
  const ignoreGone = (error: unknown) => {
    if (statusOf(error) !== 404) throw error;
  };
  const deletions: Promise<unknown>[] = [
    api.batch.deleteNamespacedJob({ name: jobName, namespace, propagationPolicy: "Background" })
      .catch(ignoreGone),
  ];
  if (podName) {
    deletions.push(api.core.deleteNamespacedPod({ name: podName, namespace }).catch(ignoreGone));
  }
  const results = await Promise.allSettled(deletions);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) {
    throw apiError((failed as PromiseRejectedResult).reason, {
      verb: "delete",
      resource: "jobs",
      object: `job/${jobName} (session ${sessionId})`,
      namespace,
    });
  }
}
