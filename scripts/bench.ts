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
  KUBECONFIG,
  KUBECTL,
  kubectlJson,
  podNetns,
  podPid,
  REPO_DIR,
  runCommand,
  waitForReadyPod,
} from "../tests/e2e/harness.ts";
import { clusterPid, cpuUsed, snapshotCpu } from "./bench/cpu.ts";
import {
  computeFigures,
  cpuRows,
  type Figures,
  formatMarkdown,
  formatTable,
  formatText,
  type RawResults,
  summarize,
  type Summary,
} from "./bench/report.ts";
import {
  type BenchConfig,
  defaultConfig,
  quickConfig,
  type Scenario,
  scenarios,
} from "./bench/scenarios.ts";
import { timeToFirstEcho } from "./bench/startup.ts";
import {
  findToxiproxy,
  kubectlGetNsMs,
  type LatencyProxy,
  startLatencyProxy,
} from "./bench/latency_proxy.ts";
import { runLoad } from "./bench/load.ts";
import { median, rotate } from "./bench/stats.ts";
import {
  type BenchPods,
  currentRssMb,
  type Endpoint,
  findKrelay,
  peakRssMb,
  resetPeakRss,
  startTool,
  type ToolName,
} from "./bench/tools.ts";

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
      rtt: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "deno task bench [--quick] [--rounds N] [--json FILE] [--markdown FILE]\n" +
        "  [--only bulk,download,upload,connrate,http,fetch,latency,concurrency,hol,udp,startup] [--bulk-mib N]\n" +
        "  [--connrate-seconds S] [--connections N] [--udp-rates R1,R2,...] [--startup-runs N]\n" +
        "  [--rtt 0,20ms,80ms]  round trips between the tools and the API server (default 0,20ms)",
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
  if (values.rtt) config.rtts = values.rtt.split(",").map(parseRtt);
  return {
    config,
    json: values.json,
    markdown: values.markdown,
    only: values.only?.split(",").map(scenarioName),
  };
}

/** A scenario's name as `--only` gives it; anything else is an error naming it. */
function scenarioName(text: string): string {
  const name = text.trim();
  if (!scenarios.some((s) => s.name === name)) {
    throw new Error(
      `--only: no scenario ${JSON.stringify(text)} (${scenarios.map((s) => s.name).join(", ")})`,
    );
  }
  return name;
}

/** `0`, `20ms`, `20` (ms) or `0.02s`: a round trip in milliseconds. */
function parseRtt(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  if (!match) throw new Error(`--rtt: not a duration: ${text}`);
  return Number(match[1]) * (match[2] === "s" ? 1000 : 1);
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
    kubeconfig: KUBECONFIG,
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

/** The command line, or one line naming what is wrong with it and exit 2. */
function flagsOrExit(): ReturnType<typeof parseFlags> {
  try {
    return parseFlags();
  } catch (error) {
    console.error(`bench: ${error instanceof Error ? error.message : error}`);
    Deno.exit(2);
  }
}

async function main(): Promise<void> {
  const { config, json, markdown, only } = flagsOrExit();
  const chosen = scenarios.filter((s) => !only || only.includes(s.name));
  const started = new Date();
  console.error(
    `bench: ${chosen.map((s) => s.name).join(", ")}; ${config.rounds} round(s) each, at ` +
      `${config.rtts.map((r) => `${r} ms`).join(" and ")} round trip to the API server`,
  );
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
  // The processes every path shares; each tool adds its client (and relay its agent).
  const pathPids = {
    apiserver: await clusterPid("kube-apiserver"),
    kwok: await clusterPid("kwok"),
    echo: await podPid(pods.namespace, pods.echoPod, "echo").catch(() => undefined),
  };
  const toxiproxy = config.rtts.some((rtt) => rtt > 0) ? await findToxiproxy() : undefined;

  const runs: RttRun[] = [];
  for (const rtt of config.rtts) {
    let proxy: LatencyProxy | undefined;
    if (rtt > 0) {
      if (typeof toxiproxy !== "string") {
        console.error(`bench: ${rtt} ms skipped: ${toxiproxy?.skipped}`);
        runs.push({ rtt, skipped: toxiproxy?.skipped ?? "no latency proxy" });
        continue;
      }
      proxy = await startLatencyProxy(toxiproxy, rtt);
    }
    try {
      const kubeconfig = proxy?.kubeconfig ?? KUBECONFIG;
      const getNsMs = await kubectlGetNsMs(KUBECTL, kubeconfig);
      console.error(
        `bench: ${rtt} ms round trip: \`kubectl get ns\` takes ${getNsMs.toFixed(0)} ms`,
      );
      // The direct and node paths never cross the API server: measured at 0 ms only.
      const here = rtt === 0 ? chosen : chosen.map((s) => ({
        ...s,
        tools: s.tools.filter((t) => t !== "direct" && t !== "node-path"),
      }));
      const raw = await runScenarios(here, { ...pods, kubeconfig }, config, pathPids);
      const figures = computeFigures(here, raw);
      runs.push({ rtt, getNsMs, scenarios: here, raw, figures, summary: summarize(figures) });
    } finally {
      await proxy?.stop();
    }
  }

  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1];
  const machine = `${navigator.hardwareConcurrency} cores, ${cpu ?? "unknown CPU"}`;
  const commit = (await runCommand(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"]))
    .stdout.trim();
  console.log(
    `\nrelay benchmark, ${started.toISOString().slice(0, 10)}, ${machine}, commit ${commit}`,
  );
  console.log(`${config.rounds} round(s) per scenario, medians; tools alternated round by round`);
  const markdownParts: string[] = [];
  for (const run of runs) {
    if (!("figures" in run)) {
      console.log(`\n${run.rtt} ms round trip: skipped (${run.skipped})`);
      continue;
    }
    console.log(
      `\n${run.rtt} ms round trip between the tools and the API server ` +
        `(kubectl get ns: ${run.getNsMs.toFixed(0)} ms)\n`,
    );
    console.log(formatTable(run.scenarios, run.figures));
    const cpuTable = formatText(cpuRows(run.scenarios, run.figures));
    if (cpuTable) {
      console.log(
        "\nwhere the CPU went (user + system seconds of each process on the path, medians):\n" +
          cpuTable,
      );
    }
    markdownParts.push(
      `#### ${run.rtt} ms round trip (kubectl get ns: ${run.getNsMs.toFixed(0)} ms)\n\n` +
        formatMarkdown(run.scenarios, run.figures),
    );
  }
  if (krelaySkipped) console.log(`\n${krelaySkipped}.`);
  const summary = combinedSummary(runs);
  const atZero = runs.find((r) => r.rtt === 0 && "summary" in r) as MeasuredRun | undefined;
  if (atZero) {
    console.log(
      `\nkubelet shim's per-connection path (node-path: kwok's dial into the pod, DNAT to its ` +
        `localhost) vs direct: connection rate ${
          atZero.summary.node_path_connrate_vs_direct ?? "-"
        }×, p50 latency ${atZero.summary.node_path_latency_p50_vs_direct ?? "-"}×`,
    );
  }
  console.log(`\nsummary: ${JSON.stringify(summary)}`);
  if (markdown) await Deno.writeTextFile(markdown, markdownParts.join("\n\n") + "\n");
  if (json) {
    await Deno.writeTextFile(
      json,
      JSON.stringify(
        {
          date: started.toISOString(),
          machine,
          commit,
          config,
          krelay: "skipped" in pods.krelay ? pods.krelay.skipped : pods.krelay.version,
          summary,
          runs: runs.map((run) =>
            "figures" in run
              ? {
                rtt_ms: run.rtt,
                kubectl_get_ns_ms: run.getNsMs,
                figures: run.figures,
                skipped: run.raw.skipped,
                rounds: run.raw.rounds,
              }
              : { rtt_ms: run.rtt, skipped: run.skipped }
          ),
        },
        (_key, value) => typeof value === "number" && !Number.isFinite(value) ? null : value,
        2,
      ) + "\n",
    );
  }
}

/** One round trip's results, or why it was not measured. */
interface MeasuredRun {
  rtt: number;
  getNsMs: number;
  scenarios: Scenario[];
  raw: RawResults;
  figures: Figures;
  summary: Summary;
}
type RttRun = MeasuredRun | { rtt: number; skipped: string };

/**
 * The summary's keys: at 0 ms today's keys as they were, and for every round trip measured
 * the headline ratios under `rtt<ms>.`, with the client's idle and peak RSS.
 */
function combinedSummary(runs: RttRun[]): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const run of runs) {
    if (!("summary" in run)) continue;
    if (run.rtt === 0) Object.assign(out, run.summary);
    const s = run.summary;
    const prefix = `rtt${run.rtt}.`;
    const headline: Record<string, number | null> = {
      startup_vs_kubectl: s.startup_vs_kubectl,
      startup_vs_krelay: s.startup_vs_krelay,
      newconn_p50_vs_kubectl: s.newconn_p50_vs_kubectl,
      throughput_vs_kubectl: s.throughput_vs_kubectl,
      throughput_down_vs_kubectl: s.throughput_down_vs_kubectl,
      throughput_up_vs_kubectl: s.throughput_up_vs_kubectl,
      latency_p50_vs_kubectl: s.latency_p50_vs_kubectl,
      http_fresh_conn_p50_vs_kubectl: s.http_fresh_conn_p50_vs_kubectl,
      fetch_p50_vs_kubectl: s.fetch_p50_vs_kubectl,
      client_rss_idle_mb: s.client_rss_idle_mb,
      client_rss_peak_mb: s.client_rss_mb,
      client_rss_after_mb: s.client_rss_after_mb,
    };
    for (const [key, value] of Object.entries(headline)) out[prefix + key] = value;
  }
  return out;
}

/** Runs `chosen` against every tool, rounds alternating the tools; their raw results. */
async function runScenarios(
  chosen: Scenario[],
  pods: BenchPods,
  config: BenchConfig,
  pathPids: Record<string, number | undefined>,
): Promise<RawResults> {
  const raw: RawResults = { rounds: {}, skipped: {} };
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
    const startedAt = new Map<ToolName, number>();
    try {
      for (const tool of scenario.tools) {
        try {
          endpoints.set(
            tool,
            await startTool(tool, pods, scenario.ports, { tunnels: scenario.tunnels }),
          );
          startedAt.set(tool, performance.now());
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
          // Before any load: what the tool holds just forwarding (idle), once its start is over.
          if (round === 0 && rssPids.length > 0) {
            const wait = startedAt.get(tool)! + config.idleSettleSeconds * 1000 - performance.now();
            if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          }
          const idle: Record<string, number> = {};
          for (const [key, pid] of rssPids) {
            if (pid) idle[key.replace(/_mb$/, "_idle_mb")] = await currentRssMb(pid);
          }
          for (const [, pid] of rssPids) if (pid) await resetPeakRss(pid);
          const pids = { ...pathPids, client: endpoint.pid, agent: endpoint.agentPid };
          try {
            const cpuBefore = await snapshotCpu(pids);
            const result = await runLoad(request(endpoint, config), endpoint.netns);
            if (scenario.cpuPer) {
              const cpuAfter = await snapshotCpu(pids);
              const loadCpu = typeof result.cpu_s === "number" ? result.cpu_s : undefined;
              Object.assign(result, cpuUsed(cpuBefore, cpuAfter, loadCpu, scenario.cpuPer(result)));
            }
            for (const [key, pid] of rssPids) if (pid) result[key] = await peakRssMb(pid);
            if (scenario.rssAfter && round === 0 && config.rssSettleSeconds > 0) {
              await new Promise((resolve) => setTimeout(resolve, config.rssSettleSeconds * 1000));
              for (const [key, pid] of rssPids) {
                if (pid) result[key.replace(/_mb$/, "_after_mb")] = await currentRssMb(pid);
              }
            }
            Object.assign(result, idle);
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

  return raw;
}

if (import.meta.main) await main();
