/**
 * Datagrams the kernel dropped for one UDP socket: Linux counts, per socket, the datagrams it
 * discarded because the socket's receive buffer was full (the owner did not read fast
 * enough). relay reads that counter so such losses are reported, not silently absorbed.
 */

/**
 * The `drops` counter of the UDP socket bound to `port` (on `hostname`, when given) in this
 * process's network namespace, from /proc/net/udp or /proc/net/udp6; undefined where that
 * table cannot be read (not Linux) or holds no such socket. Read it before closing the
 * socket: the counter goes with it.
 */
export function kernelDrops(port: number, v6: boolean, hostname?: string): number | undefined {
  let table: string;
  try {
    table = Deno.readTextFileSync(v6 ? "/proc/net/udp6" : "/proc/net/udp");
  } catch {
    return undefined;
  }
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  const hexAddress = hostname && !v6 ? ipv4Hex(hostname) : undefined;
  for (const line of table.split("\n").slice(1)) {
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    const fields = line.trim().split(/\s+/);
    if (fields.length < 13) continue;
    const [address, linePort] = fields[1].split(":");
    if (linePort !== hexPort) continue;
    // A port is shared by sockets on different addresses only; match the address if known.
    if (hexAddress && address !== hexAddress && address !== "00000000") continue;
    return Number(fields[12]);
  }
  return undefined;
}

/** An IPv4 address as /proc/net/udp writes it: the 32-bit value in host (little-endian) order. */
function ipv4Hex(hostname: string): string | undefined {
  const parts = hostname.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) return undefined;
  return parts.reverse().map((p) => p.toString(16).toUpperCase().padStart(2, "0")).join("");
}
