/** The Debian packages `deno task demo` and `deno task test` need, installed when missing. */
import { run } from "./proc.ts";

/**
 * A package and a command that proves it is installed. Not only the cluster's: the demo runs
 * redis-cli, the shim sets pods' sysctls with procps's sysctl, and the release test unpacks the
 * Windows zip with unzip. A fresh Debian has none of them, and .ci/run must install nothing
 * this list lacks, or CI would pass where a new user's run fails.
 */
export const PACKAGES: readonly (readonly [pkg: string, command: string])[] = [
  ["iproute2", "ip"],
  ["iptables", "iptables"],
  ["conntrack", "conntrack"],
  ["socat", "socat"],
  ["redis-server", "redis-server"],
  ["redis-tools", "redis-cli"],
  ["openssl", "openssl"],
  ["haproxy", "haproxy"],
  ["dnsutils", "dig"],
  ["curl", "curl"],
  ["procps", "sysctl"],
  ["unzip", "unzip"],
  // The live view's end-to-end test runs relay in a terminal.
  ["tmux", "tmux"],
];

async function have(command: string): Promise<boolean> {
  return (await run(["sh", "-c", `command -v ${command}`])).code === 0;
}

/** The packages whose command is not on PATH, in {@link PACKAGES} order. */
export async function missingPackages(): Promise<string[]> {
  const missing: string[] = [];
  for (const [pkg, command] of PACKAGES) if (!await have(command)) missing.push(pkg);
  return missing;
}

/** Installs whatever is missing with apt-get; keeps Debian's own redis service off. */
export async function ensurePackages(log: (message: string) => void): Promise<void> {
  const missing = await missingPackages();
  if (missing.length > 0) {
    log(`installing ${missing.join(" ")}`);
    const env = { DEBIAN_FRONTEND: "noninteractive" };
    const update = await run(["apt-get", "update", "-q"], { env });
    if (update.code !== 0) throw new Error(`apt-get update failed: ${update.stderr}`);
    const install = await run(["apt-get", "install", "-y", "-q", ...missing], { env });
    if (install.code !== 0) throw new Error(`apt-get install failed: ${install.stderr}`);
  }
  // Redis runs only inside pods; the distribution's service must not hold port 6379.
  await run([
    "sh",
    "-c",
    "service redis-server stop; update-rc.d redis-server disable; " +
    "systemctl disable --now redis-server",
  ]).catch(() => {});
}
