/**
 * The agent's Job: its pod hardened (non-root, read-only root, no capabilities, no
 * service-account token), --patch applied, and the rules a patch may not break.
 */
import type { V1Container, V1EnvVar, V1Job, V1PodTemplateSpec } from "@kubernetes/client-node";
import {
  AGENT_PORT,
  AGENT_TOKEN_DIGEST_ENV,
  type DestinationRule,
  formatDestinationRule,
} from "../contract.ts";
import { VERSION } from "../version.ts";
import { UsageError } from "./errors.ts";
import { mergePatch } from "./merge_patch.ts";

export { AGENT_PORT };

/** Labels every agent Job and pod carries. */
export const AGENT_NAME_LABEL = "app.kubernetes.io/name";
export const SESSION_LABEL = "relay.dev/session";

/** The agent's container in its pod. */
export const CONTAINER_NAME = "agent";
/**
 * The agent pod's ephemeral ports (a sysctl every kubelet allows). The agent, a proxy, leaves a
 * port in TIME_WAIT for every connection its client closes first, and with Linux's default
 * range a high connection rate made each connect() search long for a free port
 * (docs/MEASUREMENTS.md).
 */
export const AGENT_LOCAL_PORT_RANGE = "1024 65535";

/** Random bytes as lowercase hex. */
export function randomHex(bytes: number): string {
  return crypto.getRandomValues(new Uint8Array(bytes)).toHex();
}

/**
 * The agent's environment: the digest of the session token (contract.ts tokenDigest), in the
 * spec itself, so nothing else has to exist before the agent starts.
 */
export function agentEnv(tokenDigest: string): V1EnvVar[] {
  return [{ name: AGENT_TOKEN_DIGEST_ENV, value: tokenDigest }];
}

/**
 * The Job for one session, --patch applied. Throws UsageError if the patch would change the
 * token's digest env or the agent's arguments.
 */
export function agentJobManifest(opts: {
  namespace: string;
  image: string;
  sessionId: string;
  /** The session token's SHA-256 (contract.ts tokenDigest). */
  tokenDigest: string;
  patch?: Record<string, unknown>;
  idleExit?: string;
  udpIdleTimeout?: string;
  allow?: readonly DestinationRule[] | "any";
}): V1Job {
  const args = agentArgs(opts);
  const labels = { [AGENT_NAME_LABEL]: "relay-agent", [SESSION_LABEL]: opts.sessionId };
  const container: V1Container = {
    name: CONTAINER_NAME,
    image: opts.image,
    args,
    env: agentEnv(opts.tokenDigest),
    // Declared so the kubelet (and the test cluster's shim) know the port-forward target.
    ports: [{ name: "relay", containerPort: AGENT_PORT, protocol: "TCP" }],
    resources: {
      requests: { cpu: "10m", memory: "32Mi" },
      // No CPU limit: throttling the agent throttles every forwarded byte. Memory is bounded,
      // with room for heavy use (docs/MEASUREMENTS.md).
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
  if (opts.patch) checkPatchShape(patched);
  checkPatchKeptAgent(patched.spec, opts.tokenDigest, args);

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

/** The agent container's arguments: its port, plus the optional flags asked for. */
export function agentArgs(opts: {
  idleExit?: string;
  udpIdleTimeout?: string;
  port?: number;
  allow?: readonly DestinationRule[] | "any";
}): string[] {
  const args = ["agent", "--port", String(opts.port ?? AGENT_PORT)];
  if (opts.idleExit) args.push("--idle-exit", opts.idleExit);
  if (opts.udpIdleTimeout) args.push("--udp-idle-timeout", opts.udpIdleTimeout);
  // The agent opens only these (agent/policy.ts): the destinations of this session.
  if (opts.allow === "any") args.push("--allow", "any");
  else for (const rule of opts.allow ?? []) args.push("--allow", formatDestinationRule(rule));
  return args;
}

/** The fields relay reads after a patch must still have their types. */
function checkPatchShape(patched: { metadata?: unknown; spec?: unknown }): void {
  const isObject = (value: unknown): value is Record<string, unknown> =>
    typeof value === "object" && value !== null && !Array.isArray(value);
  const shown = (value: unknown) => JSON.stringify(value) ?? String(value);
  const need = (ok: boolean, field: string, what: string, value: unknown) => {
    if (!ok) throw new UsageError(`--patch: ${field} must be ${what}, not ${shown(value)}`);
  };
  need(isObject(patched.metadata), "metadata", "an object", patched.metadata);
  const { labels } = patched.metadata as Record<string, unknown>;
  need(labels === undefined || isObject(labels), "metadata.labels", "an object", labels);
  need(isObject(patched.spec), "spec", "an object", patched.spec);
  const spec = patched.spec as Record<string, unknown>;
  for (const key of ["containers", "initContainers"]) {
    const list = spec[key];
    if (key === "initContainers" && list === undefined) continue;
    need(Array.isArray(list), `spec.${key}`, "a list", list);
    for (const [i, container] of (list as unknown[]).entries()) {
      need(isObject(container), `spec.${key}[${i}]`, "an object", container);
      const { name, env } = container as Record<string, unknown>;
      need(typeof name === "string", `spec.${key}[${i}].name`, "a string", name);
      need(env === undefined || Array.isArray(env), `spec.${key}[${i}].env`, "a list", env);
    }
  }
}

function checkPatchKeptAgent(
  spec: V1PodTemplateSpec["spec"],
  tokenDigest: string,
  args: string[],
): void {
  const agent = spec?.containers?.find((c) => c.name === CONTAINER_NAME);
  const hint = "(a JSON merge patch replaces lists such as spec.containers whole;" +
    " patch other fields, e.g. spec.nodeSelector or spec.tolerations)";
  if (!agent) throw new UsageError(`--patch removes the "${CONTAINER_NAME}" container ${hint}`);
  if (JSON.stringify(agent.args) !== JSON.stringify(args) || agent.command) {
    throw new UsageError(`--patch changes the agent's command or arguments ${hint}`);
  }
  const digestEnv = agent.env?.filter((e) => e.name === AGENT_TOKEN_DIGEST_ENV) ?? [];
  const kept = digestEnv.length > 0 &&
    digestEnv.every((e) => e.value === tokenDigest && !e.valueFrom);
  if (!kept) {
    throw new UsageError(
      `--patch removes or changes the agent's ${AGENT_TOKEN_DIGEST_ENV} env ${hint}`,
    );
  }
  checkPatchKeptAlone(spec!);
}

/**
 * The agent listens on its pod's loopback so that nothing else can reach it: a patch that
 * shares the node's network or the pod with other processes would void that, so it is refused.
 */
function checkPatchKeptAlone(spec: NonNullable<V1PodTemplateSpec["spec"]>): void {
  const shared: Record<string, string> = {
    hostNetwork: "the agent would listen on the node's network, where any pod can reach it",
    hostPID: "the agent would share the node's processes",
    hostIPC: "the agent would share the node's IPC",
    shareProcessNamespace: "other containers of the pod could read the agent's memory",
  };
  for (const [key, why] of Object.entries(shared)) {
    if ((spec as unknown as Record<string, unknown>)[key]) {
      throw new UsageError(`--patch sets spec.${key}: ${why}; relay refuses it`);
    }
  }
  const others = [
    ...spec.containers.filter((c) => c.name !== CONTAINER_NAME),
    ...(spec.initContainers ?? []),
  ].map((c) => c.name);
  if (others.length > 0) {
    throw new UsageError(
      `--patch adds container ${others.join(", ")} to the agent pod: it would share the ` +
        `agent's loopback, where only the agent may listen; relay refuses it`,
    );
  }
}
