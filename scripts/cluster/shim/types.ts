/** The slices of Kubernetes objects the shim reads and writes. */

/** A container or ephemeral container, as the pod spec gives it. */
export interface ContainerSpec {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  workingDir?: string;
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  readinessProbe?: Probe;
  resources?: { limits?: { memory?: string; cpu?: string } };
  securityContext?: {
    runAsGroup?: number;
    capabilities?: { add?: string[]; drop?: string[] };
  };
}

/**
 * One `env` entry; `valueFrom.fieldRef` is honoured for the usual downward-API fields, and
 * `valueFrom.secretKeyRef` is read from the API when the container starts.
 */
export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
  };
}

/** A readiness probe. */
export interface Probe {
  tcpSocket?: { port: number | string };
  exec?: { command: string[] };
  httpGet?: { port: number | string; path?: string };
  initialDelaySeconds?: number;
  periodSeconds?: number;
  timeoutSeconds?: number;
  successThreshold?: number;
  failureThreshold?: number;
}

/** The parts of a Pod the shim uses. */
export interface Pod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion?: string;
    deletionTimestamp?: string;
    deletionGracePeriodSeconds?: number;
    labels?: Record<string, string>;
  };
  spec: {
    nodeName?: string;
    restartPolicy?: "Always" | "OnFailure" | "Never";
    initContainers?: ContainerSpec[];
    containers: ContainerSpec[];
    ephemeralContainers?: ContainerSpec[];
    terminationGracePeriodSeconds?: number;
    securityContext?: { sysctls?: { name: string; value: string }[]; runAsGroup?: number };
  };
  status?: {
    phase?: string;
    podIP?: string;
    containerStatuses?: ContainerStatus[];
  };
}

/** A container's state, in the API's shape. */
export type ContainerState =
  | { waiting: { reason: string; message?: string } }
  | { running: { startedAt: string } }
  | {
    terminated: {
      exitCode: number;
      signal?: number;
      reason: string;
      startedAt?: string;
      finishedAt: string;
    };
  };

/** A container's status, in the API's shape. */
export interface ContainerStatus {
  name: string;
  image: string;
  imageID: string;
  containerID?: string;
  ready: boolean;
  started: boolean;
  restartCount: number;
  state: ContainerState;
  lastState: ContainerState | Record<string, never>;
}
