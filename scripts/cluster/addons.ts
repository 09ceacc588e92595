/** What `up` puts into the fresh API: kwok's CRD, the node, and the cluster DNS. */
import { KUBECTL, NET, NODE_NAME, PATHS, REPO_DIR } from "./config.ts";
import { must } from "./proc.ts";

/** Runs kubectl against the cluster as admin; throws on failure, returns stdout. */
export function kubectl(args: string[], input?: string): Promise<string> {
  return must([KUBECTL, `--kubeconfig=${PATHS.adminKubeconfig}`, ...args], { input });
}

/** Installs kwok's PortForward CRD and waits until the API serves it. */
export async function installKwokCrds(): Promise<void> {
  const dir = (await must(["bash", `${REPO_DIR}/scripts/build-cluster.sh`, "crds"])).trim();
  await kubectl(["apply", "-f", `${dir}/kwok.x-k8s.io_portforwards.yaml`]);
  await kubectl([
    "wait",
    "--for=condition=established",
    "--timeout=30s",
    "crd/portforwards.kwok.x-k8s.io",
  ]);
}

/** The node object kwok keeps alive; untainted, so every pod lands on it. */
export function nodeManifest(): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: NODE_NAME,
      annotations: { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
      labels: {
        "kubernetes.io/hostname": NODE_NAME,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        type: "kwok",
      },
    },
    spec: { podCIDR: NET.podCidr, podCIDRs: [NET.podCidr] },
  });
}

/** kube-system/kube-dns: the DNS fixture as a Deployment behind the well-known Service IP. */
export function dnsManifest(): string {
  const labels = { "k8s-app": "kube-dns" };
  const deployment = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "kube-dns", namespace: "kube-system", labels },
    spec: {
      replicas: 1,
      selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          containers: [{
            name: "dns",
            image: "relay-test/dns:latest",
            env: [{ name: "KUBECONFIG", value: PATHS.dnsKubeconfig }],
            ports: [
              { name: "dns", containerPort: 53, protocol: "UDP" },
              { name: "dns-tcp", containerPort: 53, protocol: "TCP" },
            ],
            readinessProbe: { tcpSocket: { port: 53 }, periodSeconds: 1, failureThreshold: 3 },
          }],
        },
      },
    },
  };
  const service = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: "kube-dns", namespace: "kube-system", labels },
    spec: {
      clusterIP: NET.dnsServiceIp,
      selector: labels,
      ports: [
        { name: "dns", port: 53, protocol: "UDP", targetPort: 53 },
        { name: "dns-tcp", port: 53, protocol: "TCP", targetPort: 53 },
      ],
    },
  };
  return JSON.stringify({ apiVersion: "v1", kind: "List", items: [deployment, service] });
}
