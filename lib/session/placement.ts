/**
 * Where a session's agent runs: a Job pod of its own (the default), or an ephemeral
 * container inside a target pod (--target), whose network it then shares.
 */
import type { V1Pod } from "@kubernetes/client-node";
import { AGENT_PERMISSIONS, checkAccess, TARGET_PERMISSIONS } from "../kube/access.ts";
import {
  type AgentPod,
  type AgentProgress,
  type AgentRequested,
  startAgentPod,
} from "../kube/agent_pod.ts";
import type { Kube } from "../kube/config.ts";
import { pickTargetPod } from "../kube/resolve.ts";
import { startTargetedAgent } from "../kube/targeted_agent.ts";
import type { DestinationRule } from "../contract.ts";
import { UsageError } from "../errors.ts";
import { KubeError } from "../kube/errors.ts";
import type { Plan, TargetRef } from "../plan.ts";
import { needsRedirect } from "../reverse/redirect.ts";

/** One way of placing the agent. */
export interface Placement {
  /** The namespace the agent runs in. */
  readonly namespace: string;
  /** The target pod, resolved before anything is created (undefined: relay's own pod). */
  resolve(): Promise<V1Pod | undefined>;
  /** Fails naming every permission the placement needs and the user lacks. */
  checkAccess(): Promise<void>;
  /**
   * Starts an agent (the first, or one replacing an agent that is gone) that may open only
   * `allow`.
   */
  start(
    signal: AbortSignal,
    allow: DestinationRule[] | "any",
    hooks?: AgentStartHooks,
  ): Promise<AgentPod>;
}

/** What the session is told while an agent starts. */
export interface AgentStartHooks {
  progress?: AgentProgress;
  requested?: AgentRequested;
}

/** The placement `plan` asks for. */
export function placementFor(kube: Kube, plan: Plan): Placement {
  const run = plan.options;
  // The agent ends a silent UDP session when relay does, not at its own default.
  const udpIdleTimeout = `${plan.udpIdleTimeoutMs}ms`;
  const target = plan.agentTarget;
  if (!target) {
    const namespace = run.agentNamespace ?? sharedNamespace(plan) ?? kube.namespace;
    return {
      namespace,
      resolve: () => Promise.resolve(undefined),
      checkAccess: () => checkAccess(kube, namespace, AGENT_PERMISSIONS),
      start: (signal, allow, hooks) =>
        startAgentPod(kube, {
          allow,
          progress: hooks?.progress,
          requested: hooks?.requested,
          namespace,
          image: run.agentImage,
          patch: run.patch,
          podRunningTimeoutMs: run.podRunningTimeoutMs,
          signal,
          idleExit: run.agentIdleExit,
          udpIdleTimeout,
        }),
    };
  }
  let picked: V1Pod | undefined;
  const namespace = target.namespace ?? kube.namespace;
  return {
    namespace,
    resolve: async () => picked = await pickTargetPod(kube, target),
    checkAccess: () => checkAccess(kube, namespace, TARGET_PERMISSIONS),
    start: async (signal, allow, hooks) => {
      // The first agent goes where resolve() looked; a replacement (the pod went away in a
      // rollout, say) goes to a Ready pod picked anew.
      const pod = picked ?? await pickReplacement(kube, target);
      picked = undefined;
      hooks?.progress?.("creating", `${pod.metadata?.namespace}/${pod.metadata?.name}`);
      return startTargetedAgent(kube, {
        pod,
        image: run.agentImage,
        timeoutMs: run.podRunningTimeoutMs,
        signal,
        idleExit: run.agentIdleExit,
        udpIdleTimeout,
        redirect: needsRedirect(plan, pod),
        allow,
        requested: hooks?.requested,
      });
    },
  };
}

/**
 * The namespace every forward names, if they all name one: the agent's by default ("the
 * target's"), so that a targets file whose lines all say `-n team` runs it in team.
 */
function sharedNamespace(plan: Plan): string | undefined {
  const named = new Set(
    plan.forwards.map((forward) => forward.target.namespace).filter((ns) => ns !== undefined),
  );
  const [only] = named;
  return named.size === 1 ? only : undefined;
}

/**
 * A pod for an agent replacing one that is gone. The target was there at start, so its absence
 * now is something that happened at run time (exit 1), not a bad argument (exit 2).
 */
async function pickReplacement(kube: Kube, target: TargetRef): Promise<V1Pod> {
  try {
    return await pickTargetPod(kube, target);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    const gone = target.kind === "pod"
      ? " (a pod that is gone is not followed; --target deploy/NAME follows a workload's pods)"
      : "";
    throw new KubeError(
      `--target ${target.kind}/${target.name} went away while relay ran: ${error.message}${gone}`,
      { cause: error },
    );
  }
}
