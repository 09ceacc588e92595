/**
 * The ways of reaching the benchmark's echo pod, each as an {@link Endpoint} the load
 * client is pointed at: relay and `kubectl port-forward` (forwarding clients on this
 * machine), the direct path (from another pod's network namespace), and the node path kwok
 * dials for every port-forward connection (the kubelet shim's per-connection cost).
 */
import { AGENT_SELECTOR } from "../../tests/e2e/agents.ts";
import { KUBECONFIG, KUBECTL, kubectlJson, podPid } from "../../tests/e2e/harness.ts";
import { startRelay } from "../../tests/e2e/relay_process.ts";

/** The tools a scenario can run against. */
export type ToolName = "relay" | "kubectl" | "direct" | "node-path";

/** Where the load client connects, and the process (if any) forwarding for it. */
export interface Endpoint {
  host: string;
  /** Local port for each remote port asked for, by remote port (`9000/udp` for UDP). */
  ports: Record<string, number>;
  /** Network namespace to run the load client in (none: this machine's). */
  netns?: string;
  /** The forwarding client's pid, for its peak RSS and CPU. */
  pid?: number;
  /** relay's agent's pid (its pod's process on this machine), for its peak RSS and CPU. */
  agentPid?: number;
  stop(): Promise<void>;
}

/** What every tool needs to know about the benchmark's pods. */
export interface BenchPods {
  namespace: string;
  /** The echo pod everything is forwarded to. */
  echoPod: string;
  echoIP: string;
  /** The network namespace of a second pod, where the direct path's client runs. */
  clientNetns: string;
  /** The node namespace, from where kwok dials pods (see scripts/cluster/shim/pod_network.ts). */
  nodeNetns: string;
}

/** A port the scenario needs: a TCP port number, or `N/udp`. */
export type PortSpec = number | `${number}/udp`;

/** Starts `tool` so that it reaches `ports` of the echo pod. */
export async function startTool(
  tool: ToolName,
  pods: BenchPods,
  ports: PortSpec[],
  options: { tunnels?: number } = {},
): Promise<Endpoint> {
  const direct = Object.fromEntries(ports.map((p) => [String(p), parseInt(String(p))]));
  switch (tool) {
    case "direct":
      return { host: pods.echoIP, ports: direct, netns: pods.clientNetns, stop: async () => {} };
    case "node-path":
      return { host: pods.echoIP, ports: direct, netns: pods.nodeNetns, stop: async () => {} };
    case "relay":
      return await startRelayTool(pods, ports, options.tunnels);
    case "kubectl":
      return await startKubectl(pods, ports);
  }
}

async function startRelayTool(
  pods: BenchPods,
  ports: PortSpec[],
  tunnels?: number,
): Promise<Endpoint> {
  const specs = ports.map((p) => typeof p === "number" ? `:${p}` : `:${parseInt(p)}@udp`);
  const relay = await startRelay(
    [
      "-n",
      pods.namespace,
      ...(tunnels ? ["--tunnels", String(tunnels)] : []),
      `pod/${pods.echoPod}`,
      ...specs,
    ],
    { readyLines: ports.length, timeoutMs: 120_000 },
  );
  // Ready lines come in the order of the port arguments.
  const local = Object.fromEntries(ports.map((p, i) => [String(p), relay.ports[i]]));
  // The pool fills its other tunnels in the background; let it, so round one is not short.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  return {
    host: "127.0.0.1",
    ports: local,
    pid: relay.pid,
    agentPid: await agentPid(pods.namespace),
    stop: async () => void await relay.stop(),
  };
}

/** The process of the one live relay agent pod in `namespace` (the bench runs one relay). */
async function agentPid(namespace: string): Promise<number | undefined> {
  const list = await kubectlJson<{
    items: { metadata: { name: string; deletionTimestamp?: string }; status: { phase?: string } }[];
  }>(["get", "pods", "-n", namespace, "-l", AGENT_SELECTOR]);
  const live = list.items.filter((p) =>
    !p.metadata.deletionTimestamp && p.status.phase === "Running"
  );
  if (live.length !== 1) return undefined;
  return await podPid(namespace, live[0].metadata.name, "agent").catch(() => undefined);
}

async function startKubectl(pods: BenchPods, ports: PortSpec[]): Promise<Endpoint> {
  if (ports.some((p) => typeof p !== "number")) {
    throw new Error("kubectl port-forward does not forward UDP");
  }
  const child = new Deno.Command(KUBECTL, {
    args: [
      `--kubeconfig=${KUBECONFIG}`,
      "port-forward",
      "-n",
      pods.namespace,
      "--address=127.0.0.1",
      `pod/${pods.echoPod}`,
      ...ports.map((p) => `:${p}`),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const local: Record<string, number> = {};
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* exited already */ }
    await child.status;
  };
  const timer = setTimeout(() => void stop(), 30_000);
  try {
    while (Object.keys(local).length < ports.length) {
      const { value, done } = await lines.read();
      if (done) throw new Error("kubectl port-forward exited before listening");
      text += value;
      for (const m of text.matchAll(/Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)/g)) {
        local[m[2]] = Number(m[1]);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  // kubectl prints a line per connection; keep its pipe drained or it blocks.
  (async () => {
    while (!(await lines.read().catch(() => ({ done: true }))).done) { /* drain */ }
  })();
  return { host: "127.0.0.1", ports: local, pid: child.pid, stop };
}

/** The peak resident set of a process (VmHWM), in MB, or NaN once it is gone. */
export async function peakRssMb(pid: number): Promise<number> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const kb = Number(status.match(/^VmHWM:\s+(\d+) kB/m)?.[1]);
    return kb / 1024;
  } catch {
    return NaN;
  }
}

/**
 * Resets a process's peak RSS to its current RSS (`5` to /proc/PID/clear_refs), so a
 * scenario's peak is its own and not what an earlier one left; best effort.
 */
export async function resetPeakRss(pid: number): Promise<void> {
  await Deno.writeTextFile(`/proc/${pid}/clear_refs`, "5").catch(() => {});
}
