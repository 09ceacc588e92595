/**
 * Turns compiled binaries into release assets: one archive per target and a SHA256SUMS file.
 */
import { type ArchiveEntry, tarGz, zip } from "./archive.ts";
import { formatChecksums, sha256Hex } from "./checksums.ts";
import { archiveName, binaryName, type ReleaseTarget } from "./targets.ts";

/** Where the binaries are and where the assets go. */
export interface PackageOptions {
  readonly version: string;
  readonly targets: readonly ReleaseTarget[];
  /** Holds `<denoTarget>/relay[.exe]` for every target. */
  readonly buildDir: string;
  /** Receives the archives and SHA256SUMS. */
  readonly outDir: string;
  /** Files put beside the binary in every archive (krew wants a LICENSE in the archive). */
  readonly extraFiles: readonly string[];
  /** Time recorded for every archive entry (SOURCE_DATE_EPOCH in CI, for reproducible assets). */
  readonly mtime: Date;
}

/** The binary's directory for `target` under a build directory. */
export function targetBuildDir(buildDir: string, target: ReleaseTarget): string {
  return `${buildDir}/${target.denoTarget}`;
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Writes every target's archive and SHA256SUMS into `outDir`; returns the files written. */
export async function packageRelease(options: PackageOptions): Promise<string[]> {
  await Deno.mkdir(options.outDir, { recursive: true });
  const extras: ArchiveEntry[] = await Promise.all(
    options.extraFiles.map(async (path) => ({
      name: baseName(path),
      data: await Deno.readFile(path),
      mode: 0o644,
    })),
  );
  const sums = new Map<string, string>();
  const written: string[] = [];
  for (const target of options.targets) {
    const binary = binaryName(target);
    const entries = [
      {
        name: binary,
        data: await Deno.readFile(`${targetBuildDir(options.buildDir, target)}/${binary}`),
        mode: 0o755,
      },
      ...extras,
    ];
    const archive = target.os === "windows"
      ? await zip(entries, { mtime: options.mtime })
      : await tarGz(entries, { mtime: options.mtime });
    const name = archiveName(options.version, target);
    await Deno.writeFile(`${options.outDir}/${name}`, archive);
    sums.set(name, await sha256Hex(archive));
    written.push(`${options.outDir}/${name}`);
  }
  await Deno.writeTextFile(`${options.outDir}/SHA256SUMS`, formatChecksums(sums));
  written.push(`${options.outDir}/SHA256SUMS`);
  return written;
}
