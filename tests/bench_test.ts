/** The benchmark's arithmetic and report (scripts/bench/): no cluster, no timing. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cpuUsed } from "../scripts/bench/cpu.ts";
import {
  aggregate,
  computeFigures,
  cpuRows,
  formatMarkdown,
  formatTable,
  summarize,
} from "../scripts/bench/report.ts";
import { scenarios } from "../scripts/bench/scenarios.ts";
import { maxRateWithoutLoss, median, percentile, ratio, rotate } from "../scripts/bench/stats.ts";

Deno.test("percentile is nearest-rank and median averages the middle two", () => {
  const values = [5, 1, 4, 2, 3];
  assertEquals(percentile(values, 50), 3);
  assertEquals(percentile(values, 99), 5);
  assertEquals(percentile(values, 0), 1);
  assert(Number.isNaN(percentile([], 50)));
  assertEquals(median([4, 1, 3, 2]), 2.5);
  assertEquals(median([NaN, 7]), 7);
  assert(Number.isNaN(median([])));
});

Deno.test("ratio is null when a side is missing or zero", () => {
  assertEquals(ratio(3, 2), 1.5);
  assertEquals(ratio(3, 0), null);
  assertEquals(ratio(undefined, 2), null);
  assertEquals(ratio(NaN, 2), null);
});

Deno.test("rotate gives every tool every position across rounds", () => {
  assertEquals(rotate(["a", "b", "c"], 0), ["a", "b", "c"]);
  assertEquals(rotate(["a", "b", "c"], 1), ["b", "c", "a"]);
  assertEquals(rotate(["a", "b", "c"], 4), ["b", "c", "a"]);
  assertEquals(rotate([], 3), []);
});

Deno.test("the UDP maximum stops at the first lossy step", () => {
  assertEquals(
    maxRateWithoutLoss([{ rate: 500, lost: 0 }, { rate: 1000, lost: 2 }, { rate: 2000, lost: 0 }]),
    500,
  );
  assertEquals(maxRateWithoutLoss([{ rate: 500, lost: 1 }]), 0);
});

Deno.test("aggregate: median, max, sum over finite values", () => {
  assertEquals(aggregate([3, 1, 2], "median"), 2);
  assertEquals(aggregate([3, NaN, 2], "max"), 3);
  assertEquals(aggregate([1, 2], "sum"), 3);
  assert(Number.isNaN(aggregate([NaN], "median")));
});

Deno.test("figures, summary and table from raw rounds", () => {
  const figures = computeFigures(scenarios, {
    rounds: {
      bulk: {
        relay: [{ mbps: 300 }, { mbps: 200 }],
        kubectl: [{ mbps: 100 }, { mbps: 100 }],
        krelay: [{ mbps: 125 }, { mbps: 125 }],
        direct: [{ mbps: 500 }, null],
      },
      concurrency: {
        relay: [{ errors: 0, seconds: 2, rss_mb: 90 }, null],
      },
      download: { relay: [{ mbps: 90 }], kubectl: [{ mbps: 120 }], krelay: [{ mbps: 100 }] },
      upload: { relay: [{ mbps: 150 }], kubectl: [{ mbps: 100 }] },
      fetch: { relay: [{ p50_ms: 30, p99_ms: 60 }], kubectl: [{ p50_ms: 75, p99_ms: 90 }] },
      latency: { relay: [{ p50_us: 400, p99_us: 900 }], kubectl: [{ p50_us: 800, p99_us: 2000 }] },
      startup: {
        relay: [{ first_echo_ms: 900, samples_ms: [800, 900, 950] }, { first_echo_ms: 1100 }],
        kubectl: [{ first_echo_ms: 100 }, { first_echo_ms: 100 }],
      },
    },
    skipped: {},
  });
  assertEquals(figures.bulk.relay?.mbps, 250);
  // A failed round counts as an error.
  assertEquals(figures.concurrency.relay?.errors, 1);
  const summary = summarize(figures);
  assertEquals(summary.throughput_vs_kubectl, 2.5);
  assertEquals(summary.throughput_vs_direct, 0.5);
  assertEquals(summary.throughput_vs_krelay, 2);
  // One way, each direction on its own.
  assertEquals(summary.throughput_down_vs_kubectl, 0.75);
  assertEquals(summary.throughput_down_vs_krelay, 0.9);
  assertEquals(summary.throughput_up_vs_kubectl, 1.5);
  // A fresh connection's few MiB, lower is better.
  assertEquals(summary.fetch_p50_vs_kubectl, 0.4);
  // krelay skipped (or not run) in a scenario: no ratio, not a zero.
  assertEquals(summary.latency_p50_vs_krelay, null);
  assertEquals(summary.latency_p50_vs_kubectl, 0.5);
  assertEquals(summary.concurrency_errors, 1);
  assertEquals(summary.client_rss_mb, 90);
  assertEquals(summary.hol_fraction, null);
  // Startup: the median of the rounds' medians, lower is better.
  assertEquals(summary.startup_vs_kubectl, 10);
  assertEquals(summary.startup_vs_krelay, null);
  const table = formatTable(scenarios, figures);
  assert(table.includes("2.50×"), table);
  const header = table.split("\n")[0].split(/\s+/);
  assertEquals(header.slice(-3), ["relay/kubectl", "relay/krelay", "relay/direct"]);
  // bulk's throughput row: relay, kubectl, krelay, direct, node-path, then the three ratios.
  const bulk = table.split("\n").find((line) => line.startsWith("bulk"))!.split(/\s{2,}/);
  assertEquals(bulk.slice(-8), ["250", "100", "125", "500", "-", "2.50×", "2.00×", "0.50×"]);
  const markdown = formatMarkdown(scenarios, figures).split("\n");
  assert(markdown.every((line) => line.startsWith("|") && line.endsWith("|")));
  assertEquals(new Set(markdown.map((line) => line.split("|").length)).size, 1);
});

Deno.test("CPU per unit of work: each process's share, the load client's own, and the total", () => {
  const used = cpuUsed(
    { client: 10, agent: 5, apiserver: 100, kwok: 50 },
    { client: 14, agent: 7, apiserver: 101, kwok: NaN },
    1,
    2,
  );
  // kwok vanished mid-round: left out, not counted as zero or NaN.
  assertEquals(used, {
    cpu_client: 2,
    cpu_agent: 1,
    cpu_apiserver: 0.5,
    cpu_load: 0.5,
    cpu_total: 4,
  });
});

Deno.test("the CPU breakdown: a row per tool that counted CPU, beside the main table", () => {
  const figures = computeFigures(scenarios, {
    rounds: {
      bulk: {
        relay: [{ mbps: 50, cpu_client: 5, cpu_agent: 3, cpu_total: 17 }],
        kubectl: [{ mbps: 70, cpu_client: 3, cpu_total: 10 }],
        direct: [{ mbps: 900 }],
      },
    },
    skipped: {},
  });
  const rows = cpuRows(scenarios, figures);
  assertEquals(rows.map((r) => r[1]), ["tool", "relay", "kubectl"]);
  assertEquals(rows[1].slice(2, 4), ["5", "3"]);
  assertEquals(summarize(figures).bulk_cpu_vs_kubectl, 1.7);
  // The per-process figures stay out of the main table; the total is in it.
  const table = formatTable(scenarios, figures);
  assert(table.includes("CPU, all processes") && !table.includes("CPU: client"), table);
  const markdown = formatMarkdown(scenarios, figures).split("\n\n");
  assertEquals(markdown.length, 2);
});
