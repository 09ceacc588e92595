/**
 * The scenarios of the benchmark (issue 6's six, and how long each tool takes to start):
 * which tools each runs, which echo ports it needs, the load-client request for one round,
 * and the figures it reports.
 */
import { CPU_PARTS } from "./cpu.ts";
import type { LoadRequest } from "./load.ts";
import type { Endpoint, PortSpec, ToolName } from "./tools.ts";

/** Sizes and durations; {@link defaultConfig} and {@link quickConfig} are the presets. */
export interface BenchConfig {
  rounds: number;
  bulkBytes: number;
  connrateSeconds: number;
  connrateConcurrency: number;
  latencyCount: number;
  concurrencyConnections: number;
  concurrencyBytes: number;
  holBytes: number;
  holPauseMs: number;
  udpRates: number[];
  udpStepSeconds: number;
  /** Starts of each tool per round in the startup scenario. */
  startupRuns: number;
  /** Fresh-connection HTTP requests per round. */
  httpRequests: number;
  /** Fresh-connection downloads per round, and the size of each. */
  fetchCount: number;
  fetchBytes: number;
  /** Round trips between the tools and the API server to run every scenario at (ms). */
  rtts: number[];
  /**
   * How long after its first round's load a tool's RSS is read again, where a scenario has
   * `rssAfter`: what it still holds once a burst is over.
   */
  rssSettleSeconds: number;
  /**
   * How long after its start a tool's idle RSS is read (the first round of a scenario that
   * measures RSS): idle is what it holds once start-up is over, not while it ends.
   */
  idleSettleSeconds: number;
}

/** The sizes, in about ten minutes on a 2-core machine (two rounds; `--rounds` for more). */
export const defaultConfig: BenchConfig = {
  rounds: 2,
  bulkBytes: 1 << 30,
  connrateSeconds: 20,
  connrateConcurrency: 16,
  latencyCount: 5_000,
  concurrencyConnections: 1_000,
  concurrencyBytes: 1 << 20,
  holBytes: 128 << 20,
  holPauseMs: 1_000,
  udpRates: [500, 1_000, 2_000, 4_000, 8_000],
  udpStepSeconds: 2,
  startupRuns: 3,
  httpRequests: 500,
  fetchCount: 30,
  fetchBytes: 4 << 20,
  rtts: [0, 20],
  rssSettleSeconds: 20,
  idleSettleSeconds: 5,
};

/** Every scenario, shortened, in under two minutes: a smoke run for CI. */
export const quickConfig: BenchConfig = {
  rounds: 1,
  bulkBytes: 64 << 20,
  connrateSeconds: 2,
  connrateConcurrency: 16,
  latencyCount: 500,
  concurrencyConnections: 200,
  concurrencyBytes: 256 << 10,
  holBytes: 16 << 20,
  holPauseMs: 500,
  udpRates: [500, 1_000, 2_000],
  udpStepSeconds: 1,
  startupRuns: 1,
  httpRequests: 100,
  fetchCount: 5,
  fetchBytes: 4 << 20,
  rtts: [0, 20],
  rssSettleSeconds: 5,
  idleSettleSeconds: 2,
};

/** How the rounds of one figure combine into the reported one. */
export type Aggregate = "median" | "max" | "min" | "sum";

/** One reported number of a scenario. */
export interface Figure {
  /** Key in the load client's result (or `rss_mb`, measured by the bench). */
  key: string;
  label: string;
  unit: string;
  aggregate: Aggregate;
  /** Whether more is better; decides nothing but the table's hint. */
  higherIsBetter: boolean;
  /** Left out of the main table (the CPU breakdown has its own). */
  detail?: boolean;
}

/** One scenario. */
export interface Scenario {
  name:
    | "bulk"
    | "download"
    | "upload"
    | "connrate"
    | "http"
    | "fetch"
    | "latency"
    | "concurrency"
    | "hol"
    | "udp"
    | "startup";
  title: string;
  tools: ToolName[];
  ports: PortSpec[];
  /** Tunnels relay keeps for this scenario (default: relay's own default). */
  tunnels?: number;
  /** Whether the forwarding client's (and the in-cluster end's) peak RSS is a figure here. */
  measureRss?: boolean;
  /** Whether their RSS is read again rssSettleSeconds after the first round's load. */
  rssAfter?: boolean;
  /** When set, the CPU of every process on the path is counted, per this much of the work. */
  cpuPer?(result: Record<string, unknown>): number;
  figures: Figure[];
  /**
   * What the load client runs against a started tool each round; absent where the tool is
   * started anew for each sample instead (startup: `first_echo_ms`, timed by the bench).
   */
  request?(endpoint: Endpoint, config: BenchConfig): LoadRequest;
}

const TCP_ECHO = 9000;
const TCP_SOURCE = 9002;
const TCP_HTTP = 9004;
const TCP_SINK = 9005;

/** A one-way transfer of the bulk size on one connection: from the source, or to the sink. */
function oneWay(name: "download" | "upload", title: string, port: number): Scenario {
  return {
    name,
    title,
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [port],
    cpuPer: (r) => Number(r.bytes) / (1 << 30),
    figures: [fig("mbps", "throughput", "MB/s", "median", true), ...cpuFigures("s/GiB")],
    request: (ep, c) => ({
      scenario: name,
      host: ep.host,
      port: ep.ports[port],
      bytes: c.bulkBytes,
    }),
  };
}

/** The scenarios in the order they run. */
export const scenarios: Scenario[] = [
  {
    name: "bulk",
    title: "Bulk both ways at once, one connection (an echo)",
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [TCP_ECHO],
    measureRss: true,
    // Per GiB each way: the echo sends back all it gets.
    cpuPer: (r) => Number(r.bytes) / (1 << 30),
    figures: [
      fig("mbps", "throughput", "MB/s", "median", true),
      ...cpuFigures("s/GiB"),
      // The first round's is the idle figure: later rounds start where earlier ones left it.
      fig("rss_idle_mb", "client RSS before load", "MB", "min", false),
      fig("rss_mb", "client peak RSS", "MB", "max", false),
      fig("agent_rss_idle_mb", "agent RSS before load", "MB", "min", false),
      fig("agent_rss_mb", "agent peak RSS", "MB", "max", false),
    ],
    request: (ep, c) => ({
      scenario: "bulk",
      host: ep.host,
      port: ep.ports[TCP_ECHO],
      bytes: c.bulkBytes,
    }),
  },
  oneWay("download", "Bulk one way, one connection: from the pod", TCP_SOURCE),
  oneWay("upload", "Bulk one way, one connection: to the pod", TCP_SINK),
  {
    name: "connrate",
    title: "New connections (open, 100 B echo, close)",
    tools: ["relay", "kubectl", "krelay", "direct", "node-path"],
    ports: [TCP_ECHO],
    cpuPer: (r) => Number(r.connections) / 1000,
    figures: [
      fig("per_second", "rate", "conn/s", "median", true),
      fig("p50_ms", "p50", "ms", "median", false),
      fig("p99_ms", "p99", "ms", "median", false),
      fig("errors", "errors", "", "sum", false),
      ...cpuFigures("s/1k conn"),
    ],
    request: (ep, c) => ({
      scenario: "connrate",
      host: ep.host,
      port: ep.ports[TCP_ECHO],
      seconds: c.connrateSeconds,
      concurrency: c.connrateConcurrency,
    }),
  },
  {
    name: "http",
    title: "HTTP requests, a fresh connection each (as a browser or CLI calls an API)",
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [TCP_HTTP],
    figures: [
      fig("p50_ms", "p50", "ms", "median", false),
      fig("p99_ms", "p99", "ms", "median", false),
      fig("errors", "errors", "", "sum", false),
    ],
    request: (ep, c) => ({
      scenario: "http",
      host: ep.host,
      port: ep.ports[TCP_HTTP],
      count: c.httpRequests,
    }),
  },
  {
    name: "fetch",
    title: "A few MiB from the pod, a fresh connection each (a page's assets, a log, a dump)",
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [TCP_SOURCE],
    figures: [
      fig("p50_ms", "p50", "ms", "median", false),
      fig("p99_ms", "p99", "ms", "median", false),
      fig("errors", "errors", "", "sum", false),
    ],
    request: (ep, c) => ({
      scenario: "fetch",
      host: ep.host,
      port: ep.ports[TCP_SOURCE],
      count: c.fetchCount,
      bytes: c.fetchBytes,
    }),
  },
  {
    name: "latency",
    title: "64-byte ping-pong on an established connection",
    tools: ["relay", "kubectl", "krelay", "direct", "node-path"],
    ports: [TCP_ECHO],
    figures: [
      fig("p50_us", "p50", "µs", "median", false),
      fig("p99_us", "p99", "µs", "median", false),
    ],
    request: (ep, c) => ({
      scenario: "latency",
      host: ep.host,
      port: ep.ports[TCP_ECHO],
      count: c.latencyCount,
      size: 64,
    }),
  },
  {
    name: "concurrency",
    title: "Simultaneous connections, each echoing",
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [TCP_ECHO],
    measureRss: true,
    rssAfter: true,
    figures: [
      fig("errors", "errors", "", "sum", false),
      fig("seconds", "time", "s", "median", false),
      fig("rss_mb", "client peak RSS", "MB", "max", false),
      fig("agent_rss_mb", "agent peak RSS", "MB", "max", false),
      fig("rss_after_mb", "client RSS once it is over", "MB", "max", false),
      fig("agent_rss_after_mb", "agent RSS once it is over", "MB", "max", false),
    ],
    request: (ep, c) => ({
      scenario: "concurrency",
      host: ep.host,
      port: ep.ports[TCP_ECHO],
      connections: c.concurrencyConnections,
      bytes: c.concurrencyBytes,
    }),
  },
  {
    name: "hol",
    title: "Head-of-line: B's throughput while A's reader is paused, one tunnel",
    tools: ["relay", "kubectl", "krelay", "direct"],
    ports: [TCP_SOURCE],
    tunnels: 1,
    figures: [
      fig("hol_fraction", "hol_fraction", "", "median", true),
      fig("alone_mbps", "B alone", "MB/s", "median", true),
    ],
    request: (ep, c) => ({
      scenario: "hol",
      host: ep.host,
      port: ep.ports[TCP_SOURCE],
      bytes: c.holBytes,
      pauseMs: c.holPauseMs,
    }),
  },
  {
    name: "udp",
    title: "UDP, DNS-sized (64 B) queries at rising rates",
    tools: ["relay", "krelay", "direct"],
    ports: [`${TCP_ECHO}/udp`],
    figures: [
      fig("max_qps_no_loss", "max rate, 0 loss", "q/s", "median", true),
      fig("p50_ms", "p50 at that rate", "ms", "median", false),
    ],
    request: (ep, c) => ({
      scenario: "udp",
      host: ep.host,
      port: ep.ports[`${TCP_ECHO}/udp`],
      rates: c.udpRates,
      stepSeconds: c.udpStepSeconds,
      size: 64,
    }),
  },
  {
    name: "startup",
    title: "From starting the tool to the first bytes echoed through it",
    tools: ["relay", "kubectl", "krelay"],
    ports: [TCP_ECHO],
    figures: [fig("first_echo_ms", "start to first echo", "ms", "median", false)],
  },
];

/**
 * CPU figures: the total in the main table, each process's share in the breakdown (keys as
 * cpu.ts's cpuUsed writes them).
 */
function cpuFigures(unit: string): Figure[] {
  return [
    fig("cpu_total", "CPU, all processes", unit, "median", false),
    ...CPU_PARTS.map((part) => ({
      ...fig(`cpu_${part}`, `CPU: ${part}`, unit, "median", false),
      detail: true,
    })),
  ];
}

function fig(
  key: string,
  label: string,
  unit: string,
  aggregate: Aggregate,
  higherIsBetter: boolean,
): Figure {
  return { key, label, unit, aggregate, higherIsBetter };
}
