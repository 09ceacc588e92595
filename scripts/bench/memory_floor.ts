/**
 * What the bench's 1,000-connection load costs a Deno process that does nothing but echo it:
 * the floor under relay's client peak (docs/MEASUREMENTS.md, "The floor under the client's
 * peak"). floor_echo.ts's two servers, `reuse` and `copy`, alternated round by round, each in
 * a process of its own with relay's V8 flags.
 *
 *   deno run --allow-all --unstable-net scripts/bench/memory_floor.ts [--rounds N]
 *
 * Prints each round's idle and peak RSS, then the medians; load comes from load.ts.
 */
import { parseArgs } from "node:util";
import { RELAY_V8_FLAGS } from "../release/compile.ts";
import { runLoad } from "./load.ts";
import { defaultConfig } from "./scenarios.ts";
import { median } from "./stats.ts";
import { currentRssMb, peakRssMb } from "./tools.ts";

const MODES = ["reuse", "copy"] as const;
type Mode = typeof MODES[number];

const SERVER = new URL("./floor_echo.ts", import.meta.url).pathname;

/** One round of one mode: the server's RSS before the load, and its peak under it. */
async function round(mode: Mode): Promise<{ idle: number; peak: number }> {
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", `--v8-flags=${RELAY_V8_FLAGS}`, SERVER, mode],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const { value } = await reader.read();
    const port = parseInt(value ?? "");
    if (!port) throw new Error(`the ${mode} server did not say its port`);
    // Idle as the bench takes it: after start, before any connection.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const idle = await currentRssMb(server.pid);
    const result = await runLoad({
      scenario: "concurrency",
      host: "127.0.0.1",
      port,
      connections: defaultConfig.concurrencyConnections,
      bytes: defaultConfig.concurrencyBytes,
    });
    if (result.errors !== 0) {
      throw new Error(`the load failed on the ${mode} server: ${JSON.stringify(result)}`);
    }
    return { idle, peak: await peakRssMb(server.pid) };
  } finally {
    server.kill();
    await server.status;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { rounds: { type: "string", default: "3" } },
  });
  const rounds = parseInt(values.rounds);
  if (!(rounds > 0)) throw new Error(`--rounds must be a positive number, not ${values.rounds}`);
  const results: Record<Mode, { idle: number; peak: number }[]> = { reuse: [], copy: [] };
  for (let i = 0; i < rounds; i++) {
    for (const mode of i % 2 === 0 ? MODES : [...MODES].reverse()) {
      const r = await round(mode);
      results[mode].push(r);
      console.log(
        `round ${i + 1} ${mode}: idle ${r.idle.toFixed(1)} MB, peak ${r.peak.toFixed(1)} MB`,
      );
    }
  }
  for (const mode of MODES) {
    const idle = median(results[mode].map((r) => r.idle));
    const peak = median(results[mode].map((r) => r.peak));
    console.log(`${mode}: idle ${idle.toFixed(1)} MB, peak ${peak.toFixed(1)} MB (medians)`);
  }
}

if (import.meta.main) await main();
