/**
 * One pod on the kwok node, as a kubelet keeps it: its network, its containers (ephemeral
 * ones included), its status in the API, its port-forward route, and its deletion.
 */
import { privilegesPrefix } from "./privileges.ts";
import { NET, NODE_NAME, PATHS, REPO_DIR } from "../config.ts";
import { Container } from "./container.ts";
import { type ImageMapOptions, resolveImage } from "./images.ts";
import { type KubeClient, KubeError } from "./kube.ts";
import { createPodNetwork, deletePodNetwork, type IpPool } from "./pod_network.ts";
import { sysctlRejection } from "./sysctls.ts";
import type { ContainerSpec, Pod } from "./types.ts";

/** What every pod worker shares. */
export interface PodWorkerContext {
  kube: KubeClient;
  ips: IpPool;
  /** What the shim's image map resolves images with. */
  images: ImageMapOptions;
  log: (message: string) => void;
}

/** Longest a deleted pod's processes get to exit before SIGKILL. */
const MAX_GRACE_MS = 10_000;

/** Keeps one pod running and its status current. */
export class PodWorker {
  readonly #ctx: PodWorkerContext;
  #pod: Pod;
  #ip: string | undefined;
  #netns: string | undefined;
  readonly #containers = new Map<string, Container>();
  readonly #ephemeral = new Map<string, Container>();
  #startTime = new Date().toISOString();
  #statusDirty = false;
  #statusWriting: Promise<void> | undefined;
  #deleting: Promise<void> | undefined;
  #gone = false;
  /** Why the pod was refused before anything started (a kubelet's admission). */
  #rejection: { reason: string; message: string } | undefined;
  #ready: Promise<void>;

  constructor(ctx: PodWorkerContext, pod: Pod) {
    this.#ctx = ctx;
    this.#pod = pod;
    this.#ready = this.#start().catch((error) => {
      ctx.log(`pod ${this.#ref}: could not start: ${error}`);
    });
  }

  get #ref(): string {
    return `${this.#pod.metadata.namespace}/${this.#pod.metadata.name}`;
  }

  get #stateDir(): string {
    return `${PATHS.pods}/${this.#pod.metadata.uid}`;
  }

  /** Takes a newer version of the pod: deletion, new ephemeral containers. */
  async update(pod: Pod): Promise<void> {
    this.#pod = pod;
    await this.#ready;
    if (pod.metadata.deletionTimestamp) {
      await this.delete(true);
      return;
    }
    for (const spec of pod.spec.ephemeralContainers ?? []) {
      if (!this.#ephemeral.has(spec.name)) this.#startContainer(spec, true);
    }
  }

  /**
   * Stops the pod's processes and removes its network; with `finish`, also removes the pod
   * object (a kubelet's last step of a graceful deletion).
   */
  delete(finish: boolean): Promise<void> {
    this.#deleting ??= (async () => {
      await this.#ready;
      const graceMs = Math.min(
        MAX_GRACE_MS,
        1000 * (this.#pod.metadata.deletionGracePeriodSeconds ??
          this.#pod.spec.terminationGracePeriodSeconds ?? 30),
      );
      const all = [...this.#containers.values(), ...this.#ephemeral.values()];
      await Promise.all(all.map((c) => c.stop(graceMs)));
      await deletePodNetwork(this.#pod.metadata.uid);
      if (this.#ip) this.#ctx.ips.release(this.#ip);
      await Deno.remove(this.#stateDir, { recursive: true }).catch(() => {});
      this.#gone = true;
      if (!finish) return;
      const { namespace, name, uid } = this.#pod.metadata;
      await this.#ctx.kube.request("DELETE", `/api/v1/namespaces/${namespace}/pods/${name}`, {
        gracePeriodSeconds: 0,
        preconditions: { uid },
      }).catch((error) => {
        if (!(error instanceof KubeError && (error.status === 404 || error.status === 409))) {
          this.#ctx.log(`pod ${this.#ref}: finishing deletion: ${error}`);
        }
      });
    })();
    return this.#deleting;
  }

  async #start(): Promise<void> {
    const { uid, namespace, name } = this.#pod.metadata;
    const sysctls = this.#pod.spec.securityContext?.sysctls ?? [];
    this.#rejection = sysctlRejection(sysctls);
    if (this.#rejection) {
      this.#ctx.log(`pod ${namespace}/${name}: ${this.#rejection.message}`);
      return this.#markStatusDirty();
    }
    await Deno.mkdir(this.#stateDir, { recursive: true });
    this.#ip = this.#pod.status?.podIP ?? this.#ctx.ips.allocate();
    this.#ctx.ips.reserve(this.#ip);
    this.#netns = await createPodNetwork({ uid, namespace, ip: this.#ip, sysctls });
    await Deno.writeTextFile(`${this.#stateDir}/netns`, this.#netns + "\n");
    await Deno.writeTextFile(`${this.#stateDir}/ip`, this.#ip + "\n");
    await this.#registerPortForward();
    this.#ctx.log(`pod ${namespace}/${name}: ${this.#ip} in ${this.#netns}`);
    this.#markStatusDirty();
    if (!await this.#runInitContainers()) return;
    for (const spec of this.#pod.spec.containers) this.#startContainer(spec, false);
    for (const spec of this.#pod.spec.ephemeralContainers ?? []) this.#startContainer(spec, true);
  }

  /** Runs init containers one after another; false when one failed for good. */
  async #runInitContainers(): Promise<boolean> {
    for (const spec of this.#pod.spec.initContainers ?? []) {
      const container = this.#makeContainer(spec, "OnFailure");
      this.#containers.set(`init:${spec.name}`, container);
      container.start();
      while (!container.finished && !container.imageMissing && !this.#deleting) {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      if (container.exitCode !== 0 || this.#deleting) return false;
    }
    return true;
  }

  #startContainer(spec: ContainerSpec, ephemeral: boolean): void {
    const policy = ephemeral ? "Never" : this.#pod.spec.restartPolicy ?? "Always";
    const container = this.#makeContainer(spec, policy);
    (ephemeral ? this.#ephemeral : this.#containers).set(spec.name, container);
    container.start();
  }

  #makeContainer(spec: ContainerSpec, restartPolicy: "Always" | "OnFailure" | "Never"): Container {
    return new Container({
      spec,
      image: resolveImage(spec.image, this.#ctx.images),
      netns: this.#netns!,
      podIp: this.#ip!,
      restartPolicy,
      env: this.#envFor(spec),
      secretEnv: () => this.#secretEnvFor(spec),
      workingDir: spec.workingDir ?? REPO_DIR,
      privileges: privilegesPrefix(spec, this.#pod.spec.securityContext),
      stateDir: this.#stateDir,
      onChange: () => this.#markStatusDirty(),
      onEvent: (type, reason, message) => this.#event(spec.name, type, reason, message),
    });
  }

  /** The process environment: a kubelet's service variables, HOSTNAME, then the spec's env. */
  #envFor(spec: ContainerSpec): Record<string, string> {
    const { metadata } = this.#pod;
    const env: Record<string, string> = {
      PATH: Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/root",
      HOSTNAME: metadata.name,
      KUBERNETES_SERVICE_HOST: NET.apiServiceIp,
      KUBERNETES_SERVICE_PORT: "443",
      KUBERNETES_PORT: `tcp://${NET.apiServiceIp}:443`,
    };
    for (const name of ["DENO_DIR", "NO_COLOR"]) {
      const value = Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    const fields: Record<string, string | undefined> = {
      "metadata.name": metadata.name,
      "metadata.namespace": metadata.namespace,
      "metadata.uid": metadata.uid,
      "spec.nodeName": NODE_NAME,
      "status.podIP": this.#ip,
      "status.hostIP": NET.nodeLinkIp,
    };
    for (const { name, value, valueFrom } of spec.env ?? []) {
      if (valueFrom?.secretKeyRef) continue;
      const resolved = valueFrom?.fieldRef ? fields[valueFrom.fieldRef.fieldPath] : value;
      // $(VAR) references to earlier variables, as the kubelet expands them.
      env[name] = (resolved ?? "").replace(
        /\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g,
        (m, v) => env[v] ?? m,
      );
    }
    return env;
  }

  /** The spec's variables taken from Secrets; throws naming a Secret or key not there. */
  async #secretEnvFor(spec: ContainerSpec): Promise<Record<string, string>> {
    const env: Record<string, string> = {};
    const { namespace } = this.#pod.metadata;
    for (const { name, valueFrom } of spec.env ?? []) {
      const ref = valueFrom?.secretKeyRef;
      if (!ref) continue;
      let data: Record<string, string> | undefined;
      try {
        data = (await this.#ctx.kube.request<{ data?: Record<string, string> }>(
          "GET",
          `/api/v1/namespaces/${namespace}/secrets/${ref.name}`,
        )).data;
      } catch (error) {
        if (ref.optional) continue;
        if (error instanceof KubeError && error.status === 404) {
          throw new Error(`secret "${ref.name}" not found`);
        }
        throw error;
      }
      const encoded = data?.[ref.key];
      if (encoded === undefined) {
        if (ref.optional) continue;
        throw new Error(`couldn't find key ${ref.key} in Secret ${namespace}/${ref.name}`);
      }
      env[name] = new TextDecoder().decode(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
    }
    return env;
  }

  /** Points kwok's port-forward for this pod at the pod IP, any port (see pod_network.ts). */
  async #registerPortForward(): Promise<void> {
    const { namespace, name, uid } = this.#pod.metadata;
    const body = {
      apiVersion: "kwok.x-k8s.io/v1alpha1",
      kind: "PortForward",
      metadata: {
        name,
        namespace,
        ownerReferences: [{ apiVersion: "v1", kind: "Pod", name, uid }],
      },
      // Port 0: the requested port (the cluster's kwok is built with that meaning).
      spec: { forwards: [{ target: { address: this.#ip, port: 0 } }] },
    };
    const base = `/apis/kwok.x-k8s.io/v1alpha1/namespaces/${namespace}/portforwards`;
    try {
      await this.#ctx.kube.request("POST", base, body);
    } catch (error) {
      if (!(error instanceof KubeError && error.status === 409)) throw error;
      // Left by an earlier pod of the same name; garbage collection has not caught up.
      await this.#ctx.kube.request(
        "PATCH",
        `${base}/${name}`,
        body,
        "application/merge-patch+json",
      );
    }
  }

  #event(container: string, type: string, reason: string, message: string): void {
    const { namespace, name, uid } = this.#pod.metadata;
    const now = new Date().toISOString();
    this.#ctx.kube.request("POST", `/api/v1/namespaces/${namespace}/events`, {
      metadata: { generateName: `${name}.` },
      involvedObject: {
        apiVersion: "v1",
        kind: "Pod",
        namespace,
        name,
        uid,
        fieldPath: `spec.containers{${container}}`,
      },
      reason,
      message,
      type,
      source: { component: "kubelet", host: NODE_NAME },
      reportingComponent: "kubelet",
      reportingInstance: NODE_NAME,
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    }).catch(() => {});
  }

  /** Coalesces status writes: at most one in flight, and one more after it. */
  #markStatusDirty(): void {
    this.#statusDirty = true;
    if (this.#statusWriting) return;
    this.#statusWriting = (async () => {
      while (this.#statusDirty && !this.#gone) {
        this.#statusDirty = false;
        await this.#writeStatus().catch((error) => {
          if (!(error instanceof KubeError && error.status === 404)) {
            this.#ctx.log(`pod ${this.#ref}: status: ${error}`);
          }
        });
      }
      this.#statusWriting = undefined;
    })();
  }

  async #writeStatus(): Promise<void> {
    // A rejected pod never ran: the kubelet writes only the phase and its reason.
    const status = this.#rejection ? { phase: "Failed", ...this.#rejection } : this.#runStatus();
    const { namespace, name } = this.#pod.metadata;
    await this.#ctx.kube.request(
      "PATCH",
      `/api/v1/namespaces/${namespace}/pods/${name}/status`,
      { metadata: { uid: this.#pod.metadata.uid }, status },
      "application/merge-patch+json",
    );
  }

  /** The status of a pod whose containers were started: phase, conditions, containers. */
  #runStatus(): Record<string, unknown> {
    const all = [...this.#containers.entries()];
    const init = all.filter(([key]) => key.startsWith("init:")).map(([, c]) => c);
    const main = all.filter(([key]) => !key.startsWith("init:")).map(([, c]) => c);
    const initDone = init.every((c) => c.finished && c.exitCode === 0);
    const ready = main.length > 0 && main.every((c) => c.status().ready);
    let phase = "Pending";
    if (init.some((c) => c.finished && c.exitCode !== 0)) phase = "Failed";
    else if (main.length > 0 && main.every((c) => c.finished)) {
      phase = main.every((c) => c.exitCode === 0) ? "Succeeded" : "Failed";
    } else if (main.some((c) => c.running || (c.exitCode !== undefined && !c.finished))) {
      phase = "Running";
    }
    const now = new Date().toISOString();
    const condition = (type: string, status: boolean) => ({
      type,
      status: status ? "True" : "False",
      lastProbeTime: null,
      lastTransitionTime: now,
    });
    return {
      phase,
      hostIP: NET.nodeLinkIp,
      hostIPs: [{ ip: NET.nodeLinkIp }],
      podIP: this.#ip,
      podIPs: [{ ip: this.#ip }],
      startTime: this.#startTime,
      // qosClass is set by the API server at creation and immutable; a kubelet never writes it.
      conditions: [
        condition("PodReadyToStartContainers", true),
        condition("Initialized", initDone),
        condition("ContainersReady", ready),
        condition("Ready", ready),
        condition("PodScheduled", true),
      ],
      initContainerStatuses: init.map((c) => c.status()),
      containerStatuses: main.length
        ? main.map((c) => c.status())
        : this.#pod.spec.containers.map((spec) => ({
          name: spec.name,
          image: spec.image,
          imageID: "",
          ready: false,
          started: false,
          restartCount: 0,
          state: { waiting: { reason: initDone ? "ContainerCreating" : "PodInitializing" } },
          lastState: {},
        })),
      ephemeralContainerStatuses: [...this.#ephemeral.values()].map((c) => c.status()),
    };
  }
}
