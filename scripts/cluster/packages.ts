/** The Debian packages the cluster needs, installed when missing. */
import { run } from "./proc.ts";

/** A package and a command that proves it is installed. */
const PACKAGES: [pkg: string, command: string][] = [
  ["iproute2", "ip"],
  ["iptables", "iptables"],
  ["conntrack", "conntrack"],
  ["socat", "socat"],
  ["redis-server", "redis-server"],
  ["openssl", "openssl"],
  ["haproxy", "haproxy"],
  ["dnsutils", "dig"],
  ["curl", "curl"],
  // The live view's end-to-end test runs relay in a terminal.
  ["tmux", "tmux"],
];

async function have(command: string): Promise<boolean> {
  return (await run(["sh", "-c", `command -v ${command}`])).code === 0;
}

/** Installs whatever is missing with apt-get; keeps Debian's own redis service off. */
export async function ensurePackages(log: (message: string) => void): Promise<void> {
  const missing: string[] = [];
  for (const [pkg, command] of PACKAGES) if (!await have(command)) missing.push(pkg);
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
