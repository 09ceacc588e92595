/**
 * Who listens on a TCP port of the pod, read from the kernel's socket tables of the agent's
 * network namespace (/proc/net/tcp and tcp6), which the agent shares with the app.
 */
import { formatIPv4, formatIPv6 } from "../lib/net/address.ts";

/** The kernel's state number for a listening socket. */
const TCP_LISTEN = "0A";

/** The local addresses something listens on at `port` (`0.0.0.0`, `::`, `127.0.0.1`, …). */
export async function listenersOn(port: number): Promise<string[]> {
  const found: string[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch {
      continue; // no IPv6 in this kernel or namespace
    }
    found.push(...parseListeners(text, port));
  }
  return found;
}

/** The listening addresses on `port` in one /proc/net/tcp{,6} table. */
export function parseListeners(table: string, port: number): string[] {
  const found: string[] = [];
  for (const line of table.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 4 || fields[3] !== TCP_LISTEN) continue;
    const [addressHex, portHex] = fields[1].split(":");
    if (parseInt(portHex, 16) !== port) continue;
    found.push(addressOf(addressHex));
  }
  return found;
}

/** The kernel prints each 32-bit word of an address in host (little-endian) byte order. */
function addressOf(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let word = 0; word < bytes.length / 4; word++) {
    for (let i = 0; i < 4; i++) {
      const at = (word * 4 + 3 - i) * 2;
      bytes[word * 4 + i] = parseInt(hex.slice(at, at + 2), 16);
    }
  }
  return bytes.length === 4 ? formatIPv4(bytes) : formatIPv6(bytes);
}

/** The pod's own addresses beyond loopback and link-local, by family. */
export interface PodAddresses {
  ipv4?: string;
  ipv6?: string;
}

/**
 * Where the agent reaches the app that listens on these addresses. An app listening on every
 * address is reached at the pod's own address, so that what the agent passes on does not come
 * from loopback, which apps may trust (an admin port, a rate limit); loopback only for an app
 * that listens there alone; else the one address it chose.
 */
export function appAddress(listening: string[], pod: PodAddresses = {}): string | undefined {
  const plain = listening.map((a) => a.replace(/^::ffff:(?=\d+\.)/, ""));
  if (plain.includes("0.0.0.0")) return pod.ipv4 ?? "127.0.0.1";
  if (plain.includes("::")) return pod.ipv6 ?? pod.ipv4 ?? "::1";
  if (plain.includes("127.0.0.1")) return "127.0.0.1";
  if (plain.includes("::1")) return "::1";
  return plain[0];
}

/** The pod's own addresses, from its interfaces; none known without them. */
export function podAddresses(): PodAddresses {
  const found: PodAddresses = {};
  try {
    for (const { name, family, address } of Deno.networkInterfaces()) {
      if (name === "lo") continue;
      if (family === "IPv4" && !/^(127|169\.254)\./.test(address)) found.ipv4 ??= address;
      if (family === "IPv6" && !/^(fe[89ab]|::1$)/i.test(address)) found.ipv6 ??= address;
    }
  } catch {
    // No access to the interfaces: loopback, as before.
  }
  return found;
}

/** Whether this process may change the namespace's netfilter rules (CAP_NET_ADMIN). */
export async function hasNetAdmin(): Promise<boolean> {
  try {
    const status = await Deno.readTextFile("/proc/self/status");
    const effective = /^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1];
    return effective !== undefined && (BigInt(`0x${effective}`) & (1n << 12n)) !== 0n;
  } catch {
    return false;
  }
}
