/**
 * The ways of reaching the benchmark's echo pod, each as an {@link Endpoint} the load
 * client is pointed at: relay, `kubectl port-forward` and krelay (forwarding clients on this
 * machine), the direct path (from another pod's network namespace), and the node path kwok
 * dials for every port-forward connection (the kubelet shim's per-connection cost).
 */
import { AGENT_SELECTOR } from "../../tests/e2e/agents.ts";
import {
  kubectlJson,
  kubectlPortForward,
  podPid,
  REPO_DIR,
  runCommand,
} from "../../tests/e2e/harness.ts";
import { startRelay } from "../../tests/e2e/relay_process.ts";

/** The tools a scenario can run against. */
export type ToolName = "relay" | "kubectl" | "krelay" | "direct" | "node-path";

/** Where the load client connects, and the process (if any) forwarding for it. */
export interface Endpoint {
  host: string;
  /** Local port for each remote port asked for, by remote port (`9000/udp` for UDP). */
  ports: Record<string, number>;
  /** Network namespace to run the load client in (none: this machine's). */
  netns?: string;
  /** The forwarding client's pid, for its peak RSS and CPU. */
  pid?: number;
  /**
   * The in-cluster end's pid (relay's agent, krelay's server: its pod's process on this
   * machine), for its peak RSS and CPU.
   */
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
  /** krelay's client and server image, or why the bench has no krelay. */
  krelay: Krelay | { skipped: string };
  /**
   * The kubeconfig the forwarding tools use: the cluster's own, or one whose server is a
   * latency proxy in front of the API server (latency_proxy.ts).
   */
  kubeconfig: string;
}

/** krelay as scripts/build-cluster.sh builds it. */
export interface Krelay {
  /** Its module version (a tag of github.com/knight42/krelay). */
  version: string;
  /** Its client, kubectl-relay. */
  client: string;
  /** The server image it is told to run; the kubelet shim maps it to the built server. */
  serverImage: string;
}

/**
 * Builds krelay (github.com/knight42/krelay) from the Go module proxy unless it is cached,
 * or says why it cannot be.
 */
export async function findKrelay(): Promise<Krelay | { skipped: string }> {
  const built = await runCommand(["bash", `${REPO_DIR}/scripts/build-cluster.sh`, "krelay"]);
  const dir = built.stdout.trim();
  if (built.code !== 0 || !dir) {
    const why = built.stderr.trim().split("\n").pop() || `exit ${built.code}`;
    return { skipped: `krelay skipped: scripts/build-cluster.sh krelay failed: ${why}` };
  }
  const version = dir.slice(dir.lastIndexOf("/krelay-") + "/krelay-".length);
  return {
    version,
    client: `${dir}/kubectl-relay`,
    serverImage: `ghcr.io/knight42/krelay-server:${version}`,
  };
}

/** A port the scenario needs: a TCP port number, or `N/udp`. */
export type PortSpec = number | `${number}/udp`;

/** Options of {@link startTool}. */
export interface StartOptions {
  /** Tunnels relay keeps (default: relay's own). */
  tunnels?: number;
  /**
   * Told as soon as the tool says it listens, before the bench's own bookkeeping (finding its
   * agent's pid, letting relay's pool fill): what a user's first connection would meet.
   */
  onListening?: (host: string, ports: Record<string, number>) => Promise<void>;
}

/** Starts `tool` so that it reaches `ports` of the echo pod. */
export async function startTool(
  tool: ToolName,
  pods: BenchPods,
  ports: PortSpec[],
  options: StartOptions = {},
): Promise<Endpoint> {
  const direct = Object.fromEntries(ports.map((p) => [String(p), parseInt(String(p))]));
  switch (tool) {
    case "direct":
      return { host: pods.echoIP, ports: direct, netns: pods.clientNetns, stop: async () => {} };
    case "node-path":
      return { host: pods.echoIP, ports: direct, netns: pods.nodeNetns, stop: async () => {} };
    case "relay":
      return await startRelayTool(pods, ports, options);
    case "kubectl":
      return await startKubectl(pods, ports, options);
    case "krelay":
      return await startKrelay(pods, ports, options);
  }
}

async function startRelayTool(
  pods: BenchPods,
  ports: PortSpec[],
  { tunnels, onListening }: StartOptions,
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
    { readyLines: ports.length, timeoutMs: 120_000, env: { KUBECONFIG: pods.kubeconfig } },
  );
  // Ready lines come in the order of the port arguments.
  const local = Object.fromEntries(ports.map((p, i) => [String(p), relay.ports[i]]));
  if (onListening) {
    await onListening("127.0.0.1", local).catch(async (error) => {
      await relay.stop();
      throw error;
    });
  } // The pool fills its other tunnels in the background; let it, so round one is not short.
  else await new Promise((resolve) => setTimeout(resolve, 1_000));
  return {
    host: "127.0.0.1",
    ports: local,
    pid: relay.pid,
    agentPid: await agentPid(pods.namespace, AGENT_SELECTOR, "agent"),
    stop: async () => void await relay.stop(),
  };
}

/**
 * The process of the one live pod matching `selector` in `namespace` (the bench runs one
 * forwarding tool at a time), or undefined.
 */
async function agentPid(
  namespace: string,
  selector: string,
  container: string,
): Promise<number | undefined> {
  const list = await kubectlJson<{
    items: { metadata: { name: string; deletionTimestamp?: string }; status: { phase?: string } }[];
  }>(["get", "pods", "-n", namespace, "-l", selector]);
  const live = list.items.filter((p) =>
    !p.metadata.deletionTimestamp && p.status.phase === "Running"
  );
  if (live.length !== 1) return undefined;
  return await podPid(namespace, live[0].metadata.name, container).catch(() => undefined);
}

async function startKubectl(
  pods: BenchPods,
  ports: PortSpec[],
  { onListening }: StartOptions,
): Promise<Endpoint> {
  if (ports.some((p) => typeof p !== "number")) {
    throw new Error("kubectl port-forward does not forward UDP");
  }
  const tcp = ports as number[];
  const forward = await kubectlPortForward(
    pods.namespace,
    `pod/${pods.echoPod}`,
    tcp,
    pods.kubeconfig,
  );
  const local = Object.fromEntries(tcp.map((p, i) => [String(p), forward.localPorts[i]]));
  await onListening?.("127.0.0.1", local).catch(async (error) => {
    await forward.close();
    throw error;
  });
  return {
    host: "127.0.0.1",
    ports: local,
    pid: forward.pid,
    stop: forward.close,
  };
}

/**
 * krelay forwarding `ports` of the echo pod. Its server runs as a Job, put in the bench's
 * namespace (by its --patch) so the namespace's deletion takes anything left behind.
 */
async function startKrelay(
  pods: BenchPods,
  ports: PortSpec[],
  { onListening }: StartOptions,
): Promise<Endpoint> {
  if ("skipped" in pods.krelay) throw new Error(pods.krelay.skipped);
  const child = new Deno.Command(pods.krelay.client, {
    args: [
      `--kubeconfig=${pods.kubeconfig}`,
      "-n",
      pods.namespace,
      `--server.image=${pods.krelay.serverImage}`,
      `--patch=${JSON.stringify({ metadata: { namespace: pods.namespace } })}`,
      "--address=127.0.0.1",
      `pod/${pods.echoPod}`,
      ...ports.map((p) => typeof p === "number" ? `:${p}` : `:${parseInt(p)}@udp`),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // It removes its server Job on SIGINT, not on SIGTERM.
  const stop = async () => {
    try {
      child.kill("SIGINT");
    } catch { /* exited already */ }
    await child.status;
  };
  const local = await readKrelayPorts(child.stderr, ports.length).catch(async (error) => {
    await stop();
    throw error;
  });
  await onListening?.("127.0.0.1", local).catch(async (error) => {
    await stop();
    throw error;
  });
  return {
    host: "127.0.0.1",
    ports: local,
    pid: child.pid,
    agentPid: await agentPid(pods.namespace, "app=krelay-server", "krelay-server"),
    stop,
  };
}

/**
 * Reads krelay's log until it has named `count` local ports (by remote port key: `9000`,
 * `9000/udp`), then keeps draining it: krelay logs every connection and would block on a
 * full pipe.
 */
async function readKrelayPorts(
  log: ReadableStream<Uint8Array>,
  count: number,
): Promise<Record<string, number>> {
  const lines = log.pipeThrough(new TextDecoderStream()).getReader();
  const local: Record<string, number> = {};
  let text = "";
  // Its server is a Job: a pod to schedule and start before it listens.
  const timer = setTimeout(() => void lines.cancel().catch(() => {}), 60_000);
  try {
    while (Object.keys(local).length < count) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`krelay did not listen: ${text.trim().split("\n").pop() ?? ""}`);
      text += value;
      const forwarding = /Forwarding protocol=(tcp|udp) localAddr=[^ ]*:(\d+) remotePort=(\d+)/g;
      for (const [, protocol, port, remote] of text.matchAll(forwarding)) {
        local[protocol === "udp" ? `${remote}/udp` : remote] = Number(port);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  (async () => {
    while (!(await lines.read().catch(() => ({ done: true }))).done) { /* drain */ }
  })();
  return local;
}

/** The resident set of a process now (VmRSS), in MB, or NaN once it is gone. */
export async function currentRssMb(pid: number): Promise<number> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    return Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1]) / 1024;
  } catch {
    return NaN;
  }
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
