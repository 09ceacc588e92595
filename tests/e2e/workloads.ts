/**
 * The echo workloads the forwarding tests aim at: one of every target kind, each pod's
 * greeting naming itself, so a test can tell which pod answered.
 */
import {
  applyYaml,
  kubectlJson,
  waitFor,
  waitForReadyPod,
  waitForServiceRules,
} from "./harness.ts";

const ECHO_PORTS = [
  { name: "greet", containerPort: 8080 },
  { name: "echo", containerPort: 9000 },
  { name: "echo-udp", containerPort: 9000, protocol: "UDP" },
  { name: "hash", containerPort: 9001 },
  { name: "source", containerPort: 9002 },
];

function podTemplate(app: string) {
  return {
    metadata: { labels: { app } },
    spec: {
      containers: [{
        name: "echo",
        image: "relay-test/echo:latest",
        ports: ECHO_PORTS,
        // Ready means serving: the process takes a moment to listen after it starts.
        readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
      }],
    },
  };
}

function workload(kind: string, apiVersion: string, name: string, extra = {}) {
  return {
    apiVersion,
    kind,
    metadata: { name },
    spec: { selector: { matchLabels: { app: name } }, template: podTemplate(name), ...extra },
  };
}

/** Every echo object, by the target a user would type. */
export interface EchoWorkloads {
  namespace: string;
  /** Pod name of each: `pod`, `deploy`, `sts`, `ds`, `rs`. */
  pods: Record<"pod" | "deploy" | "sts" | "ds" | "rs", string>;
  /** IP of the Deployment's pod. */
  deployPodIP: string;
  /** ClusterIP of Service `echo`. */
  serviceIP: string;
}

/**
 * Creates, in `namespace`: pod `echo-pod`, Deployment `echo` with Services `echo`
 * (ClusterIP; ports greet 80→8080, echo 9000, hash 9001, source 9002, echo-udp 9000/UDP),
 * `echo-headless` and `echo-ext` (ExternalName → echo), StatefulSet `echo-sts`, DaemonSet
 * `echo-ds` and ReplicaSet `echo-rs`; waits until each has a Ready pod and, with the
 * Deployment, until kube-proxy routes Service `echo`.
 */
export async function createEchoWorkloads(
  namespace: string,
  kinds: Array<keyof EchoWorkloads["pods"]> = ["pod", "deploy", "sts", "ds", "rs"],
): Promise<EchoWorkloads> {
  const items: unknown[] = [
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "echo" },
      spec: {
        selector: { app: "echo" },
        ports: [
          { name: "greet", port: 80, targetPort: "greet" },
          { name: "echo", port: 9000, targetPort: 9000 },
          { name: "echo-udp", port: 9000, targetPort: 9000, protocol: "UDP" },
          { name: "hash", port: 9001, targetPort: 9001 },
          { name: "source", port: 9002, targetPort: 9002 },
        ],
      },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "echo-headless" },
      spec: {
        clusterIP: "None",
        selector: { app: "echo" },
        ports: [{ name: "greet", port: 8080, targetPort: 8080 }],
      },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "echo-ext" },
      spec: {
        type: "ExternalName",
        externalName: `echo.${namespace}.svc.cluster.local`,
        ports: [{ name: "greet", port: 80 }],
      },
    },
  ];
  if (kinds.includes("deploy")) items.push(workload("Deployment", "apps/v1", "echo"));
  if (kinds.includes("pod")) {
    items.push({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "echo-pod", labels: { app: "echo-pod" } },
      spec: podTemplate("echo-pod").spec,
    });
  }
  if (kinds.includes("sts")) {
    items.push(workload("StatefulSet", "apps/v1", "echo-sts", { serviceName: "echo-headless" }));
  }
  if (kinds.includes("ds")) items.push(workload("DaemonSet", "apps/v1", "echo-ds"));
  if (kinds.includes("rs")) items.push(workload("ReplicaSet", "apps/v1", "echo-rs"));
  await applyYaml(JSON.stringify({ apiVersion: "v1", kind: "List", items }), namespace);

  const pods = {} as EchoWorkloads["pods"];
  const apps = { pod: "echo-pod", deploy: "echo", sts: "echo-sts", ds: "echo-ds", rs: "echo-rs" };
  for (const kind of kinds) {
    pods[kind] = await waitForReadyPod(namespace, `app=${apps[kind]}`);
  }
  const deployPodIP = kinds.includes("deploy")
    ? await waitFor("the echo pod's IP", async () => {
      const pod = await kubectlJson<{ status: { podIP?: string } }>([
        "get",
        "pod",
        pods.deploy,
        "-n",
        namespace,
      ]);
      return pod.status.podIP;
    })
    : "";
  // kube-proxy writes a Service's rules a moment after its endpoints exist; until then its
  // cluster IP is unreachable, which a story would misread as relay's failure.
  if (kinds.includes("deploy")) await waitForServiceRules(namespace, "echo");
  const service = await kubectlJson<{ spec: { clusterIP: string } }>([
    "get",
    "service",
    "echo",
    "-n",
    namespace,
  ]);
  return { namespace, pods, deployPodIP, serviceIP: service.spec.clusterIP };
}
