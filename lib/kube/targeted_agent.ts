/**
 * The agent inside a target pod (--target): an ephemeral container that shares the pod's
 * network namespace (its IP, ports and resolver) and nothing of the app's filesystem.
 *
 * Its spec holds the session token's digest, never the token (contract.ts tokenDigest), so
 * the container is added in one request and nothing of the session is left in the cluster to
 * delete. Ephemeral containers cannot be removed, so the agent exits when relay ends the
 * session (or when idle) and stays as a Terminated entry.
 */
import type { V1EphemeralContainer, V1Pod } from "@kubernetes/client-node";
import type { CoreApi } from "./resources.ts";
import type { Watcher } from "./api.ts";
import { AGENT_STEAL_GID, type DestinationRule, tokenDigest } from "../contract.ts";
import { DEFAULT_AGENT_IMAGE } from "../version.ts";
import { agentArgs, agentEnv, randomHex } from "./agent_manifest.ts";
import type { AgentPod, AgentRequested } from "./agent_pod.ts";
import { apiError, KubeError, statusMessageOf, statusOf, UsageError } from "./errors.ts";
import { waitForPods } from "./pod_wait.ts";

/** The API calls placing an agent in a target pod makes; a loaded Kube has them. */
export interface TargetedAgentApi {
  core: Pick<CoreApi, "patchNamespacedPodEphemeralcontainers" | "listNamespacedPod">;
  watch: Watcher;
}

/** Where and how to run the agent. */
export interface TargetedAgentOptions {
  /** The target pod, Running (see pickTargetPod). */
  pod: V1Pod;
  /** Default DEFAULT_AGENT_IMAGE. */
  image?: string;
  /** How long the container may take to run. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** The agent's `--idle-exit` (e.g. `20s`). */
  idleExit?: string;
  /** The agent's `--udp-idle-timeout`. */
  udpIdleTimeout?: string;
  /** The agent's port in the pod; default: a random one the pod declares no port on. */
  port?: number;
  /** Called once the request that adds the agent has gone out (see AgentRequested). */
  requested?: AgentRequested;
  /** Whether the agent may redirect the pod's ports (steal, mirror): NET_ADMIN, as root. */
  redirect?: boolean;
  /** What the agent may open: the session's destinations (its `--allow`). */
  allow?: readonly DestinationRule[] | "any";
}

/** Ports the agent picks from: above what apps usually serve, below the ephemeral range. */
const PORT_RANGE = { from: 20_000, to: 32_000 };
/** A new container on another port if the agent could not listen on the one picked. */
const PLACEMENT_TRIES = 3;

/**
 * Adds the agent to `options.pod` as an ephemeral container and waits until it runs. On
 * failure nothing of the session is left but the container's Terminated entry (if it ran).
 */
export async function startTargetedAgent(
  api: TargetedAgentApi,
  options: TargetedAgentOptions,
): Promise<AgentPod> {
  for (let attempt = 1;; attempt++) {
    try {
      return await placeOnce(api, options);
    } catch (error) {
      const portTaken = error instanceof KubeError && /cannot listen/.test(error.message);
      if (!portTaken || options.port !== undefined || attempt >= PLACEMENT_TRIES) throw error;
    }
  }
}

async function placeOnce(api: TargetedAgentApi, options: TargetedAgentOptions): Promise<AgentPod> {
  const { pod } = options;
  const podName = pod.metadata!.name!;
  const namespace = pod.metadata!.namespace!;
  const where = `pod/${podName} in namespace ${namespace}`;
  const sessionId = randomHex(8);
  const token = randomHex(32);
  const container = `relay-agent-${sessionId}`;
  const port = options.port ?? freePortGuess(pod);
  const agent = ephemeralAgent(container, port, await tokenDigest(token), options);
  await addContainer(api, pod, agent, where, options.requested);
  await waitRunning(api, { namespace, podName, container, where, ...options });
  return {
    podName,
    namespace,
    sessionId,
    token,
    port,
    container,
    ephemeral: true,
    stop: () => Promise.resolve(),
  };
}

/** The agent's ephemeral container, hardened as its own pod would be. */
function ephemeralAgent(
  name: string,
  port: number,
  tokenDigest: string,
  options: TargetedAgentOptions,
): V1EphemeralContainer {
  return {
    name,
    image: options.image ?? DEFAULT_AGENT_IMAGE,
    args: agentArgs({ ...options, port }),
    env: agentEnv(tokenDigest),
    terminationMessagePolicy: "FallbackToLogsOnError",
    securityContext: options.redirect ? redirectingContext() : {
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
  };
}

/**
 * The agent that steals or mirrors: it changes the pod's netfilter rules, which takes
 * NET_ADMIN, and Kubernetes gives added capabilities to root only. Its group
 * (AGENT_STEAL_GID) is how its rules tell its own connections to the app apart; iptables
 * keeps its lock under /run, so the root filesystem stays writable.
 */
function redirectingContext(): V1EphemeralContainer["securityContext"] {
  return {
    runAsUser: 0,
    runAsGroup: AGENT_STEAL_GID,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ["ALL"], add: ["NET_ADMIN"] },
    seccompProfile: { type: "RuntimeDefault" },
  };
}

/** A port in PORT_RANGE that no container of `pod` declares. */
function freePortGuess(pod: V1Pod): number {
  const declared = new Set(
    (pod.spec?.containers ?? []).flatMap((c) => (c.ports ?? []).map((p) => p.containerPort)),
  );
  for (;;) {
    const span = PORT_RANGE.to - PORT_RANGE.from;
    const port = PORT_RANGE.from + (crypto.getRandomValues(new Uint32Array(1))[0] % span);
    if (!declared.has(port)) return port;
  }
}

/** Appends `container` to the pod's ephemeral containers (pods/ephemeralcontainers). */
async function addContainer(
  api: TargetedAgentApi,
  pod: V1Pod,
  container: V1EphemeralContainer,
  where: string,
  requested?: AgentRequested,
): Promise<void> {
  const existing = pod.spec?.ephemeralContainers ?? [];
  const body = existing.length > 0
    ? [{ op: "add", path: "/spec/ephemeralContainers/-", value: container }]
    : [{ op: "add", path: "/spec/ephemeralContainers", value: [container] }];
  try {
    const added = api.core.patchNamespacedPodEphemeralcontainers({
      name: pod.metadata!.name!,
      namespace: pod.metadata!.namespace!,
      body,
    });
    requested?.();
    await added;
  } catch (error) {
    const status = statusOf(error);
    if (status === 404) throw new UsageError(`${where} not found`, { cause: error });
    const message = statusMessageOf(error) ?? "";
    // Admission (Pod Security, a policy engine) refusing the container is not RBAC.
    if (status === 403 && /PodSecurity|admission|denied the request/i.test(message)) {
      const why = container.securityContext?.capabilities?.add?.includes("NET_ADMIN")
        ? "; stealing and mirroring need NET_ADMIN for the agent (README: Steal and mirror)"
        : "";
      throw new KubeError(`cannot add the agent to ${where}: ${message}${why}`, { cause: error });
    }
    if (status === 422 || status === 400) {
      throw new KubeError(
        `cannot add the agent to ${where}: ${statusMessageOf(error) ?? status}`,
        { cause: error },
      );
    }
    throw apiError(error, {
      verb: "patch",
      resource: "pods/ephemeralcontainers",
      object: `pod/${pod.metadata!.name}`,
      namespace: pod.metadata!.namespace!,
    });
  }
}

/** Waits for the agent's container to run; rejects if it exits, cannot start, or times out. */
function waitRunning(api: TargetedAgentApi, opts: {
  namespace: string;
  podName: string;
  container: string;
  where: string;
  timeoutMs: number;
  signal?: AbortSignal;
}): Promise<void> {
  let last = "not started yet";
  const fail = (what: string) =>
    new KubeError(`the agent in ${opts.where} ${what} (container ${opts.container})`);
  return waitForPods<true>(api, {
    namespace: opts.namespace,
    fieldSelector: `metadata.name=${opts.podName}`,
    timeoutMs: opts.timeoutMs,
    signal: opts.signal,
    check: ([pod]) => {
      if (!pod || pod.metadata?.deletionTimestamp) return fail("cannot start: the pod is gone");
      const state = pod.status?.ephemeralContainerStatuses?.find((c) => c.name === opts.container)
        ?.state;
      if (state?.running) return true;
      if (state?.terminated) {
        const t = state.terminated;
        const why = t.message?.trim().split("\n").pop() ?? t.reason ?? `code ${t.exitCode}`;
        return fail(`exited: ${why}`);
      }
      const waiting = state?.waiting;
      if (!waiting?.reason) return undefined;
      last = `${waiting.reason}${waiting.message ? `: ${waiting.message}` : ""}`;
      const hopeless = /InvalidImageName|ErrImageNeverPull|CreateContainerError/;
      return hopeless.test(waiting.reason) ? fail(`cannot start: ${last}`) : undefined;
    },
    timedOut: () => fail(`was not running after ${Math.round(opts.timeoutMs / 1000)}s: ${last}`),
  }).then(() => {});
}
