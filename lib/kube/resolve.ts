/**
 * Target resolution (docs/ARCHITECTURE.md, "Targets"): from `svc/redis 6379` to the address the
 * agent dials, decided again for every new connection where the answer can change (headless
 * Services and workloads follow their Ready pods across rolling updates).
 */
import type { DestinationRule } from "../contract.ts";
import type { V1LabelSelector, V1Pod, V1PodSpec, V1Service } from "@kubernetes/client-node";
import type { AppsApi, CoreApi } from "./resources.ts";
import type { PortSpec, TargetKind, TargetRef } from "../plan.ts";
import type { Protocol } from "../net/types.ts";
import { apiError, KubeError, UsageError } from "./errors.ts";
import { pickReadyPod, selectorString } from "./pods.ts";
import type { FollowPods, PodFollower } from "./ready_pods.ts";
import { qualifier } from "./short_names.ts";
import {
  describePorts,
  namedContainerPort,
  pickContainerPort,
  pickServicePort,
  protocolOf,
} from "./resolve_ports.ts";

/** The API calls resolution makes; a loaded {@link Kube} has them, tests pass stubs. */
export interface ResolveApi {
  core: Pick<CoreApi, "readNamespacedService" | "readNamespacedPod" | "listNamespacedPod">;
  apps: Pick<
    AppsApi,
    | "readNamespacedDeployment"
    | "readNamespacedStatefulSet"
    | "readNamespacedDaemonSet"
    | "readNamespacedReplicaSet"
  >;
  /** The namespace used when the target names none. */
  namespace: string;
}

/** Where one connection should go, as the agent will dial it. */
export interface Destination {
  /** An IP literal or a hostname the agent resolves. */
  host: string;
  port: number;
}

/** One port of one target, ready to forward. */
export interface ResolvedForward {
  /** For the ready line: `svc/redis:6379`, `deploy/web:http`. */
  label: string;
  /** The namespace the target lives in (empty for host/ and ip/). */
  namespace: string;
  /** The port mapping as written. */
  spec: PortSpec;
  /**
   * The remote port as a number when resolution knows it (a named port's Service or container
   * port): what the local port defaults to, as with kubectl.
   */
  resolvedPort?: number;
  protocol: Protocol;
  /** Where a new connection goes, decided now; rejects when no pod is Ready. */
  destination(): Promise<Destination>;
  /**
   * What the agent must be allowed to open for it: the host and port it sends, or any
   * address (`*`) on the port for pods that come and go.
   */
  allows: DestinationRule;
}

const WORKLOADS = new Set<TargetKind>(["deploy", "sts", "ds", "rs"]);

/**
 * Resolve `target` and each of `ports`. Checks up front what can be checked (the object
 * exists, named ports exist, the protocol is unambiguous); throws UsageError when not.
 */
export async function resolveTarget(
  api: ResolveApi,
  target: TargetRef,
  ports: readonly PortSpec[],
  /** Follows a selector's pods by watch; without it every new connection lists them. */
  follow?: FollowPods,
  /** Where the agent runs: a host/ short name for another namespace is completed for it. */
  agentNamespace: string = api.namespace,
): Promise<ResolvedForward[]> {
  const namespace = target.namespace ?? api.namespace;
  const object = `${target.kind}/${target.name}`;
  const label = (spec: PortSpec) => `${object}:${spec.remote}`;

  if (target.kind === "host" || target.kind === "ip") {
    return ports.map((spec) => {
      if (typeof spec.remote !== "number") {
        throw new UsageError(
          `${object}: port "${spec.remote}" is a name, which only a Service or pod can define; give a number`,
        );
      }
      const host = target.kind === "host"
        ? qualifier(namespace, agentNamespace)(target.name)
        : target.name;
      const destination = { host, port: spec.remote };
      const protocol = spec.protocol ?? "tcp";
      return {
        label: label(spec),
        namespace: "",
        spec,
        protocol,
        destination: () => Promise.resolve(destination),
        allows: { protocol, ...destination },
      };
    });
  }

  if (target.kind === "svc") {
    const service = await readService(api, namespace, target.name);
    const selector = service.spec?.selector;
    const follower = follow && isHeadless(service) && selector && Object.keys(selector).length > 0
      ? await follow(namespace, selectorString({ matchLabels: selector }))
      : undefined;
    return ports.map((spec) => resolveServicePort(api, service, object, namespace, spec, follower));
  }

  if (target.kind === "pod") {
    const pod = await readPod(api, namespace, target.name);
    const phase = pod.status?.phase;
    if (phase === "Succeeded" || phase === "Failed") {
      // Its IP may already be another pod's; kubectl refuses it too.
      throw new KubeError(
        `${object} in namespace ${namespace} has ended (phase ${phase}): nothing to forward to`,
      );
    }
    // Followed by name, in the background (the first connection needs no watch), so that a
    // connection to a pod that was deleted fails at once, saying so, rather than timing out.
    let follower: PodFollower | undefined;
    follow?.(namespace, `metadata.name=${target.name}`, "field").then(
      (following) => follower = following,
      () => {}, // without a watch, connections go to the IP the pod had
    );
    // The agent may open only the IP the pod has now (one still Pending: any, as it gets one).
    const allowedIP = pod.status?.podIP;
    return ports.map((spec) => {
      const containerPort = pickContainerPort(pod.spec, spec, object);
      const port = containerPort?.containerPort ?? (spec.remote as number);
      let current = pod;
      const protocol = containerPort
        ? protocolOf(containerPort.protocol, object, spec)
        : spec.protocol ?? "tcp";
      return {
        label: label(spec),
        namespace,
        spec,
        resolvedPort: port,
        protocol,
        allows: { protocol, host: allowedIP ?? "*", port },
        destination: async () => {
          const watched = follower?.pods();
          if (watched) current = livePod(watched, object, namespace, allowedIP);
          // Unwatched, a pod's IP is fixed once assigned: ask again only while it has none.
          else if (!current.status?.podIP) current = await readPod(api, namespace, target.name);
          if (!current.status?.podIP) {
            throw new KubeError(
              `${object} in namespace ${namespace} has no IP yet (phase ${
                current.status?.phase ?? "unknown"
              })`,
            );
          }
          return { host: current.status.podIP, port };
        },
      };
    });
  }

  if (WORKLOADS.has(target.kind)) {
    const { selector, template } = await readWorkload(api, target.kind, namespace, target.name);
    const selectorText = selectorString(selector);
    const follower = await follow?.(namespace, selectorText);
    return ports.map((spec) => {
      const templatePort = pickContainerPort(template, spec, object);
      const protocol = templatePort
        ? protocolOf(templatePort.protocol, object, spec)
        : spec.protocol ?? "tcp";
      const port = templatePort?.containerPort ??
        (typeof spec.remote === "number" ? spec.remote : 0);
      return {
        label: label(spec),
        namespace,
        spec,
        ...(port ? { resolvedPort: port } : {}),
        protocol,
        allows: { protocol, host: "*", port },
        destination: async () => {
          const pod = await readyPod(api, namespace, selectorText, object, follower);
          // Named ports are looked up on the chosen pod: a rollout may renumber them.
          const port = typeof spec.remote === "number"
            ? spec.remote
            : namedContainerPort(pod, spec.remote, object);
          return { host: pod.status!.podIP!, port };
        },
      };
    });
  }
  throw new UsageError(`unknown target kind "${target.kind}"`);
}

/**
 * The followed pod of a `pod/NAME` target, or why a connection cannot go to it: deleted, or made
 * again under its name with an IP the agent was not allowed (a StatefulSet's pod, say).
 */
function livePod(
  watched: V1Pod[],
  object: string,
  namespace: string,
  allowedIP: string | undefined,
): V1Pod {
  const pod = watched[0];
  const where = `${object} in namespace ${namespace}`;
  if (!pod) throw new KubeError(`${where} is gone (deleted)`);
  const ip = pod.status?.podIP;
  if (allowedIP && ip && ip !== allowedIP) {
    throw new KubeError(
      `${where} was made again with another IP (${allowedIP}, now ${ip}); this relay's agent ` +
        `may open only the first: restart relay to forward to the new pod`,
    );
  }
  return pod;
}

/**
 * The pod whose network namespace the agent should join for `--target`: the pod itself, or
 * the newest Ready pod of a Service's or workload's selector.
 */
export async function pickTargetPod(api: ResolveApi, target: TargetRef): Promise<V1Pod> {
  const namespace = target.namespace ?? api.namespace;
  const object = `${target.kind}/${target.name}`;
  switch (target.kind) {
    case "pod": {
      const pod = await readPod(api, namespace, target.name);
      if (pod.status?.phase !== "Running") {
        throw new KubeError(
          `${object} in namespace ${namespace} is ${
            pod.status?.phase ?? "not running"
          }, not Running`,
        );
      }
      return pod;
    }
    case "svc": {
      const service = await readService(api, namespace, target.name);
      const selector = service.spec?.selector;
      if (!selector || Object.keys(selector).length === 0) {
        throw new UsageError(`${object} has no pod selector, so it has no pod to target`);
      }
      return readyPod(api, namespace, selectorString({ matchLabels: selector }), object);
    }
    case "deploy":
    case "sts":
    case "ds":
    case "rs": {
      const { selector } = await readWorkload(api, target.kind, namespace, target.name);
      return readyPod(api, namespace, selectorString(selector), object);
    }
    default:
      throw new UsageError(
        `--target needs a pod, Service or workload, not ${object}: a ${target.kind} has no pod`,
      );
  }
}

function resolveServicePort(
  api: ResolveApi,
  service: V1Service,
  object: string,
  namespace: string,
  spec: PortSpec,
  follower: PodFollower | undefined,
): ResolvedForward {
  const label = `${object}:${spec.remote}`;
  const servicePort = pickServicePort(service, spec, object);
  const resolvedPort = servicePort?.port ??
    (typeof spec.remote === "number" ? spec.remote : undefined);
  const protocol = servicePort
    ? protocolOf(servicePort.protocol, object, spec)
    : spec.protocol ?? "tcp";

  if (service.spec?.type === "ExternalName") {
    const host = service.spec.externalName;
    if (!host) throw new UsageError(`${object} is an ExternalName Service without externalName`);
    const port = servicePort?.port ?? (spec.remote as number);
    const allows = { protocol, host, port };
    return {
      label,
      namespace,
      spec,
      resolvedPort,
      protocol,
      allows,
      destination: () => Promise.resolve({ host, port }),
    };
  }
  if (!servicePort) {
    throw new UsageError(`${object} has no port ${spec.remote} (it has ${describePorts(service)})`);
  }
  const clusterIP = service.spec?.clusterIP;
  if (clusterIP && clusterIP !== "None") {
    const destination = { host: clusterIP, port: servicePort.port };
    return {
      label,
      namespace,
      spec,
      resolvedPort,
      protocol,
      allows: { protocol, ...destination },
      destination: () => Promise.resolve(destination),
    };
  }

  // Headless: one of its Ready pods, chosen per connection, at the Service's targetPort.
  const selector = service.spec?.selector;
  if (!selector || Object.keys(selector).length === 0) {
    throw new UsageError(`${object} is headless and has no pod selector; forward to a pod instead`);
  }
  const selectorText = selectorString({ matchLabels: selector });
  const targetPort = servicePort.targetPort ?? servicePort.port;
  const numbered = typeof targetPort === "number" || /^\d+$/.test(targetPort);
  return {
    label,
    namespace,
    spec,
    resolvedPort,
    protocol,
    // A named targetPort is numbered by each pod: any port of the Service's pods.
    allows: { protocol, host: "*", port: numbered ? Number(targetPort) : 0 },
    destination: async () => {
      const pod = await readyPod(api, namespace, selectorText, object, follower);
      const port = typeof targetPort === "number" || /^\d+$/.test(targetPort)
        ? Number(targetPort)
        : namedContainerPort(pod, targetPort, object);
      return { host: pod.status!.podIP!, port };
    },
  };
}

async function readService(api: ResolveApi, namespace: string, name: string): Promise<V1Service> {
  try {
    return await api.core.readNamespacedService({ name, namespace });
  } catch (error) {
    throw apiError(error, { verb: "get", resource: "services", object: `svc/${name}`, namespace });
  }
}

async function readPod(api: ResolveApi, namespace: string, name: string): Promise<V1Pod> {
  try {
    return await api.core.readNamespacedPod({ name, namespace });
  } catch (error) {
    throw apiError(error, { verb: "get", resource: "pods", object: `pod/${name}`, namespace });
  }
}

/** Whether a Service is headless: its Ready pods are the destinations, not a clusterIP. */
function isHeadless(service: V1Service): boolean {
  return service.spec?.type !== "ExternalName" &&
    (!service.spec?.clusterIP || service.spec.clusterIP === "None");
}

/**
 * The newest Ready pod matching `selector`, or an error saying there is none: from the
 * follower's watched set when it is current, else from a list.
 */
async function readyPod(
  api: ResolveApi,
  namespace: string,
  selector: string,
  object: string,
  follower?: PodFollower,
): Promise<V1Pod> {
  const watched = follower?.pods();
  // A watched set can lag a moment behind the cluster; before a connection fails for want
  // of a Ready pod, a list has the last word.
  let pods = watched && pickReadyPod(watched) ? watched : undefined;
  if (!pods) {
    try {
      pods = (await api.core.listNamespacedPod({ namespace, labelSelector: selector })).items;
    } catch (error) {
      throw apiError(error, { verb: "list", resource: "pods", namespace });
    }
  }
  const pod = pickReadyPod(pods);
  if (!pod) {
    throw new KubeError(
      `${object} in namespace ${namespace} has no Ready pod (${pods.length} pod(s) match ${selector})`,
    );
  }
  return pod;
}

const WORKLOAD_RESOURCES: Record<string, string> = {
  deploy: "deployments",
  sts: "statefulsets",
  ds: "daemonsets",
  rs: "replicasets",
};

async function readWorkload(
  api: ResolveApi,
  kind: TargetKind,
  namespace: string,
  name: string,
): Promise<{ selector: V1LabelSelector; template?: V1PodSpec }> {
  const request = { name, namespace };
  let workload: { spec?: { selector: V1LabelSelector; template?: { spec?: V1PodSpec } } };
  try {
    switch (kind) {
      case "deploy":
        workload = await api.apps.readNamespacedDeployment(request);
        break;
      case "sts":
        workload = await api.apps.readNamespacedStatefulSet(request);
        break;
      case "ds":
        workload = await api.apps.readNamespacedDaemonSet(request);
        break;
      default:
        workload = await api.apps.readNamespacedReplicaSet(request);
    }
  } catch (error) {
    throw apiError(error, {
      verb: "get",
      resource: WORKLOAD_RESOURCES[kind],
      object: `${kind}/${name}`,
      namespace,
    });
  }
  const selector = workload.spec?.selector;
  if (!selector || (!selector.matchLabels && !selector.matchExpressions)) {
    throw new UsageError(`${kind}/${name} has no pod selector`);
  }
  return { selector, template: workload.spec?.template?.spec };
}
