/**
 * The platforms relay is released for, and the names of what the release build makes for each.
 * Shared by the release build, the packaging templates and their tests, so an archive's name is
 * spelled in one place (scripts/install.sh spells it again, in sh, and its test checks the two
 * agree).
 */

/** One platform of a release: how `deno compile` names it and how archives name it. */
export interface ReleaseTarget {
  /** The `deno compile --target` triple. */
  readonly denoTarget: string;
  /** The OS as archive names (and `uname -s`, lower-cased) spell it. */
  readonly os: "linux" | "darwin" | "windows";
  /** The CPU as archive names spell it (`uname -m` on Linux). */
  readonly arch: "x86_64" | "aarch64";
}

/** Every platform a release ships a binary for. */
export const RELEASE_TARGETS: readonly ReleaseTarget[] = [
  { denoTarget: "x86_64-unknown-linux-gnu", os: "linux", arch: "x86_64" },
  { denoTarget: "aarch64-unknown-linux-gnu", os: "linux", arch: "aarch64" },
  { denoTarget: "x86_64-apple-darwin", os: "darwin", arch: "x86_64" },
  { denoTarget: "aarch64-apple-darwin", os: "darwin", arch: "aarch64" },
  { denoTarget: "x86_64-pc-windows-msvc", os: "windows", arch: "x86_64" },
];

/** The file name of the relay executable on `target` (Windows needs the .exe). */
export function binaryName(target: ReleaseTarget): string {
  return target.os === "windows" ? "relay.exe" : "relay";
}

/** `relay-<version>-<os>-<arch>.tar.gz`, or `.zip` for Windows, where zip is what users expect. */
export function archiveName(version: string, target: ReleaseTarget): string {
  const ext = target.os === "windows" ? "zip" : "tar.gz";
  return `relay-${version}-${target.os}-${target.arch}.${ext}`;
}

/** The release target whose `deno compile` triple is `denoTarget`, or an error naming the known ones. */
export function targetByTriple(denoTarget: string): ReleaseTarget {
  const found = RELEASE_TARGETS.find((t) => t.denoTarget === denoTarget);
  if (!found) {
    const known = RELEASE_TARGETS.map((t) => t.denoTarget).join(", ");
    throw new Error(`unknown target '${denoTarget}' (known: ${known})`);
  }
  return found;
}
