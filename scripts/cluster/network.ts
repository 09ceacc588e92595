/**
 * The node network namespace and the host↔node link, and their removal.
 *
 * host ns ── relay-host0 198.19.255.1/30 ═ veth ═ relay-node0 198.19.255.2/30 ── node ns
 * node ns: bridge relay-br0 198.18.0.1/16, one veth per pod; kube-proxy and kwok run here.
 * The host only ever sees the /30: pod traffic toward it is masqueraded to 198.19.255.2,
 * and 198.18.0.0/15 is `unreachable` in the host's routing table.
 */
import { NET, NODE_NETNS, POD_NETNS_PREFIX } from "./config.ts";
import { must, run, stopProcess } from "./proc.ts";

const inNode = (...argv: string[]) => ["ip", "netns", "exec", NODE_NETNS, ...argv];

/** Creates the node namespace, the link, the bridge and the host route. */
export async function createNodeNetwork(): Promise<void> {
  await must(["ip", "netns", "add", NODE_NETNS]);
  const steps: string[][] = [
    [
      "ip",
      "link",
      "add",
      NET.hostVeth,
      "type",
      "veth",
      "peer",
      "name",
      NET.nodeVeth,
      "netns",
      NODE_NETNS,
    ],
    ["ip", "addr", "add", `${NET.hostLinkIp}/${NET.linkPrefix}`, "dev", NET.hostVeth],
    ["ip", "link", "set", NET.hostVeth, "up"],
    ["ip", "-n", NODE_NETNS, "link", "set", "lo", "up"],
    [
      "ip",
      "-n",
      NODE_NETNS,
      "addr",
      "add",
      `${NET.nodeLinkIp}/${NET.linkPrefix}`,
      "dev",
      NET.nodeVeth,
    ],
    ["ip", "-n", NODE_NETNS, "link", "set", NET.nodeVeth, "up"],
    ["ip", "-n", NODE_NETNS, "link", "add", NET.bridge, "type", "bridge"],
    PIN_BRIDGE_MAC,
    [
      "ip",
      "-n",
      NODE_NETNS,
      "addr",
      "add",
      `${NET.podGateway}/${NET.podPrefix}`,
      "dev",
      NET.bridge,
    ],
    ["ip", "-n", NODE_NETNS, "link", "set", NET.bridge, "up"],
    // Connections the node itself opens to pods (kwok's port-forward dials) leave from the
    // link address, so a pod can tell them apart from pod and Service traffic, which
    // reaches it from pod IPs or, masqueraded by kube-proxy, from the bridge address.
    [
      "ip",
      "-n",
      NODE_NETNS,
      "route",
      "replace",
      NET.podCidr,
      "dev",
      NET.bridge,
      "proto",
      "kernel",
      "scope",
      "link",
      "src",
      NET.nodeLinkIp,
    ],
    // Service IPs exist only as kube-proxy's DNAT rules, but a connection the node itself
    // opens needs a route before those rules see it.
    [
      "ip",
      "-n",
      NODE_NETNS,
      "route",
      "add",
      NET.serviceCidr,
      "dev",
      NET.bridge,
      "src",
      NET.podGateway,
    ],
    inNode("sysctl", "-qw", "net.ipv4.ip_forward=1"),
    inNode("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"),
    inNode(
      "iptables",
      "-t",
      "nat",
      "-A",
      "POSTROUTING",
      "-s",
      NET.podCidr,
      "-o",
      NET.nodeVeth,
      "-j",
      "MASQUERADE",
    ),
    ["ip", "route", "replace", "unreachable", NET.reserved],
  ];
  for (const step of steps) await must(step);
}

/**
 * A bridge without an address of its own takes the lowest MAC among its ports, so it changed
 * whenever a pod came or went, and every pod holding the old gateway MAC in its neighbour
 * cache went dark for seconds: open tunnels missed keep-alives, watches failed.
 */
const PIN_BRIDGE_MAC = [
  "ip",
  "-n",
  NODE_NETNS,
  "link",
  "set",
  NET.bridge,
  "address",
  NET.bridgeMac,
];

/** Gives a bridge made before its MAC was pinned the fixed one (idempotent). */
export async function pinBridgeMac(): Promise<void> {
  await must(PIN_BRIDGE_MAC);
}

/** Whether the node namespace exists. */
export async function nodeNetworkExists(): Promise<boolean> {
  return (await listNetns()).includes(NODE_NETNS);
}

/** Names of the network namespaces this cluster made (node and pods). */
export async function listClusterNetns(): Promise<string[]> {
  return (await listNetns()).filter((name) =>
    name === NODE_NETNS || name.startsWith(POD_NETNS_PREFIX)
  );
}

async function listNetns(): Promise<string[]> {
  const out = await run(["ip", "netns", "list"]);
  return out.stdout.split("\n").map((line) => line.split(" ")[0]).filter(Boolean);
}

/** Kills every process left in a namespace, then deletes the namespace and its /etc/netns dir. */
export async function deleteNetns(name: string): Promise<void> {
  const pids = (await run(["ip", "netns", "pids", name])).stdout.split("\n").filter(Boolean);
  await Promise.all(pids.map((pid) => stopProcess(Number(pid), 2000)));
  await run(["ip", "netns", "del", name]);
  await Deno.remove(`/etc/netns/${name}`, { recursive: true }).catch(() => {});
}

/** Removes every namespace, link and route the cluster made; fine to call when none exist. */
export async function deleteClusterNetwork(): Promise<void> {
  const names = await listClusterNetns();
  // Pods first, so nothing is left holding a veth into the node namespace.
  for (const name of names.filter((n) => n !== NODE_NETNS)) await deleteNetns(name);
  if (names.includes(NODE_NETNS)) await deleteNetns(NODE_NETNS);
  await run(["ip", "link", "del", NET.hostVeth]);
  await run(["ip", "route", "del", "unreachable", NET.reserved]);
  const leftovers = await Array.fromAsync(Deno.readDir("/etc/netns")).catch(() => []);
  for (const entry of leftovers) {
    if (entry.name.startsWith(POD_NETNS_PREFIX) || entry.name === NODE_NETNS) {
      await Deno.remove(`/etc/netns/${entry.name}`, { recursive: true }).catch(() => {});
    }
  }
}
