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

/**
 * Where the agent reaches the app that listens on these addresses: loopback when it listens
 * on every address or on loopback, else the one address it chose.
 */
export function appAddress(listening: string[]): string | undefined {
  if (listening.some((a) => a === "0.0.0.0" || a === "127.0.0.1" || a === "::ffff:127.0.0.1")) {
    return "127.0.0.1";
  }
  if (listening.some((a) => a === "::" || a === "::1")) return "::1";
  return listening[0]?.replace(/^::ffff:(?=\d+\.)/, "");
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
