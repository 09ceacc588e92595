/**
 * The cluster's daemons: etcd, kube-apiserver, kube-controller-manager and kube-scheduler in
 * the host namespace; kube-proxy and kwok (the node) in the node namespace; the kubelet shim
 * in the host namespace. Each has a pid file and a log in the run dir.
 */
import { certFile } from "./certs.ts";
import { NET, NODE_NAME, NODE_NETNS, PATHS, PORTS, REPO_DIR, RUN_DIR } from "./config.ts";
import { writeKubeconfig } from "./kubeconfig.ts";
import { isAlive, must, readPid, startDaemon, stopProcess } from "./proc.ts";

/** A daemon the cluster runs, in start order. */
export interface DaemonSpec {
  name: string;
  argv: string[];
  netns?: string;
}

/** The directory holding the built binaries (from scripts/build-cluster.sh). */
export async function binDir(): Promise<string> {
  const out = await must(["bash", `${REPO_DIR}/scripts/build-cluster.sh`, "path"]);
  return out.trim();
}

const pidFile = (name: string) => `${PATHS.pids}/${name}.pid`;
const logFile = (name: string) => `${PATHS.logs}/${name}.log`;

/** Writes the kubeconfigs, the audit policy and kwok's stage config. */
export async function writeConfigs(): Promise<void> {
  await writeKubeconfig(PATHS.adminKubeconfig, "admin");
  await writeKubeconfig(PATHS.dnsKubeconfig, "admin");
  for (const who of ["controller-manager", "scheduler", "kube-proxy"]) {
    await writeKubeconfig(`${RUN_DIR}/${who}.kubeconfig`, who);
  }
  // The tunnel tests grep this log for port-forward requests.
  await Deno.writeTextFile(
    PATHS.auditPolicy,
    `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods/portforward", "pods/exec", "pods/attach", "pods/ephemeralcontainers"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods", "services"]
    verbs: ["create", "delete", "patch", "update"]
  - level: None
`,
  );
  // The shim owns pod status, so kwok must play no pod stage. kwok falls back to its
  // defaults when it has none, so it gets one that never matches; node stages stay default.
  await Deno.writeTextFile(
    PATHS.kwokConfig,
    `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-owned-by-relay-shim
spec:
  resourceRef:
    apiVersion: v1
    kind: Pod
  selector:
    matchLabels:
      relay.dev/never-matches: "true"
  next: {}
`,
  );
}

/** The daemons in start order, with their flags. */
export function daemonSpecs(bin: string): DaemonSpec[] {
  const kc = (who: string) => `${RUN_DIR}/${who}.kubeconfig`;
  const saKey = certFile("sa", "key");
  return [
    {
      name: "etcd",
      argv: [
        `${bin}/etcd`,
        "--name=relay",
        `--data-dir=${PATHS.etcdData}`,
        `--listen-client-urls=http://127.0.0.1:${PORTS.etcdClient}`,
        `--advertise-client-urls=http://127.0.0.1:${PORTS.etcdClient}`,
        `--listen-peer-urls=http://127.0.0.1:${PORTS.etcdPeer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${PORTS.etcdPeer}`,
        `--initial-cluster=relay=http://127.0.0.1:${PORTS.etcdPeer}`,
        "--unsafe-no-fsync",
        "--log-level=warn",
      ],
    },
    {
      name: "kube-apiserver",
      argv: [
        `${bin}/kube-apiserver`,
        `--etcd-servers=http://127.0.0.1:${PORTS.etcdClient}`,
        `--bind-address=${NET.hostLinkIp}`,
        `--advertise-address=${NET.hostLinkIp}`,
        `--secure-port=${PORTS.apiServer}`,
        `--tls-cert-file=${certFile("apiserver", "crt")}`,
        `--tls-private-key-file=${certFile("apiserver", "key")}`,
        `--client-ca-file=${certFile("ca", "crt")}`,
        `--service-account-issuer=https://kubernetes.default.svc.cluster.local`,
        `--service-account-key-file=${certFile("sa", "pub")}`,
        `--service-account-signing-key-file=${saKey}`,
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        `--service-cluster-ip-range=${NET.serviceCidr}`,
        `--kubelet-client-certificate=${certFile("apiserver-kubelet-client", "crt")}`,
        `--kubelet-client-key=${certFile("apiserver-kubelet-client", "key")}`,
        `--kubelet-certificate-authority=${certFile("ca", "crt")}`,
        "--kubelet-preferred-address-types=InternalIP",
        `--audit-log-path=${PATHS.auditLog}`,
        `--audit-policy-file=${PATHS.auditPolicy}`,
        "--audit-log-mode=blocking",
        "--profiling=false",
      ],
    },
    {
      name: "kube-controller-manager",
      argv: [
        `${bin}/kube-controller-manager`,
        `--kubeconfig=${kc("controller-manager")}`,
        `--authentication-kubeconfig=${kc("controller-manager")}`,
        `--authorization-kubeconfig=${kc("controller-manager")}`,
        `--service-account-private-key-file=${saKey}`,
        `--root-ca-file=${certFile("ca", "crt")}`,
        `--cluster-signing-cert-file=${certFile("ca", "crt")}`,
        `--cluster-signing-key-file=${certFile("ca", "key")}`,
        "--use-service-account-credentials=true",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--profiling=false",
      ],
    },
    {
      name: "kube-scheduler",
      argv: [
        `${bin}/kube-scheduler`,
        `--kubeconfig=${kc("scheduler")}`,
        `--authentication-kubeconfig=${kc("scheduler")}`,
        `--authorization-kubeconfig=${kc("scheduler")}`,
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--profiling=false",
      ],
    },
    {
      name: "kube-proxy",
      netns: NODE_NETNS,
      argv: [
        `${bin}/kube-proxy`,
        `--kubeconfig=${kc("kube-proxy")}`,
        `--hostname-override=${NODE_NAME}`,
        `--cluster-cidr=${NET.podCidr}`,
        "--proxy-mode=iptables",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--metrics-bind-address=127.0.0.1:10249",
        "--healthz-bind-address=127.0.0.1:10256",
      ],
    },
    {
      name: "kwok",
      netns: NODE_NETNS,
      argv: [
        `${bin}/kwok`,
        `--kubeconfig=${PATHS.adminKubeconfig}`,
        `--config=${PATHS.kwokConfig}`,
        `--manage-single-node=${NODE_NAME}`,
        `--node-name=${NODE_NAME}`,
        `--node-ip=${NET.nodeLinkIp}`,
        `--node-port=${PORTS.kubelet}`,
        `--server-address=${NET.nodeLinkIp}:${PORTS.kubelet}`,
        `--tls-cert-file=${certFile("kubelet", "crt")}`,
        `--tls-private-key-file=${certFile("kubelet", "key")}`,
        "--enable-crds=PortForward",
        "--node-lease-duration-seconds=40",
      ],
    },
    {
      name: "kubelet-shim",
      argv: [
        Deno.execPath(),
        "run",
        "--allow-all",
        "--unstable-net",
        `${REPO_DIR}/scripts/cluster/shim/main.ts`,
      ],
    },
  ];
}

/** Starts one daemon unless its pid file names a live process. */
export function startDaemonOnce(spec: DaemonSpec): void {
  const pid = readPid(pidFile(spec.name));
  if (pid !== undefined && isAlive(pid)) return;
  startDaemon({
    argv: spec.argv,
    netns: spec.netns,
    logFile: logFile(spec.name),
    pidFile: pidFile(spec.name),
    env: { RELAY_CLUSTER_DIR: RUN_DIR },
    cwd: REPO_DIR,
  });
}

/** Whether every daemon named by a pid file in the run dir is alive (and there are `count`). */
export function daemonsAlive(names: string[]): boolean {
  return names.every((name) => {
    const pid = readPid(pidFile(name));
    return pid !== undefined && isAlive(pid);
  });
}

/** Stops the daemons in reverse start order, by their pid files. */
export async function stopDaemons(names: string[]): Promise<void> {
  for (const name of [...names].reverse()) {
    const pid = readPid(pidFile(name));
    if (pid !== undefined) await stopProcess(pid);
    await Deno.remove(pidFile(name)).catch(() => {});
  }
}
