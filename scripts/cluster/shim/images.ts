/**
 * The shim's image map: which local command stands in for which container image. A pod's
 * `command` replaces the entrypoint and `args` are appended, as with a real runtime.
 */
import { RELAY_RUN_FLAGS } from "../../release/compile.ts";

/** What an image runs: its entrypoint (before any `args`). */
export interface ImageEntry {
  /** The image's ENTRYPOINT + CMD as argv; `command` in the pod spec replaces it. */
  entrypoint: string[];
}

/** Options for {@link resolveImage}. */
export interface ImageMapOptions {
  /** The repository root, where main.ts and tests/fixtures live. */
  repoDir: string;
  /** The deno binary. */
  deno: string;
  /** krelay's server binary (scripts/build-cluster.sh krelay), for the benchmark's krelay. */
  krelayServer?: string;
}

/** The repository part of an image reference: no registry host, tag or digest. */
export function imageRepository(image: string): string {
  let ref = image.split("@")[0];
  const slash = ref.lastIndexOf("/");
  const colon = ref.lastIndexOf(":");
  if (colon > slash) ref = ref.slice(0, colon);
  const parts = ref.split("/");
  // A first component with a dot, a colon or "localhost" is a registry host.
  if (parts.length > 1 && /[.:]|^localhost$/.test(parts[0])) parts.shift();
  if (parts.length === 2 && parts[0] === "library") parts.shift();
  return parts.join("/");
}

/** The command an image stands for, or undefined when the shim does not know the image. */
export function resolveImage(image: string, options: ImageMapOptions): ImageEntry | undefined {
  const repository = imageRepository(image);
  const denoScript = (script: string) => [
    options.deno,
    "run",
    "--allow-all",
    "--unstable-net",
    `${options.repoDir}/${script}`,
  ];
  // The agent image runs the release binary, which has relay's runtime flags compiled in.
  if (repository.endsWith("relay-agent")) {
    return { entrypoint: [options.deno, "run", ...RELAY_RUN_FLAGS, `${options.repoDir}/main.ts`] };
  }
  // krelay's client runs its server from this image (ghcr.io/knight42/krelay-server:TAG);
  // checked here, not at start, so a build made while the cluster is up is found.
  if (repository === "knight42/krelay-server") {
    const server = options.krelayServer;
    return server && isFile(server) ? { entrypoint: [server] } : undefined;
  }
  if (repository === "relay-test/echo") {
    return { entrypoint: denoScript("tests/fixtures/echo_server.ts") };
  }
  if (repository === "relay-test/agent-other-protocol") {
    return { entrypoint: denoScript("tests/fixtures/agent_other_protocol.ts") };
  }
  if (repository === "relay-test/dns") {
    return { entrypoint: denoScript("tests/fixtures/dns_server.ts") };
  }
  if (repository === "redis" || repository.endsWith("/redis")) {
    return {
      entrypoint: [
        "redis-server",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
      ],
    };
  }
  // Plain tools, handy for Jobs and debugging containers in tests.
  if (repository === "busybox" || repository === "debian" || repository === "relay-test/shell") {
    return { entrypoint: ["sh"] };
  }
  return undefined;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * The argv a container runs: `command` replaces the entrypoint, `args` follow (replacing the
 * image's own arguments when given, as Docker does with CMD).
 */
export function containerArgv(
  entry: ImageEntry,
  spec: { command?: string[]; args?: string[] },
): string[] {
  if (spec.command?.length) return [...spec.command, ...(spec.args ?? [])];
  return [...entry.entrypoint, ...(spec.args ?? [])];
}
