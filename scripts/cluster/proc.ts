/** Running commands and long-lived daemons for the cluster scripts. */

/** What a finished command left behind. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@link run}. */
export interface RunOptions {
  /** Bytes for stdin. */
  input?: string;
  env?: Record<string, string>;
  cwd?: string;
}

/** Runs a command to completion and returns its exit code and output; never throws on failure. */
export async function run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: options.input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
    cwd: options.cwd,
  }).spawn();
  if (options.input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.input));
    await writer.close();
  }
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Runs a command and throws, with its stderr, unless it exits 0. Returns stdout. */
export async function must(argv: string[], options: RunOptions = {}): Promise<string> {
  const result = await run(argv, options);
  if (result.code !== 0) {
    throw new Error(`${argv.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** Whether a process with this pid exists (and is not a zombie). */
export function isAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/** How to start a daemon with {@link startDaemon}. */
export interface DaemonOptions {
  /** The daemon's binary and arguments. */
  argv: string[];
  /** Appended to with the daemon's stdout and stderr. */
  logFile: string;
  /** Receives the pid. */
  pidFile: string;
  /** Run inside this network namespace (through `ip netns exec`). */
  netns?: string;
  env?: Record<string, string>;
  cwd?: string;
}

/**
 * Starts a process that outlives this one: in a session of its own (so a terminal's ^C on
 * `deno task cluster up` does not reach it), output to a log file, pid in a pid file.
 * `ip netns exec`, `setsid` and `sh -c exec` all exec in place, so the pid is the daemon's.
 */
export function startDaemon(options: DaemonOptions): number {
  const redirect = `exec "$@" </dev/null >>'${options.logFile}' 2>&1`;
  const argv = [
    ...(options.netns ? ["ip", "netns", "exec", options.netns] : []),
    "setsid",
    "sh",
    "-c",
    redirect,
    "sh",
    ...options.argv,
  ];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
    env: options.env,
    cwd: options.cwd,
  }).spawn();
  child.unref();
  Deno.writeTextFileSync(options.pidFile, `${child.pid}\n`);
  return child.pid;
}

/** Reads a pid file; undefined when it is missing or unreadable. */
export function readPid(pidFile: string): number | undefined {
  try {
    const pid = Number(Deno.readTextFileSync(pidFile).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Stops a process and its process group: SIGTERM, then SIGKILL once `graceMs` has passed.
 * Resolves when it is gone.
 */
export async function stopProcess(pid: number, graceMs = 5000): Promise<void> {
  const signal = (sig: Deno.Signal) => {
    for (const target of [-pid, pid]) {
      try {
        Deno.kill(target, sig);
      } catch {
        // already gone, or not a group leader
      }
    }
  };
  if (!isAlive(pid)) return;
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(50);
  if (isAlive(pid)) signal("SIGKILL");
  while (isAlive(pid)) await sleep(20);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a value other than undefined/false, or throws at the deadline. */
export async function waitUntil<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      lastError = error;
    }
    await sleep(intervalMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}` +
      (lastError ? `: ${lastError}` : ""),
  );
}
