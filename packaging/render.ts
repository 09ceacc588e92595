/**
 * Fills the krew manifest and Homebrew formula templates for a release, from its SHA256SUMS:
 *
 *   deno run -A packaging/render.ts --sums dist/SHA256SUMS --out dist/packaging
 *
 * writes dist/packaging/relay-forward.yaml and dist/packaging/relay.rb. Placeholders are
 * `{{VERSION}}`, `{{BASE_URL}}` and `{{SHA256_<OS>_<ARCH>}}` per release target; one the data
 * cannot fill, or an archive SHA256SUMS does not list, is an error rather than a broken file.
 */
import { Command } from "commander";
import { VERSION } from "../lib/version.ts";
import { parseChecksums } from "../scripts/release/checksums.ts";
import { archiveName, RELEASE_TARGETS } from "../scripts/release/targets.ts";

/** The GitHub repository releases are published from. */
export const RELEASE_REPO = "relay-dev/relay";

/** The krew plugin's name: `relay` in the krew index is krelay's. */
export const KREW_PLUGIN_NAME = "relay-forward";

/** The templates this module fills, by the file name each rendering is written as. */
export const TEMPLATES: Readonly<Record<string, URL>> = {
  [`${KREW_PLUGIN_NAME}.yaml`]: new URL(`./krew/${KREW_PLUGIN_NAME}.yaml`, import.meta.url),
  "relay.rb": new URL("./homebrew/relay.rb", import.meta.url),
};

/** What a rendering is filled from. */
export interface RenderValues {
  readonly version: string;
  /** Where the archives are downloaded from, without a trailing slash. */
  readonly baseUrl: string;
  /** Archive name → SHA-256 hex, as in the release's SHA256SUMS. */
  readonly sums: ReadonlyMap<string, string>;
}

/** The download URL base of a GitHub release of `version`. */
export function releaseBaseUrl(version: string): string {
  return `https://github.com/${RELEASE_REPO}/releases/download/v${version}`;
}

function placeholders(values: RenderValues): Map<string, string> {
  const map = new Map([["VERSION", values.version], ["BASE_URL", values.baseUrl]]);
  for (const target of RELEASE_TARGETS) {
    const archive = archiveName(values.version, target);
    const sum = values.sums.get(archive);
    if (!sum) throw new Error(`SHA256SUMS does not list ${archive}`);
    map.set(`SHA256_${target.os}_${target.arch}`.toUpperCase(), sum);
  }
  return map;
}

/** `template` with every `{{NAME}}` replaced; an unknown name is an error. */
export function render(template: string, values: RenderValues): string {
  const map = placeholders(values);
  return template.replace(/\{\{([A-Z0-9_]+)\}\}/g, (_, name: string) => {
    const value = map.get(name);
    if (value === undefined) throw new Error(`template names an unknown placeholder {{${name}}}`);
    return value;
  });
}

/** Renders every template into `outDir`; resolves to the paths written. */
export async function renderAll(values: RenderValues, outDir: string): Promise<string[]> {
  await Deno.mkdir(outDir, { recursive: true });
  const written: string[] = [];
  for (const [name, url] of Object.entries(TEMPLATES)) {
    const path = `${outDir}/${name}`;
    await Deno.writeTextFile(path, render(await Deno.readTextFile(url), values));
    written.push(path);
  }
  return written;
}

if (import.meta.main) {
  const opts = new Command()
    .name("render")
    .description("Fill the krew manifest and Homebrew formula templates for a release.")
    .requiredOption("--sums <file>", "the release's SHA256SUMS")
    .requiredOption("--out <dir>", "directory to write the filled files into")
    .option("--version <version>", "release version", VERSION)
    .option("--base-url <url>", "download URL base (default: the GitHub release)")
    .parse(Deno.args, { from: "user" })
    .opts<{ sums: string; out: string; version: string; baseUrl?: string }>();
  const values: RenderValues = {
    version: opts.version,
    baseUrl: (opts.baseUrl ?? releaseBaseUrl(opts.version)).replace(/\/$/, ""),
    sums: parseChecksums(await Deno.readTextFile(opts.sums)),
  };
  try {
    for (const path of await renderAll(values, opts.out)) console.log(path);
  } catch (e) {
    console.error(`render: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
