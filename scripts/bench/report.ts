/**
 * From raw rounds to what the benchmark prints: one figure per (scenario, tool), the table
 * on stdout, and the JSON `summary` the issue names.
 */
import { CPU_PARTS } from "./cpu.ts";
import type { Aggregate, Scenario } from "./scenarios.ts";
import { median, ratio, round } from "./stats.ts";
import type { ToolName } from "./tools.ts";

/** Every round's result of one tool in one scenario (null: that round failed). */
export type Rounds = Array<Record<string, unknown> | null>;

/** Raw results: scenario → tool → rounds; plus why a tool did not run. */
export interface RawResults {
  rounds: Record<string, Partial<Record<ToolName, Rounds>>>;
  /** scenario → tool → the reason it has no figures. */
  skipped: Record<string, Partial<Record<ToolName, string>>>;
}

/** scenario → tool → figure key → the aggregated value (NaN when nothing was measured). */
export type Figures = Record<string, Partial<Record<ToolName, Record<string, number>>>>;

/** Combines a figure's rounds as the scenario says. */
export function aggregate(values: number[], how: Aggregate): number {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return NaN;
  if (how === "max") return Math.max(...finite);
  if (how === "min") return Math.min(...finite);
  if (how === "sum") return finite.reduce((a, b) => a + b, 0);
  return median(finite);
}

/** Aggregates every scenario's rounds into its figures. */
export function computeFigures(scenarios: Scenario[], raw: RawResults): Figures {
  const out: Figures = {};
  for (const s of scenarios) {
    out[s.name] = {};
    for (const tool of s.tools) {
      const rounds = raw.rounds[s.name]?.[tool];
      if (!rounds) continue;
      const figures: Record<string, number> = {};
      for (const f of s.figures) {
        const values = rounds.map((r) => r === null ? NaN : Number(r[f.key] ?? NaN));
        // A failed round is an error in the error counts, not a hole in them.
        const failed = rounds.filter((r) => r === null).length;
        figures[f.key] = aggregate(values, f.aggregate) + (f.key === "errors" ? failed : 0);
      }
      out[s.name][tool] = figures;
    }
  }
  return out;
}

/** The issue's summary (relay/kubectl, relay/krelay and relay/direct ratios; relay's own figures). */
export interface Summary {
  /** Bulk both ways at once (an echo), relay over kubectl. */
  throughput_vs_kubectl: number | null;
  throughput_vs_direct: number | null;
  /** Bulk one way, from the pod and to it, relay over kubectl and krelay. */
  throughput_down_vs_kubectl: number | null;
  throughput_up_vs_kubectl: number | null;
  throughput_down_vs_krelay: number | null;
  throughput_up_vs_krelay: number | null;
  connrate_vs_kubectl: number | null;
  latency_p50_vs_kubectl: number | null;
  hol_fraction: number | null;
  concurrency_errors: number | null;
  client_rss_mb: number | null;
  udp_max_qps_no_loss: number | null;
  /** relay's agent's peak RSS in the concurrency scenario (its pod's memory). */
  agent_rss_mb: number | null;
  /**
   * CPU of every process on the path per GiB of bulk, relay/kubectl: on a CPU-bound machine
   * the throughput ratio is about its inverse.
   */
  bulk_cpu_vs_kubectl: number | null;
  /** The same ratios against krelay (null when krelay was skipped). */
  throughput_vs_krelay: number | null;
  connrate_vs_krelay: number | null;
  latency_p50_vs_krelay: number | null;
  udp_max_qps_vs_krelay: number | null;
  /** The kubelet shim's per-connection path against direct (≈1 means it adds nothing). */
  node_path_connrate_vs_direct: number | null;
  node_path_latency_p50_vs_direct: number | null;
  /** Start to first echoed byte, relay over kubectl and krelay (lower is better). */
  startup_vs_kubectl: number | null;
  startup_vs_krelay: number | null;
  /** A new connection's p50 (open, 100 B echo), relay over kubectl. */
  newconn_p50_vs_kubectl: number | null;
  /** A fresh-connection HTTP request's p50, relay over kubectl. */
  http_fresh_conn_p50_vs_kubectl: number | null;
  /** A fresh connection's download of a few MiB, p50 from connect to the last byte. */
  fetch_p50_vs_kubectl: number | null;
  /** relay's RSS once forwarding, before any load (bulk scenario). */
  client_rss_idle_mb: number | null;
  /** relay's RSS rssSettleSeconds after 1,000 connections (concurrency scenario). */
  client_rss_after_mb: number | null;
}

/** The summary object of `--json`. */
export function summarize(figures: Figures): Summary {
  const get = (scenario: string, tool: ToolName, key: string) => figures[scenario]?.[tool]?.[key];
  /** One figure of `tool` over the same figure of `other`. */
  const vs = (scenario: string, key: string, other: ToolName, tool: ToolName = "relay") =>
    ratio(get(scenario, tool, key), get(scenario, other, key));
  const relay = (scenario: string, key: string, digits = 2) => {
    const v = get(scenario, "relay", key);
    return v === undefined ? null : round(v, digits);
  };
  return {
    throughput_vs_kubectl: vs("bulk", "mbps", "kubectl"),
    throughput_vs_direct: vs("bulk", "mbps", "direct"),
    throughput_down_vs_kubectl: vs("download", "mbps", "kubectl"),
    throughput_up_vs_kubectl: vs("upload", "mbps", "kubectl"),
    throughput_down_vs_krelay: vs("download", "mbps", "krelay"),
    throughput_up_vs_krelay: vs("upload", "mbps", "krelay"),
    connrate_vs_kubectl: vs("connrate", "per_second", "kubectl"),
    latency_p50_vs_kubectl: vs("latency", "p50_us", "kubectl"),
    hol_fraction: relay("hol", "hol_fraction", 3),
    concurrency_errors: relay("concurrency", "errors", 0),
    client_rss_mb: relay("concurrency", "rss_mb", 1),
    udp_max_qps_no_loss: relay("udp", "max_qps_no_loss", 0),
    agent_rss_mb: relay("concurrency", "agent_rss_mb", 1),
    bulk_cpu_vs_kubectl: vs("bulk", "cpu_total", "kubectl"),
    throughput_vs_krelay: vs("bulk", "mbps", "krelay"),
    connrate_vs_krelay: vs("connrate", "per_second", "krelay"),
    latency_p50_vs_krelay: vs("latency", "p50_us", "krelay"),
    udp_max_qps_vs_krelay: vs("udp", "max_qps_no_loss", "krelay"),
    node_path_connrate_vs_direct: vs("connrate", "per_second", "direct", "node-path"),
    node_path_latency_p50_vs_direct: vs("latency", "p50_us", "direct", "node-path"),
    startup_vs_kubectl: vs("startup", "first_echo_ms", "kubectl"),
    startup_vs_krelay: vs("startup", "first_echo_ms", "krelay"),
    newconn_p50_vs_kubectl: vs("connrate", "p50_ms", "kubectl"),
    http_fresh_conn_p50_vs_kubectl: vs("http", "p50_ms", "kubectl"),
    fetch_p50_vs_kubectl: vs("fetch", "p50_ms", "kubectl"),
    client_rss_idle_mb: relay("bulk", "rss_idle_mb", 1),
    client_rss_after_mb: relay("concurrency", "rss_after_mb", 1),
  };
}

const COLUMNS: ToolName[] = ["relay", "kubectl", "krelay", "direct", "node-path"];
/** The tools relay's figures are divided by, each a column of the table. */
const RATIOS: ToolName[] = ["kubectl", "krelay", "direct"];

/** The table's cells: a header, then a row per figure, a column per tool, then the ratios. */
export function tableRows(scenarios: Scenario[], figures: Figures): string[][] {
  const rows: string[][] = [
    ["scenario", "figure", ...COLUMNS, ...RATIOS.map((tool) => `relay/${tool}`)],
  ];
  for (const s of scenarios) {
    const byTool = figures[s.name] ?? {};
    for (const f of s.figures.filter((f) => !f.detail)) {
      const value = (tool: ToolName) => byTool[tool]?.[f.key];
      rows.push([
        s.name,
        `${f.label}${f.unit ? ` (${f.unit})` : ""}`,
        ...COLUMNS.map((tool) => formatNumber(value(tool))),
        ...RATIOS.map((tool) => ratioCell(value("relay"), value(tool), f.key)),
      ]);
    }
  }
  return rows;
}

/**
 * Where each tool's CPU went, for the scenarios that count it: a row per (scenario, tool), a
 * column per process; none when no scenario counted CPU.
 */
export function cpuRows(scenarios: Scenario[], figures: Figures): string[][] {
  const rows: string[][] = [["scenario", "tool", ...CPU_PARTS, "total", "unit"]];
  for (const s of scenarios.filter((s) => s.cpuPer)) {
    const unit = s.figures.find((f) => f.key === "cpu_total")?.unit ?? "";
    for (const [tool, values] of Object.entries(figures[s.name] ?? {})) {
      if (!Number.isFinite(values?.cpu_total)) continue;
      const cell = (key: string) => formatNumber(values?.[key]);
      rows.push([s.name, tool, ...CPU_PARTS.map((p) => cell(`cpu_${p}`)), cell("cpu_total"), unit]);
    }
  }
  return rows.length > 1 ? rows : [];
}

/** The table in fixed-width text, for stdout. */
export function formatTable(scenarios: Scenario[], figures: Figures): string {
  return formatText(tableRows(scenarios, figures));
}

/** Rows in fixed-width text: the first two columns left-aligned, the rest right-aligned. */
export function formatText(rows: string[][]): string {
  if (rows.length === 0) return "";
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((cell, i) => i < 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join("  ")
      .trimEnd();
  return [line(rows[0]), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)]
    .join("\n");
}

/** The table as Markdown, for the README's Performance section; the CPU table after it. */
export function formatMarkdown(scenarios: Scenario[], figures: Figures): string {
  const cpu = cpuRows(scenarios, figures);
  return [markdownRows(tableRows(scenarios, figures)), ...(cpu.length ? [markdownRows(cpu)] : [])]
    .join("\n\n");
}

function markdownRows([header, ...body]: string[][]): string {
  return [
    `| ${header.join(" | ")} |`,
    `|${header.map((_, i) => i < 2 ? "---" : "---:").join("|")}|`,
    ...body.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

function ratioCell(a: number | undefined, b: number | undefined, key: string): string {
  // Ratios of error counts or of a fraction say nothing useful.
  if (key === "errors" || key === "hol_fraction") return "";
  const r = ratio(a, b);
  return r === null ? "" : `${r.toFixed(2)}×`;
}

/** A figure with as many digits as its size deserves; `-` for none. */
export function formatNumber(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return "-";
  if (Math.abs(value) >= 100) return String(Math.round(value));
  if (Math.abs(value) >= 10) return value.toFixed(1);
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(2);
}
