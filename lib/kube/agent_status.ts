/** Reading an agent pod's state: running, never going to run and why, or gone. */
import type { CoreV1Event, V1Pod } from "@kubernetes/client-node";
import type { CoreApi } from "./resources.ts";
import { CONTAINER_NAME } from "./agent_manifest.ts";
import { KubeError, statusOf } from "./errors.ts";

/** Waiting reasons no amount of waiting fixes: fail at once rather than at the timeout. */
const HOPELESS_REASONS = new Set([
  "InvalidImageName",
  "ErrImageNeverPull",
  "CreateContainerConfigError",
  "CreateContainerError",
]);

/**
 * Why a started agent can no longer serve tunnels — its pod was deleted, is being deleted, or
 * its process exited — or undefined while the pod is still Running (a failed dial then was the
 * network or the API server, not the agent). Throws when the API server cannot be asked.
 */
export async function agentGoneReason(
  api: { core: Pick<CoreApi, "readNamespacedPod"> },
  agent: { namespace: string; podName: string; container: string; ephemeral: boolean },
): Promise<string | undefined> {
  let pod: V1Pod;
  try {
    pod = await api.core.readNamespacedPod({ name: agent.podName, namespace: agent.namespace });
  } catch (error) {
    if (statusOf(error) === 404) return "was deleted";
    throw error;
  }
  if (pod.metadata?.deletionTimestamp) return "is being deleted";
  const statuses = agent.ephemeral
    ? pod.status?.ephemeralContainerStatuses
    : pod.status?.containerStatuses;
  const terminated = statuses?.find((c) => c.name === agent.container)?.state?.terminated;
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

/**
 * "running", why the pod will never run (it failed, exited, or cannot start), or undefined
 * while it may still come up.
 */
export function runningVerdict(pod: V1Pod): "running" | string | undefined {
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

export function agentFailed(
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
export async function pendingReason(
  api: { core: Pick<CoreApi, "listNamespacedEvent"> },
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
  api: { core: Pick<CoreApi, "listNamespacedEvent"> },
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
