/**
 * The release build (`deno task compile`): compiles main.ts for every release target and
 * packages each binary as `relay-<version>-<os>-<arch>.tar.gz` (.zip for Windows) beside a
 * SHA256SUMS file, in dist/.
 *
 *   deno task compile                 build every target
 *   deno task compile --dry-run       print each `deno compile` command instead
 *   deno task compile --target x86_64-unknown-linux-gnu    one target (repeatable)
 *   deno task compile --tag v0.1.0    also fail unless the tag names deno.json's version (CI)
 */
import { resolve } from "node:path";
import { Command } from "commander";
import { VERSION } from "../lib/version.ts";
import { compile, compileArgs, CompileError, shellQuote } from "./release/compile.ts";
import { packageRelease, targetBuildDir } from "./release/package.ts";
import { RELEASE_TARGETS, type ReleaseTarget, targetByTriple } from "./release/targets.ts";

/** What one run of the release build does. */
export interface ReleaseOptions {
  readonly dryRun: boolean;
  readonly targets: readonly ReleaseTarget[];
  /** Output directory; a relative one is taken from the repository root. */
  readonly outDir: string;
  /** The git tag being released, checked against deno.json's version; none outside CI. */
  readonly tag?: string;
}

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

// Shipped in every archive when present: krew requires a license file in the archive.
const EXTRA_FILES = ["LICENSE", "README.md"];

async function existing(paths: readonly string[]): Promise<string[]> {
  const found: string[] = [];
  for (const p of paths) {
    try {
      if ((await Deno.stat(p)).isFile) found.push(p);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return found;
}

// SOURCE_DATE_EPOCH (seconds) makes archives byte-identical across rebuilds of one commit.
function archiveTime(): Date {
  const epoch = Deno.env.get("SOURCE_DATE_EPOCH");
  return epoch && /^\d+$/.test(epoch) ? new Date(Number(epoch) * 1000) : new Date();
}

/** Runs the release build; resolves to the exit status. */
export async function release(options: ReleaseOptions): Promise<number> {
  if (options.tag !== undefined && options.tag !== `v${VERSION}`) {
    console.error(
      `release: tag ${options.tag} does not match deno.json's version ${VERSION} (expected v${VERSION})`,
    );
    return 1;
  }
  const buildDir = `${options.outDir}/build`;
  if (options.dryRun) {
    for (const target of options.targets) {
      const args = compileArgs(target, { outDir: targetBuildDir(buildDir, target) });
      console.log(["deno", ...args].map(shellQuote).join(" "));
    }
    return 0;
  }
  for (const target of options.targets) {
    try {
      await compile(target, { root: ROOT, outDir: targetBuildDir(buildDir, target) });
    } catch (e) {
      if (!(e instanceof CompileError)) throw e;
      console.error(`release: ${e.message}`);
      return 1;
    }
    // Reported after the fact, so that a failed build prints its one line and nothing else.
    console.error(`release: compiled ${target.denoTarget}`);
  }
  const written = await packageRelease({
    version: VERSION,
    targets: options.targets,
    buildDir: resolve(ROOT, buildDir),
    outDir: resolve(ROOT, options.outDir),
    extraFiles: await existing(EXTRA_FILES.map((f) => `${ROOT}/${f}`)),
    mtime: archiveTime(),
  });
  for (const file of written) console.log(file);
  return 0;
}

function parseCommandLine(args: string[]): ReleaseOptions {
  const program = new Command()
    .name("release")
    .description("Compile relay for every release target and package the release assets.")
    .option("--dry-run", "print each deno compile command instead of running it", false)
    .option(
      "--target <triple>",
      "build only this deno compile target (repeatable)",
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option("--out <dir>", "output directory, relative to the repository root", "dist")
    .option("--tag <tag>", "the git tag being released; must be v<deno.json version>")
    .exitOverride((err) => Deno.exit(err.exitCode))
    .parse(args, { from: "user" });
  const opts = program.opts<{ dryRun: boolean; target: string[]; out: string; tag?: string }>();
  let targets: readonly ReleaseTarget[] = RELEASE_TARGETS;
  if (opts.target.length > 0) {
    try {
      targets = opts.target.map(targetByTriple);
    } catch (e) {
      program.error(`release: ${(e as Error).message}`);
    }
  }
  return { dryRun: opts.dryRun, targets, outDir: opts.out, tag: opts.tag };
}

if (import.meta.main) {
  Deno.exit(await release(parseCommandLine(Deno.args)));
}
