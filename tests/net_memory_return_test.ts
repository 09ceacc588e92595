import { assert, assertEquals } from "./assert.ts";
import { processCpuSeconds, QuietTrimmer, trimWhenQuiet } from "../lib/net/memory_return.ts";
import { RELAY_V8_FLAGS } from "../scripts/release/compile.ts";

/** A trimmer on a CPU clock the test moves: `work(s)` spends s seconds of CPU before a tick. */
function harness(trimsAfterBusy = 3, startsBusy = false) {
  let cpu = 0;
  let trims = 0;
  const events: string[] = [];
  const trimmer = new QuietTrimmer({
    trim: () => {
      trims++;
      events.push("trim");
      cpu += 0.05; // a trim's own CPU, more than a quiet tick allows
    },
    release: () => events.push("release"),
    collect: () => {
      events.push("collect");
      cpu += 0.05;
    },
    cpuSeconds: () => cpu,
    tickMs: 2_000,
    quietShare: 0.02,
    trimsAfterBusy,
    startsBusy,
  });
  return {
    tick: (spent = 0) => {
      cpu += spent;
      return trimmer.tick();
    },
    get trims() {
      return trims;
    },
    events,
  };
}

Deno.test("memory return: a process that was never busy is never trimmed", () => {
  const t = harness();
  for (let i = 0; i < 10; i++) assertEquals(t.tick(0.001), false);
  assertEquals(t.trims, 0);
});

Deno.test("memory return: after a busy tick, the next quiet ones trim, as many as allowed", () => {
  const t = harness(3);
  assertEquals(t.tick(1.5), false, "a busy tick trimmed");
  // The trim's own 50 ms of CPU must not count as the next tick's work.
  assertEquals([t.tick(), t.tick(), t.tick(), t.tick(), t.tick()], [
    true,
    true,
    true,
    false,
    false,
  ]);
  assertEquals(t.trims, 3);
});

Deno.test("memory return: the first trim after busy ticks releases spares and collects first", () => {
  const t = harness(3);
  t.tick(1.5);
  t.tick();
  t.tick();
  assertEquals(t.events, ["release", "collect", "trim", "trim"]);
  // Busy again: the next quiet spell starts the same way.
  t.tick(1.5);
  t.tick();
  assertEquals(t.events.slice(4), ["release", "collect", "trim"]);
});

Deno.test("memory return: a trimmer that starts busy gives back start-up's leavings when quiet", () => {
  const t = harness(2, true);
  assertEquals([t.tick(), t.tick(), t.tick()], [true, true, false]);
  assertEquals(t.events, ["release", "collect", "trim", "trim"]);
});

Deno.test("memory return: no trim while traffic keeps the process busy", () => {
  const t = harness(3);
  for (let i = 0; i < 20; i++) assertEquals(t.tick(0.5), false);
  assertEquals(t.trims, 0);
  // 40 ms in 2 s is the line: just above it is busy, just below quiet.
  assertEquals(t.tick(0.041), false);
  assertEquals(t.tick(0.039), true);
});

Deno.test("memory return: a busy tick between trims starts the count again", () => {
  const t = harness(2);
  t.tick(1);
  assertEquals([t.tick(), t.tick(1), t.tick(), t.tick(), t.tick()], [
    true,
    false,
    true,
    true,
    false,
  ]);
});

Deno.test("memory return: the timer stops with its signal", async () => {
  // The test's sanitizers fail it if the interval outlives the signal.
  const running = new AbortController();
  trimWhenQuiet(running.signal, { tickMs: 5 });
  await new Promise((resolve) => setTimeout(resolve, 30));
  running.abort();
  const stopped = new AbortController();
  stopped.abort();
  trimWhenQuiet(stopped.signal, { tickMs: 5 });
});

Deno.test("memory return: this process's CPU seconds come from /proc and only grow", {
  ignore: Deno.build.os !== "linux",
}, () => {
  const before = processCpuSeconds();
  const end = performance.now() + 100;
  while (performance.now() < end) Math.sqrt(Math.random());
  const after = processCpuSeconds();
  assert(before >= 0 && after > before, `CPU seconds went from ${before} to ${after}`);
});

/** Runs a probe from tests/fixtures with `v8Flags` and returns the JSON it prints. */
async function runProbe(fixture: string, v8Flags: string, ...args: string[]) {
  const probe = new URL(`./fixtures/${fixture}`, import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `--v8-flags=${v8Flags}`, probe, ...args],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  const text = new TextDecoder();
  assertEquals(out.code, 0, text.decode(out.stderr));
  return JSON.parse(text.decode(out.stdout));
}

Deno.test("memory return: glibc gives freed buffers back to the system on a trim", {
  ignore: Deno.build.os !== "linux",
}, async () => {
  const { trimmed, before, after } = await runProbe("heap_trim_probe.ts", "--expose-gc");
  assert(trimmed, "malloc_trim could not be called");
  // 190 MB were freed: without the trim the RSS stays where it was.
  assert(before - after > 100, `RSS went from ${before} MB to ${after} MB`);
});

Deno.test("memory return: a process gone quiet gives back its spares without anyone collecting", {
  ignore: Deno.build.os !== "linux",
}, async () => {
  const { before, after, spares } = await runProbe("quiet_return_probe.ts", RELAY_V8_FLAGS);
  assertEquals(spares, 0, "the first quiet tick did not release the spares");
  // 190 MB were let go: without the collection V8 may keep them for many seconds.
  assert(before - after > 100, `RSS went from ${before} MB to ${after} MB`);
});

Deno.test("memory return: a process quiet from its start gives back what start-up left", {
  ignore: Deno.build.os !== "linux",
}, async () => {
  const { before, after, spares } = await runProbe(
    "quiet_return_probe.ts",
    RELAY_V8_FLAGS,
    "start-up",
  );
  assertEquals(spares, 0, "the first quiet tick did not release the spares");
  assert(before - after > 100, `RSS went from ${before} MB to ${after} MB`);
});
