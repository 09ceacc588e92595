/**
 * relay as a user runs it: the real CLI as a child process against the local cluster,
 * with its ready lines parsed and its stderr kept for assertions.
 */
import { RELAY_RUN_FLAGS } from "../../scripts/release/compile.ts";
import { KUBECONFIG, REPO_DIR } from "./harness.ts";

/** A running `relay …` and what it has said. */
export interface RelayProcess extends AsyncDisposable {
  readonly pid: number;
  /** Local ports from the forward ready lines, in the order they were printed. */
  readonly ports: number[];
  /** Local ports from relay proxy's ready lines (`Proxying on …`). */
  readonly proxyPorts: number[];
  /** Every ready line printed so far. */
  readonly readyLines: string[];
  /** stderr so far. */
  stderr(): string;
  /** Sends `signal` and resolves with the exit code once relay has exited. */
  stop(signal?: Deno.Signal): Promise<number>;
  /** Resolves with the exit code when relay exits by itself. */
  readonly exited: Promise<number>;
}

/** Options for {@link startRelay}. */
export interface StartRelayOptions {
  /** How many ready lines to wait for before resolving (default 1). */
  readyLines?: number;
  /** Extra environment (KUBECONFIG defaults to the local cluster's admin config). */
  env?: Record<string, string>;
  /** How long to wait for the ready lines (default 90 s). */
  timeoutMs?: number;
}

/** The command line that runs relay from this checkout. */
export function relayCommand(args: string[]): string[] {
  return [Deno.execPath(), "run", ...RELAY_RUN_FLAGS, `${REPO_DIR}/main.ts`, ...args];
}

/** Starts relay with `args` and waits for its ready lines. */
export async function startRelay(
  args: string[],
  options: StartRelayOptions = {},
): Promise<RelayProcess> {
  const [cmd, ...rest] = relayCommand(args);
  const child = new Deno.Command(cmd, {
    args: rest,
    env: { KUBECONFIG, ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stderrText = "";
  const stderrDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderrText += chunk;
    }
  })();
  const readyLines: string[] = [];
  const ports: number[] = [];
  const proxyPorts: number[] = [];
  const exited = child.status.then(async (s) => {
    await stderrDone;
    return s.code;
  });
  const want = options.readyLines ?? 1;
  // Woken by the line that completes the ready lines: the startup bench times this wait.
  let wake = () => {};
  const allReady = new Promise<null>((resolve) => (wake = () => resolve(null)));
  const ready = (async () => {
    let buffered = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const m = line.match(/^Forwarding from (?:\[[^\]]+\]|[^:]+):(\d+) -> /);
        // localhost's [::1] line after its 127.0.0.1 line is the same forward: one entry each.
        const twin = line.includes(" [::1]:") &&
          readyLines.at(-1)?.replace(" 127.0.0.1:", " [::1]:") === line;
        if (twin) continue;
        if (m) {
          readyLines.push(line);
          ports.push(Number(m[1]));
        } else if (/^Proxying on /.test(line)) {
          readyLines.push(line);
          proxyPorts.push(Number(line.match(/^Proxying on (?:\[[^\]]+\]|[^:]+):(\d+) /)?.[1]));
        } else if (/^(Listening on|Mirroring|Stealing) /.test(line)) {
          // A reverse forward (-R): its port is in the pod, not here.
          readyLines.push(line);
        }
        if (readyLines.length >= want) wake();
      }
    }
  })();
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
    const code = await exited;
    await ready;
    return code;
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), options.timeoutMs ?? 90_000);
  });
  const outcome = await Promise.race([exited, allReady, late]);
  clearTimeout(timer);
  if (readyLines.length < want) {
    if (outcome === "late") {
      await stop("SIGKILL");
      throw new Error(`relay ${args.join(" ")} not ready in time:\n${stderrText}`);
    }
    throw new Error(`relay ${args.join(" ")} exited with ${outcome} before ready:\n${stderrText}`);
  }
  return {
    pid: child.pid,
    ports,
    proxyPorts,
    readyLines,
    stderr: () => stderrText,
    stop,
    exited,
    [Symbol.asyncDispose]: async () => void await stop(),
  };
}
