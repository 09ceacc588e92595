/**
 * Whether a session's agent must be able to redirect ports of its target pod (steal,
 * mirror): asked by the placement before the agent's container is written, since an
 * ephemeral container's capabilities cannot change once it exists.
 */
import type { V1Pod } from "@kubernetes/client-node";
import type { Plan } from "../plan.ts";

/**
 * Whether the agent must be able to redirect the pod's ports (NET_ADMIN): when -R steals or
 * mirrors, or takes by default a port a container of the pod declares (the app serves it).
 */
export function needsRedirect(plan: Plan, pod: V1Pod | undefined): boolean {
  if (plan.reverses.length === 0 || plan.incoming === "listen") return false;
  if (plan.incoming !== "auto") return true;
  return plan.reverses.some((r) => pod !== undefined && declaredPort(pod, r.remotePort));
}

/** The container port `port` of `pod`, as `container NAME`, if a container declares it. */
export function declaredPort(pod: V1Pod, port: number): string | undefined {
  for (const container of pod.spec?.containers ?? []) {
    for (const declared of container.ports ?? []) {
      if (declared.containerPort === port && (declared.protocol ?? "TCP") === "TCP") {
        return `container ${container.name}`;
      }
    }
  }
  return undefined;
}
