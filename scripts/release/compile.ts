/**
 * The `deno compile` command line for one release target, and running it with its failures
 * told in one line.
 */
import { resolve } from "node:path";
import { binaryName, type ReleaseTarget } from "./targets.ts";

/** Where a compile reads from and writes to. */
export interface CompileOptions {
  /** The repository root: main.ts, deno.json and deno.lock live here; deno runs in it. */
  readonly root: string;
  /** The directory the binary is written into (one per target); relative ones are to `root`. */
  readonly outDir: string;
}

/**
 * V8 flags relay runs with, as client and as agent.
 *
 * An old generation allowed 64 MB before its first full GC: with V8's default, a bulk transfer
 * after a quiet spell (the heap shrunk to its live objects) set off mark-compacts that never let
 * up; a larger start only lets garbage wait longer, which raises peak memory
 * (docs/MEASUREMENTS.md, "V8's initial old generation"). Set at startup only:
 * `v8.setFlagsFromString` is too late. `gc()` lets a process gone quiet after a burst collect
 * before it hands memory back (lib/net/memory_return.ts).
 */
export const RELAY_V8_FLAGS = "--initial-old-space-size=64,--expose-gc";

/**
 * The runtime flags relay runs with: compiled into the release binary, and passed by every
 * place that runs main.ts from source (`deno run ...RELAY_RUN_FLAGS main.ts`: the tests, the
 * test cluster's agent image, the demo; `deno task relay` spells them out, and a test checks it).
 *
 * Permissions are `--allow-all`, not a list: relay runs the exec credential plugins a kubeconfig
 * names (aws, gke-gcloud-auth-plugin, kubelogin, any path), so `--allow-run` cannot be narrowed,
 * and a process it may run unrestricted is not sandboxed by anything else we would deny. A list
 * would add only failure modes (a compiled binary cannot prompt; a missing `--allow-sys` or an
 * env var a dependency reads becomes a crash in the field) for no security gained.
 */
export const RELAY_RUN_FLAGS: readonly string[] = [
  // Deno.listenDatagram (the UDP listeners) is behind --unstable-net.
  "--unstable-net",
  `--v8-flags=${RELAY_V8_FLAGS}`,
  "--allow-all",
];

/** The flags every release binary is compiled with; `compileArgs` adds target, output and entry. */
export const COMPILE_FLAGS: readonly string[] = [
  ...RELAY_RUN_FLAGS,
  // A release never resolves anything the lock file does not already pin.
  "--frozen-lockfile",
];

/**
 * The arguments after `deno` that compile relay for `target`, with paths relative to the
 * repository root (where `compile` runs them), so the printed command reads the same anywhere.
 */
export function compileArgs(
  target: ReleaseTarget,
  options: Pick<CompileOptions, "outDir">,
): string[] {
  const config = "deno.json";
  return [
    "compile",
    ...COMPILE_FLAGS,
    "--config",
    config,
    // lib/version.ts imports deno.json (the version); a static JSON import is already in the
    // module graph, and naming it keeps it embedded should that import ever become dynamic.
    "--include",
    config,
    // Workers are not in the module graph (lib/kube/tls_warm_up.ts).
    "--include",
    "lib/kube/tls_warm_up_worker.ts",
    "--target",
    target.denoTarget,
    "--output",
    `${options.outDir}/${binaryName(target)}`,
    "main.ts",
  ];
}

/** Quotes `arg` for a POSIX shell when it needs it, so a printed command can be pasted. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** A compile that failed; `message` is one line fit to show a user. */
export class CompileError extends Error {
  override name = "CompileError";
}

/**
 * Runs `deno compile` for `target`. On failure throws a CompileError whose message is one line:
 * for the common case of a machine that cannot fetch the Deno runtime (denort), that it could
 * not be downloaded and why; otherwise deno's own error output, trimmed.
 */
export async function compile(target: ReleaseTarget, options: CompileOptions): Promise<void> {
  await Deno.mkdir(resolve(options.root, options.outDir), { recursive: true });
  const result = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(target, options),
    cwd: options.root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (result.success) return;
  const stderr = new TextDecoder().decode(result.stderr);
  throw new CompileError(explainCompileFailure(target, stderr));
}

/**
 * One line saying why `deno compile` failed for `target`, from its stderr. `deno compile` fetches
 * a runtime per target (denort-<target>.zip from dl.deno.land) unless DENORT_BIN names one; that
 * is the step machines without internet fail at, with a multi-line error chain.
 */
export function explainCompileFailure(target: ReleaseTarget, stderr: string): string {
  // The backtrace after the error chain is numbered too, and says nothing useful.
  const chain = stderr.split("Stack backtrace:")[0];
  const lines = chain.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const runtimeUrl = /https?:\/\/\S*denort-[^\s):]*/.exec(chain)?.[0];
  if (runtimeUrl || /Setting up base binary/.test(chain)) {
    // The error chain's last numbered cause is the most specific one (e.g. the DNS failure).
    const causes = lines.filter((l) => /^\d+: /.test(l)).map((l) => l.replace(/^\d+: /, ""));
    const cause = causes.at(-1) ?? lines.at(-1) ?? "no error output";
    return `could not download the Deno runtime for ${target.denoTarget}` +
      (runtimeUrl ? ` (${runtimeUrl})` : "") +
      `: ${cause}. deno compile needs internet access to fetch it, or DENORT_BIN set to a local denort.`;
  }
  const error = lines.find((l) => l.startsWith("error:")) ?? lines.at(-1) ?? "no error output";
  return `deno compile failed for ${target.denoTarget}: ${error}`;
}
