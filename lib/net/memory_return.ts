/**
 * Gives the C heap's free memory back to the system once the process goes quiet.
 *
 * Buffers V8 frees go back to glibc's malloc, which keeps them for the next allocation instead
 * of returning them, so what a burst of connections took stayed resident for as long as relay
 * ran (docs/MEASUREMENTS.md, "Memory after a burst"). `malloc_trim(0)` returns it, but stalls
 * the event loop while it walks the heap, so it runs only on ticks when the process used almost
 * no CPU.
 */

/** What the trimmer needs from the system; the defaults are Linux's and glibc's. */
export interface QuietTrimOptions {
  /** Returns the heap's free memory to the system. */
  trim: () => void;
  /**
   * Lets go of what the process keeps for reuse (a buffer pool's spares), on the first quiet
   * tick after busy ones, before the collection.
   */
  release?: () => void;
  /**
   * Runs a full garbage collection, before the first trim after busy ticks: an idle V8 may
   * not collect for many seconds, and until it does the burst's buffers are not free to trim.
   */
  collect?: () => void;
  /** CPU seconds the process has used so far. */
  cpuSeconds: () => number;
  /** How often to look, in ms. */
  tickMs?: number;
  /** A tick that used less CPU than this share of one core is quiet. */
  quietShare?: number;
  /**
   * Quiet ticks to trim on after the last busy one: V8 frees a burst's garbage over the
   * following seconds, and each trim returns what was freed since the one before.
   */
  trimsAfterBusy?: number;
  /**
   * Counts the time before the first tick as busy, so that the first quiet spell also gives
   * back what starting up left behind.
   */
  startsBusy?: boolean;
}

const DEFAULT_TICK_MS = 2_000;
const DEFAULT_QUIET_SHARE = 0.02;
const DEFAULT_TRIMS_AFTER_BUSY = 15;

/** The decision, tick by tick; {@link trimWhenQuiet} runs it on a timer. */
export class QuietTrimmer {
  readonly #options: Required<Omit<QuietTrimOptions, "release" | "collect">>;
  readonly #release: (() => void) | undefined;
  readonly #collect: (() => void) | undefined;
  #lastCpu: number;
  /** Quiet ticks still to trim on; none until the process has been busy. */
  #trimsLeft = 0;

  constructor(options: QuietTrimOptions) {
    this.#options = {
      tickMs: DEFAULT_TICK_MS,
      quietShare: DEFAULT_QUIET_SHARE,
      trimsAfterBusy: DEFAULT_TRIMS_AFTER_BUSY,
      startsBusy: false,
      ...options,
    };
    this.#release = options.release;
    this.#collect = options.collect;
    this.#lastCpu = options.cpuSeconds();
    if (this.#options.startsBusy) this.#trimsLeft = this.#options.trimsAfterBusy;
  }

  /** One look: called every tickMs. Says whether it trimmed. */
  tick(): boolean {
    const { cpuSeconds, tickMs, quietShare, trimsAfterBusy, trim } = this.#options;
    const cpu = cpuSeconds();
    const used = cpu - this.#lastCpu;
    this.#lastCpu = cpu;
    if (used > quietShare * tickMs / 1000) {
      this.#trimsLeft = trimsAfterBusy;
      return false;
    }
    if (this.#trimsLeft === 0) return false;
    if (this.#trimsLeft === trimsAfterBusy) {
      this.#release?.();
      this.#collect?.();
    }
    this.#trimsLeft--;
    trim();
    // The trim's own CPU (and the collection's) does not make the next tick busy.
    this.#lastCpu = cpuSeconds();
    return true;
  }
}

/**
 * Trims the C heap on quiet ticks after busy ones until `signal` aborts, first calling
 * `release` and, with `startsBusy`, counting what came before as busy (see QuietTrimOptions).
 * Does nothing where there is no glibc to ask (macOS, Windows, a process without FFI
 * permission).
 */
export function trimWhenQuiet(
  signal: AbortSignal,
  options: Pick<QuietTrimOptions, "release" | "tickMs" | "startsBusy"> = {},
): void {
  const tickMs = options.tickMs ?? DEFAULT_TICK_MS;
  if (Deno.build.os !== "linux" || signal.aborted) return;
  let trim: (() => void) | null | undefined;
  let trimmer: QuietTrimmer;
  try {
    trimmer = new QuietTrimmer({
      // libc is opened at the first trim: a process that never gets busy never loads it.
      trim: () => {
        if (trim === undefined) trim = glibcMallocTrim();
        if (trim === null) throw new Error("malloc_trim cannot be called here");
        trim();
      },
      release: options.release,
      collect: v8Collect(),
      cpuSeconds: processCpuSeconds,
      tickMs,
      startsBusy: options.startsBusy,
    });
  } catch {
    return; // no /proc: nothing to time quiet by
  }
  // A tick that fails (no libc to call) ends the ticking: it would fail the same way again.
  const timer = setInterval(() => {
    try {
      trimmer.tick();
    } catch {
      clearInterval(timer);
    }
  }, tickMs);
  Deno.unrefTimer(timer);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

/**
 * V8's full collection where the runtime exposes it (RELAY_V8_FLAGS has `--expose-gc`). The
 * last-resort flavour frees dead ArrayBuffers and gives the heap's empty pages back before it
 * returns; a regular one left both for V8 to do seconds later (docs/MEASUREMENTS.md).
 */
function v8Collect(): (() => void) | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  if (typeof gc !== "function") return undefined;
  return () => gc({ type: "major", execution: "sync", flavor: "last-resort" });
}

/** glibc's malloc_trim(0), or null where it cannot be called. */
export function glibcMallocTrim(): (() => void) | null {
  try {
    const libc = Deno.dlopen("libc.so.6", {
      malloc_trim: { parameters: ["usize"], result: "i32" },
    });
    return () => void libc.symbols.malloc_trim(0n);
  } catch {
    return null;
  }
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** User and system CPU seconds in the text of a /proc/PID/stat. */
export function statCpuSeconds(stat: string): number {
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** User and system CPU seconds of this process. */
export function processCpuSeconds(): number {
  return statCpuSeconds(Deno.readTextFileSync("/proc/self/stat"));
}
