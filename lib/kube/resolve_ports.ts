/**
 * The ports of a target as declared in the cluster: which Service or container port a written
 * port names, and over which protocol.
 */
import type {
  V1ContainerPort,
  V1Pod,
  V1PodSpec,
  V1Service,
  V1ServicePort,
} from "@kubernetes/client-node";
import type { Protocol } from "../net/types.ts";
import type { PortSpec } from "../plan.ts";
import { KubeError, UsageError } from "./errors.ts";

/** The Service ports matching the spec's number or name (and protocol, when given). */
export function pickServicePort(
  service: V1Service,
  spec: PortSpec,
  object: string,
): V1ServicePort | undefined {
  const ports = service.spec?.ports ?? [];
  const matching = ports.filter((p) =>
    typeof spec.remote === "number" ? p.port === spec.remote : p.name === spec.remote
  );
  if (matching.length === 0) {
    if (typeof spec.remote === "string") {
      throw new UsageError(
        `${object} has no port named "${spec.remote}" (it has ${describePorts(service)})`,
      );
    }
    return undefined;
  }
  return choose(matching, spec, object, (p) => p.protocol);
}

/** The container port of `podSpec` matching the spec; a number may be undeclared. */
export function pickContainerPort(
  podSpec: V1PodSpec | undefined,
  spec: PortSpec,
  object: string,
): V1ContainerPort | undefined {
  const ports = (podSpec?.containers ?? []).flatMap((c) => c.ports ?? []);
  const matching = ports.filter((p) =>
    typeof spec.remote === "number" ? p.containerPort === spec.remote : p.name === spec.remote
  );
  if (matching.length === 0) {
    if (typeof spec.remote === "string") {
      const names = ports.filter((p) => p.name).map((p) => `${p.name}=${p.containerPort}`);
      throw new UsageError(
        `${object} has no container port named "${spec.remote}"` +
          (names.length ? ` (it has ${names.join(", ")})` : " (it names no ports)"),
      );
    }
    return undefined;
  }
  return choose(matching, spec, object, (p) => p.protocol);
}

/**
 * Pick among ports that share a number or name: by the protocol written, else the only one
 * there is; TCP and UDP both present without `@proto` is ambiguous.
 */
function choose<T>(
  matching: T[],
  spec: PortSpec,
  object: string,
  protocolOfPort: (port: T) => string | undefined,
): T {
  const proto = (p: T) => (protocolOfPort(p) ?? "TCP").toLowerCase();
  if (spec.protocol) {
    const found = matching.find((p) => proto(p) === spec.protocol);
    if (!found) {
      throw new UsageError(
        `${object} port ${spec.remote} has no ${spec.protocol.toUpperCase()} (it is ${
          [...new Set(matching.map(proto))].map((p) => p.toUpperCase()).join(", ")
        })`,
      );
    }
    return found;
  }
  const protocols = [...new Set(matching.map(proto))];
  if (protocols.length > 1) {
    // kubectl takes TCP here without a word; relay asks, since a DNS user means UDP.
    throw new UsageError(
      `${object} port ${spec.remote} is ambiguous, it is declared for ${
        protocols.map((p) => p.toUpperCase()).join(" and ")
      }: choose ${protocols.map((p) => `${spec.remote}@${p}`).join(" or ")}`,
    );
  }
  return matching[0];
}

/** A Kubernetes protocol name as relay's; SCTP cannot be forwarded. */
export function protocolOf(protocol: string | undefined, object: string, spec: PortSpec): Protocol {
  const p = (protocol ?? "TCP").toLowerCase();
  if (p === "tcp" || p === "udp") return p;
  throw new UsageError(
    `${object} port ${spec.remote} is ${p.toUpperCase()}, which relay cannot forward`,
  );
}

export function namedContainerPort(pod: V1Pod, name: string, object: string): number {
  for (const container of pod.spec?.containers ?? []) {
    for (const port of container.ports ?? []) if (port.name === name) return port.containerPort;
  }
  throw new KubeError(
    `${object}: pod ${pod.metadata?.name} has no container port named "${name}"`,
  );
}

export function describePorts(service: V1Service): string {
  const ports = service.spec?.ports ?? [];
  if (ports.length === 0) return "no ports";
  return ports
    .map((p) => `${p.name ? `${p.name}=` : ""}${p.port}/${p.protocol ?? "TCP"}`)
    .join(", ");
}
