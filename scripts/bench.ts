/**
 * `deno task bench`: relay against `kubectl port-forward` and the direct path on the local
 * cluster (issue 6). A measurement, not a test: it asserts nothing about the figures.
 *
 *   deno task bench [--quick] [--rounds N] [--json FILE] [--markdown FILE]
 *                   [--only bulk,connrate,...] [--bulk-mib N] [--connrate-seconds S]
 *                   [--connections N] [--udp-rates 500,1000,...] [--startup-runs N]
 *
 * Each scenario starts a fresh instance of every forwarding tool (so one scenario's peak
 * RSS or warm buffers never leak into the next), then runs rounds in which the tools take
 * turns in rotated order, so the noise of a busy machine falls on all of them alike. The
 * load comes from scripts/bench/load.ts in a process of its own.
 */
import { parseArgs } from "node:util";
import {
  applyYaml,
  createTestNamespace,
  ensureCluster,
  kubectlJson,
  podNetns,
  podPid,
  runCommand,
  waitForReadyPod,
} from "../tests/e2e/harness.ts";
import { clusterPid, cpuUsed, snapshotCpu } from "./bench/cpu.ts";
import {
  computeFigures,
  cpuRows,
  formatMarkdown,
  formatTable,
  formatText,
  type RawResults,
  summarize,
} from "./bench/report.ts";
import {
  type BenchConfig,
  defaultConfig,
  quickConfig,
  type Scenario,
  scenarios,
} from "./bench/scenarios.ts";
import { timeToFirstEcho } from "./bench/startup.ts";
import { median, rotate } from "./bench/stats.ts";
import {
  type BenchPods,
  type Endpoint,
  findKrelay,
  peakRssMb,
  resetPeakRss,
  startTool,
  type ToolName,
} from "./bench/tools.ts";

const LOAD_SCRIPT = new URL("./bench/load.ts", import.meta.url).pathname;
/** kwok and kube-proxy live here; see scripts/cluster/config.ts. */
const NODE_NETNS = "relay-node";

function parseFlags(): { config: BenchConfig; json?: string; markdown?: string; only?: string[] } {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      rounds: { type: "string" },
      json: { type: "string" },
      markdown: { type: "string" },
      only: { type: "string" },
      "bulk-mib": { type: "string" },
      "connrate-seconds": { type: "string" },
      connections: { type: "string" },
      "udp-rates": { type: "string" },
      "startup-runs": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "deno task bench [--quick] [--rounds N] [--json FILE] [--markdown FILE]\n" +
        "  [--only bulk,connrate,latency,concurrency,hol,udp,startup] [--bulk-mib N]\n" +
        "  [--connrate-seconds S] [--connections N] [--udp-rates R1,R2,...] [--startup-runs N]",
    );
    Deno.exit(0);
  }
  const config = { ...(values.quick ? quickConfig : defaultConfig) };
  const num = (v: string | undefined, name: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: not a positive number: ${v}`);
    return n;
  };
  if (values.rounds) config.rounds = num(values.rounds, "rounds");
  if (values["bulk-mib"]) config.bulkBytes = num(values["bulk-mib"], "bulk-mib") * (1 << 20);
  if (values["connrate-seconds"]) {
    config.connrateSeconds = num(values["connrate-seconds"], "connrate-seconds");
  }
  if (values.connections) config.concurrencyConnections = num(values.connections, "connections");
  if (values["udp-rates"]) {
    config.udpRates = values["udp-rates"].split(",").map((r) => num(r, "udp-rates"));
  }
  if (values["startup-runs"]) config.startupRuns = num(values["startup-runs"], "startup-runs");
  return {
    config,
    json: values.json,
    markdown: values.markdown,
    only: values.only?.split(","),
  };
}

/**
 * The echo pod everything forwards to, a second pod whose namespace hosts "direct", and
 * krelay's build.
 */
async function createPods(namespace: string): Promise<BenchPods> {
  const pod = (name: string) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, labels: { app: name } },
    spec: { containers: [{ name: "echo", image: "relay-test/echo:latest" }] },
  });
  await applyYaml(
    JSON.stringify({
      apiVersion: "v1",
      kind: "List",
      items: [pod("bench-echo"), pod("bench-client")],
    }),
    namespace,
  );
  await waitForReadyPod(namespace, "app=bench-echo");
  await waitForReadyPod(namespace, "app=bench-client");
  const echo = await kubectlJson<{ status: { podIP: string } }>(
    ["get", "pod", "bench-echo", "-n", namespace],
  );
  const clientNetns = await podNetns(namespace, "bench-client");
  await setTimeWaitReuse(clientNetns, "1");
  return {
    namespace,
    echoPod: "bench-echo",
    echoIP: echo.status.podIP,
    clientNetns,
    nodeNetns: NODE_NETNS,
    krelay: await findKrelay(),
  };
}

const TW_REUSE = "net.ipv4.tcp_tw_reuse";

/**
 * Sets tcp_tw_reuse in a network namespace and returns the value it had. The connection-rate
 * client closes first, so each connection holds its ephemeral port for 60 s in TIME_WAIT:
 * from a pod's namespace the 28k ports ran out a few seconds into a 20 s run and capped
 * "direct" at ~870 conn/s (4,500 with reuse). relay's and kubectl's clients connect over
 * loopback, where Linux reuses them already (the default, 2, means loopback only).
 */
async function setTimeWaitReuse(netns: string, value: string): Promise<string> {
  const sysctl = ["ip", "netns", "exec", netns, "sysctl", "-n"];
  const before = (await runCommand([...sysctl, TW_REUSE])).stdout.trim();
  const set = await runCommand([...sysctl, "-w", `${TW_REUSE}=${value}`]);
  if (set.code !== 0) throw new Error(`sysctl ${TW_REUSE} in ${netns}: ${set.stderr.trim()}`);
  return before;
}

/** Runs the load client once against `endpoint`; its JSON result, or throws. */
async function runLoad(endpoint: Endpoint, request: unknown): Promise<Record<string, unknown>> {
  const deno = [Deno.execPath(), "run", "--allow-all", "--unstable-net", LOAD_SCRIPT];
  const argv = endpoint.netns ? ["ip", "netns", "exec", endpoint.netns, ...deno] : deno;
  const out = await new Deno.Command(argv[0], {
    args: [...argv.slice(1), JSON.stringify(request)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(600_000),
  }).output();
  const text = new TextDecoder();
  if (out.code !== 0) {
    throw new Error(text.decode(out.stderr).trim().split("\n").pop() || `exit ${out.code}`);
  }
  return JSON.parse(text.decode(out.stdout).trim().split("\n").pop()!);
}

function brief(result: Record<string, unknown>, keys: string[]): string {
  return keys.map((k) =>
    `${k}=${typeof result[k] === "number" ? (result[k] as number).toPrecision(4) : result[k]}`
  )
    .join(" ");
}

/**
 * The startup scenario's rounds: each tool started anew `config.startupRuns` times a round,
 * in turns as the other scenarios take them; a round's figure is the median of its starts.
 */
async function runStartups(
  scenario: Scenario,
  pods: BenchPods,
  config: BenchConfig,
  raw: RawResults,
): Promise<void> {
  const [port] = scenario.ports;
  const tools = scenario.tools.filter((tool) => {
    if (tool !== "krelay" || !("skipped" in pods.krelay)) return true;
    raw.skipped[scenario.name][tool] = pods.krelay.skipped;
    return false;
  });
  for (let round = 0; round < config.rounds; round++) {
    for (const tool of rotate(tools, round)) {
      const rounds = (raw.rounds[scenario.name][tool] ??= []);
      try {
        const samples: number[] = [];
        for (let i = 0; i < config.startupRuns; i++) {
          samples.push(await timeToFirstEcho(tool, pods, port));
        }
        const result = { first_echo_ms: median(samples), samples_ms: samples };
        rounds.push(result);
        console.error(
          `bench: ${scenario.name} round ${round + 1} ${tool}: ${brief(result, ["first_echo_ms"])}`,
        );
      } catch (error) {
        rounds.push(null);
        console.error(`bench: ${scenario.name} round ${round + 1} ${tool} failed: ${error}`);
      }
    }
  }
}

async function main(): Promise<void> {
  const { config, json, markdown, only } = parseFlags();
  const chosen = scenarios.filter((s) => !only || only.includes(s.name));
  const started = new Date();
  console.error(`bench: ${chosen.map((s) => s.name).join(", ")}; ${config.rounds} round(s) each`);
  await ensureCluster();
  await using ns = await createTestNamespace("relay-bench");
  const pods = await createPods(ns.name);
  const krelaySkipped = "skipped" in pods.krelay ? pods.krelay.skipped : undefined;
  if (krelaySkipped) console.error(`bench: ${krelaySkipped}`);
  // The node path's client runs in the node's namespace: the same reuse there, undone after.
  const nodeReuse = await setTimeWaitReuse(NODE_NETNS, "1");
  await using _restoreNode = {
    [Symbol.asyncDispose]: () => setTimeWaitReuse(NODE_NETNS, nodeReuse).then(() => {}, () => {}),
  };
  const raw: RawResults = { rounds: {}, skipped: {} };
  // The processes every path shares; each tool adds its client (and relay its agent).
  const pathPids = {
    apiserver: await clusterPid("kube-apiserver"),
    kwok: await clusterPid("kwok"),
    echo: await podPid(pods.namespace, pods.echoPod, "echo").catch(() => undefined),
  };

  for (const scenario of chosen) {
    // Another `deno task test` on the machine ends with `cluster down`: stop with the reason
    // instead of printing a table of failures.
    const alive = await kubectlJson(["get", "pod", pods.echoPod, "-n", pods.namespace])
      .then(() => true, () => false);
    if (!alive) {
      throw new Error(
        `the echo pod is gone before "${scenario.name}": the cluster was brought down or ` +
          "restarted during the run (is another `deno task test` running?); run again",
      );
    }
    raw.rounds[scenario.name] = {};
    raw.skipped[scenario.name] = {};
    if (!scenario.request) {
      await runStartups(scenario, pods, config, raw);
      continue;
    }
    const request = scenario.request;
    const endpoints = new Map<ToolName, Endpoint>();
    try {
      for (const tool of scenario.tools) {
        try {
          endpoints.set(
            tool,
            await startTool(tool, pods, scenario.ports, { tunnels: scenario.tunnels }),
          );
        } catch (error) {
          raw.skipped[scenario.name][tool] = String(error instanceof Error ? error.message : error);
          console.error(
            `bench: ${scenario.name}/${tool} skipped: ${raw.skipped[scenario.name][tool]}`,
          );
        }
      }
      const tools = scenario.tools.filter((t) => endpoints.has(t));
      for (let round = 0; round < config.rounds; round++) {
        for (const tool of rotate(tools, round)) {
          const endpoint = endpoints.get(tool)!;
          const rounds = (raw.rounds[scenario.name][tool] ??= []);
          // Peak RSS of the forwarding client and, for relay, of its agent.
          const rssPids = scenario.measureRss
            ? Object.entries({ rss_mb: endpoint.pid, agent_rss_mb: endpoint.agentPid })
            : [];
          for (const [, pid] of rssPids) if (pid) await resetPeakRss(pid);
          const pids = { ...pathPids, client: endpoint.pid, agent: endpoint.agentPid };
          try {
            const cpuBefore = await snapshotCpu(pids);
            const result = await runLoad(endpoint, request(endpoint, config));
            if (scenario.cpuPer) {
              const cpuAfter = await snapshotCpu(pids);
              const loadCpu = typeof result.cpu_s === "number" ? result.cpu_s : undefined;
              Object.assign(result, cpuUsed(cpuBefore, cpuAfter, loadCpu, scenario.cpuPer(result)));
            }
            for (const [key, pid] of rssPids) if (pid) result[key] = await peakRssMb(pid);
            rounds.push(result);
            const keys = scenario.figures.filter((f) => !f.detail && f.key in result)
              .map((f) => f.key);
            console.error(
              `bench: ${scenario.name} round ${round + 1} ${tool}: ${brief(result, keys)}`,
            );
          } catch (error) {
            rounds.push(null);
            console.error(`bench: ${scenario.name} round ${round + 1} ${tool} failed: ${error}`);
          }
        }
      }
    } finally {
      for (const endpoint of endpoints.values()) await endpoint.stop().catch(() => {});
    }
  }

  const figures = computeFigures(chosen, raw);
  const summary = summarize(figures);
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1];
  const machine = `${navigator.hardwareConcurrency} cores, ${cpu ?? "unknown CPU"}`;
  console.log(`\nrelay benchmark, ${started.toISOString().slice(0, 10)}, ${machine}`);
  console.log(`${config.rounds} round(s) per scenario, medians; tools alternated round by round\n`);
  console.log(formatTable(chosen, figures));
  const cpuTable = formatText(cpuRows(chosen, figures));
  if (cpuTable) {
    console.log(
      "\nwhere the CPU went (user + system seconds of each process on the path, medians):\n" +
        cpuTable,
    );
  }
  if (krelaySkipped) console.log(`\n${krelaySkipped}.`);
  console.log(
    `kubelet shim's per-connection path (node-path: kwok's dial into the pod, DNAT to its ` +
      `localhost) vs direct: connection rate ${summary.node_path_connrate_vs_direct ?? "-"}×, ` +
      `p50 latency ${summary.node_path_latency_p50_vs_direct ?? "-"}×`,
  );
  console.log(`\nsummary: ${JSON.stringify(summary)}`);
  if (markdown) await Deno.writeTextFile(markdown, formatMarkdown(chosen, figures) + "\n");
  if (json) {
    await Deno.writeTextFile(
      json,
      JSON.stringify(
        {
          date: started.toISOString(),
          machine,
          config,
          krelay: "skipped" in pods.krelay ? pods.krelay.skipped : pods.krelay.version,
          summary,
          figures,
          skipped: raw.skipped,
          rounds: raw.rounds,
        },
        (_key, value) => typeof value === "number" && !Number.isFinite(value) ? null : value,
        2,
      ) + "\n",
    );
  }
}

if (import.meta.main) await main();
