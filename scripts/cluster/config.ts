/**
 * The fixed facts of the local test cluster: where its state lives, its address plan and
 * the names other parts of the repository rely on. Everything here follows the design
 * ("The local test cluster"); other scripts and tests rely on these names.
 */

/** The repository root (scripts/cluster/ is two levels below it). */
export const REPO_DIR = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** State, certificates, logs, kubeconfigs and pid files of one running cluster. */
export const RUN_DIR = Deno.env.get("RELAY_CLUSTER_DIR") ?? "/tmp/relay-cluster";

/** Files and directories inside {@link RUN_DIR}. */
export const PATHS = {
  adminKubeconfig: `${RUN_DIR}/admin.kubeconfig`,
  certs: `${RUN_DIR}/certs`,
  logs: `${RUN_DIR}/logs`,
  pids: `${RUN_DIR}/pids`,
  pods: `${RUN_DIR}/pods`,
  etcdData: `${RUN_DIR}/etcd`,
  auditLog: `${RUN_DIR}/audit.log`,
  auditPolicy: `${RUN_DIR}/audit-policy.yaml`,
  kwokConfig: `${RUN_DIR}/kwok.yaml`,
  dnsKubeconfig: `${RUN_DIR}/dns.kubeconfig`,
} as const;

/** The address plan; all of it inside 198.18.0.0/15, which the host cannot route. */
export const NET = {
  /** Routed as `unreachable` in the host namespace while the cluster is up. */
  reserved: "198.18.0.0/15",
  podCidr: "198.18.0.0/16",
  podPrefix: 16,
  /** The bridge in the node namespace; every pod's default gateway. */
  podGateway: "198.18.0.1",
  serviceCidr: "198.19.0.0/17",
  /** ClusterIP of the `kubernetes` Service (first of the range). */
  apiServiceIp: "198.19.0.1",
  dnsServiceIp: "198.19.0.10",
  /** Host side of the host↔node link: the API server's advertise and bind address. */
  hostLinkIp: "198.19.255.1",
  /** Node side of the link: kwok's kubelet endpoint, and the source of its port-forward dials. */
  nodeLinkIp: "198.19.255.2",
  linkPrefix: 30,
  hostVeth: "relay-host0",
  nodeVeth: "relay-node0",
  bridge: "relay-br0",
  /** Fixed, locally administered (the 02 prefix), so no pod's gateway entry ever goes stale. */
  bridgeMac: "02:72:65:6c:61:79",
} as const;

/** Ports, all on the addresses above or on loopback. */
export const PORTS = {
  apiServer: 6443,
  etcdClient: 23790,
  etcdPeer: 23800,
  kubelet: 10250,
} as const;

/** The node network namespace, where kube-proxy and kwok run. */
export const NODE_NETNS = "relay-node";
/** Prefix of every pod network namespace; the rest is taken from the pod UID. */
export const POD_NETNS_PREFIX = "relay-pod-";
/** The one (kwok) node. */
export const NODE_NAME = "kwok-node-0";
/** The cluster's DNS domain. */
export const CLUSTER_DOMAIN = "cluster.local";

/**
 * The Google Cloud SDK's kubectl for the cluster's version. Where the SDK is installed its plain
 * `kubectl` is a dispatcher (1.32 on CI's image), so the versioned one is preferred.
 */
const GCLOUD_KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

/**
 * The kubectl that speaks the cluster's version (1.33): $RELAY_KUBECTL, else the Cloud SDK's
 * kubectl.1.33 when it exists, else `kubectl` from PATH, which is what the README asks a new
 * user to install. `deno task demo --check` says which one it found and its version.
 */
export const KUBECTL = Deno.env.get("RELAY_KUBECTL") ??
  (isFile(GCLOUD_KUBECTL) ? GCLOUD_KUBECTL : "kubectl");

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The netns name of a pod, from its UID (so a reused IP never meets a stale namespace). */
export function podNetnsName(uid: string): string {
  return POD_NETNS_PREFIX + uid.replaceAll("-", "").slice(0, 12);
}
