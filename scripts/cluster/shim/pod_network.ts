/**
 * A pod's network: its own namespace, a veth into the node namespace's bridge, its IP, and
 * its resolv.conf (through `ip netns exec`'s /etc/netns/<name>/ mechanism).
 *
 * kwok's port-forward reaches the pod's localhost without any process per connection: kwok
 * dials POD_IP:PORT from the node's link address, and a DNAT rule in the pod's namespace
 * turns exactly those connections into connections to 127.0.0.1:PORT (which needs
 * route_localnet on eth0), as a real kubelet's dial inside the pod's namespace would be.
 */
import { CLUSTER_DOMAIN, NET, NODE_NETNS, podNetnsName } from "../config.ts";
import { must, run } from "../proc.ts";
import { deleteNetns } from "../network.ts";
import { type Sysctl, sysctlName } from "./sysctls.ts";

/** What the shim needs to know to wire one pod. */
export interface PodNetworkSpec {
  uid: string;
  namespace: string;
  ip: string;
  /** The pod's sysctls, safe `net.*` ones only (see sysctls.ts). */
  sysctls?: readonly Sysctl[];
}

/** Creates the pod's namespace and wiring; returns the namespace name. */
export async function createPodNetwork(spec: PodNetworkSpec): Promise<string> {
  const netns = podNetnsName(spec.uid);
  const hostSide = "vp" + spec.uid.replaceAll("-", "").slice(0, 12);
  const inPod = (...argv: string[]) => ["ip", "netns", "exec", netns, ...argv];
  await Deno.mkdir(`/etc/netns/${netns}`, { recursive: true });
  await Deno.writeTextFile(
    `/etc/netns/${netns}/resolv.conf`,
    `nameserver ${NET.dnsServiceIp}\n` +
      `search ${spec.namespace}.svc.${CLUSTER_DOMAIN} svc.${CLUSTER_DOMAIN} ${CLUSTER_DOMAIN}\n` +
      "options ndots:5\n",
  );
  await must(["ip", "netns", "add", netns]);
  const steps: string[][] = [
    [
      "ip",
      "-n",
      NODE_NETNS,
      "link",
      "add",
      hostSide,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      netns,
    ],
    ["ip", "-n", NODE_NETNS, "link", "set", hostSide, "master", NET.bridge, "up"],
    ["ip", "-n", netns, "link", "set", "lo", "up"],
    ["ip", "-n", netns, "addr", "add", `${spec.ip}/${NET.podPrefix}`, "dev", "eth0"],
    ["ip", "-n", netns, "link", "set", "eth0", "up"],
    ["ip", "-n", netns, "route", "add", "default", "via", NET.podGateway],
    inPod("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"),
    ...(spec.sysctls ?? []).map((s) => inPod("sysctl", "-qw", `${sysctlName(s.name)}=${s.value}`)),
    inPod(
      "iptables",
      "-t",
      "nat",
      "-A",
      "PREROUTING",
      "-i",
      "eth0",
      "-p",
      "tcp",
      "-s",
      NET.nodeLinkIp,
      "-d",
      spec.ip,
      "-j",
      "DNAT",
      "--to-destination",
      "127.0.0.1",
    ),
  ];
  try {
    for (const step of steps) await must(step);
  } catch (error) {
    await deletePodNetwork(spec.uid);
    throw error;
  }
  return netns;
}

/** Kills what is left in the pod's namespace and deletes it (the veth goes with it). */
export async function deletePodNetwork(uid: string): Promise<void> {
  await deleteNetns(podNetnsName(uid));
}

/** Whether the pod's namespace exists. */
export async function podNetworkExists(uid: string): Promise<boolean> {
  const out = await run(["ip", "netns", "list"]);
  return out.stdout.split("\n").some((line) => line.split(" ")[0] === podNetnsName(uid));
}

/**
 * Hands out pod IPs from the pod range, round-robin, so a freed address rests before it is
 * reused (stale ARP and conntrack entries age out first).
 */
export class IpPool {
  readonly #used = new Set<string>();
  #next = 2;

  /** Marks an address as taken (pods that already had one when the shim started). */
  reserve(ip: string): void {
    this.#used.add(ip);
  }

  /** Takes the next free address. */
  allocate(): string {
    // 198.18.0.0/16 without .0.0 (network), .0.1 (gateway) and .255.255 (broadcast).
    for (let i = 0; i < 65533; i++) {
      const n = this.#next;
      this.#next = n >= 65534 ? 2 : n + 1;
      const ip = `198.18.${n >> 8}.${n & 255}`;
      if (!this.#used.has(ip)) {
        this.#used.add(ip);
        return ip;
      }
    }
    throw new Error("pod address range exhausted");
  }

  /** Returns an address to the pool. */
  release(ip: string): void {
    this.#used.delete(ip);
  }
}
