/**
 * Shared by the distribution tests (install, release, packaging): a fake release made of real
 * archives, a loopback HTTP server for it, the linters from scripts/tools.sh, and running
 * commands.
 */
import { type ArchiveEntry, tarGz, zip } from "../scripts/release/archive.ts";
import { formatChecksums, sha256Hex } from "../scripts/release/checksums.ts";
import { archiveName, binaryName, type ReleaseTarget } from "../scripts/release/targets.ts";

/** The repository root. */
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** What a command printed and how it ended. */
export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `cmd` with `args` to completion, capturing its output. */
export async function run(
  cmd: string,
  args: readonly string[],
  options: { env?: Record<string, string>; cwd?: string; clearEnv?: boolean } = {},
): Promise<CommandResult> {
  const out = await new Deno.Command(cmd, {
    args: [...args],
    env: options.env,
    cwd: options.cwd,
    clearEnv: options.clearEnv,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/**
 * The path of a linter, made available by scripts/tools.sh (built from the Go module proxy or
 * installed from the distribution). Throws when it cannot be had: the tests fail, not skip.
 */
export async function tool(
  name: "actionlint" | "validate-krew-manifest" | "kubectl-krew" | "shellcheck",
): Promise<string> {
  const r = await run(`${ROOT}/scripts/tools.sh`, [name]);
  const path = r.stdout.trim();
  if (r.code !== 0 || path === "") {
    throw new Error(`scripts/tools.sh could not provide ${name}:\n${r.stderr}`);
  }
  return path;
}

/** Files served by {@link serveDirectory}, and what it saw. */
export interface FileServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Request paths, in order. */
  readonly requests: string[];
  close(): Promise<void>;
}

/** Serves the files under `dir` on loopback; anything else is a 404. */
export function serveDirectory(dir: string): FileServer {
  const requests: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      requests.push(path);
      if (path.includes("..")) return new Response("bad path", { status: 400 });
      try {
        return new Response(await Deno.readFile(`${dir}${path}`));
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    requests,
    close: () => server.shutdown(),
  };
}

/** One release's worth of archives for `targets`, each holding `binary` (and a LICENSE). */
export async function writeFakeRelease(options: {
  dir: string;
  version: string;
  targets: readonly ReleaseTarget[];
  /** The bytes of the `relay` executable in every archive. */
  binary: string;
}): Promise<Map<string, string>> {
  await Deno.mkdir(options.dir, { recursive: true });
  const sums = new Map<string, string>();
  const mtime = new Date();
  for (const target of options.targets) {
    const entries: ArchiveEntry[] = [
      { name: binaryName(target), data: new TextEncoder().encode(options.binary), mode: 0o755 },
      { name: "LICENSE", data: new TextEncoder().encode("test license\n"), mode: 0o644 },
    ];
    const data = target.os === "windows"
      ? await zip(entries, { mtime })
      : await tarGz(entries, { mtime });
    const name = archiveName(options.version, target);
    await Deno.writeFile(`${options.dir}/${name}`, data);
    sums.set(name, await sha256Hex(data));
  }
  await Deno.writeTextFile(`${options.dir}/SHA256SUMS`, formatChecksums(sums));
  return sums;
}

/** The names in `dir`, sorted; [] when it does not exist. */
export async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names.sort();
}
