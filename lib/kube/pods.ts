/**
 * Choosing pods: label selectors as the API's query string, readiness, and which of several
 * Ready pods a new connection should go to.
 */
import type { V1LabelSelector, V1Pod } from "@kubernetes/client-node";

/** A LabelSelector object as the `labelSelector` query string (`a=b,c in (d,e),!f`). */
export function selectorString(selector: V1LabelSelector | undefined): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(selector?.matchLabels ?? {})) {
    parts.push(`${key}=${value}`);
  }
  for (const expr of selector?.matchExpressions ?? []) {
    const values = (expr.values ?? []).join(",");
    switch (expr.operator) {
      case "In":
        parts.push(`${expr.key} in (${values})`);
        break;
      case "NotIn":
        parts.push(`${expr.key} notin (${values})`);
        break;
      case "Exists":
        parts.push(expr.key);
        break;
      case "DoesNotExist":
        parts.push(`!${expr.key}`);
        break;
      default:
        throw new Error(`unknown label selector operator ${expr.operator}`);
    }
  }
  return parts.join(",");
}

/** Running, Ready, not being deleted, and with an IP: a pod a new connection may go to. */
export function isReadyPod(pod: V1Pod): boolean {
  if (pod.metadata?.deletionTimestamp) return false;
  if (pod.status?.phase !== "Running" || !pod.status.podIP) return false;
  return (pod.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");
}

/**
 * The Ready pod new connections should use: the newest one, so that during a rolling update
 * new connections follow the new ReplicaSet while old connections finish on the old pods.
 * Ties are broken by name so the choice is stable.
 */
export function pickReadyPod(pods: readonly V1Pod[]): V1Pod | undefined {
  const ready = pods.filter(isReadyPod);
  ready.sort((a, b) => {
    const ta = new Date(a.metadata?.creationTimestamp ?? 0).getTime();
    const tb = new Date(b.metadata?.creationTimestamp ?? 0).getTime();
    return tb - ta || (a.metadata?.name ?? "").localeCompare(b.metadata?.name ?? "");
  });
  return ready[0];
}
