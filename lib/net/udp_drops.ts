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
    table = Deno.readTextFileSync(tablePath(v6));
  } catch {
    return undefined;
  }
  return dropsIn(table, port, v6, hostname);
}

/** Table reads under way, shared by every socket closing meanwhile. */
const reading = new Map<string, Promise<string | undefined>>();

/**
 * {@link kernelDrops} off the event loop, for sockets that close often: the kernel writes a line
 * per UDP socket in the namespace, and a synchronous read stalled everything else each time a
 * session ended (docs/MEASUREMENTS.md). Sockets closing while a read is under way share it
 * (their counters up to then).
 */
export async function kernelDropsSoon(
  port: number,
  v6: boolean,
  hostname?: string,
): Promise<number | undefined> {
  const path = tablePath(v6);
  let table = reading.get(path);
  if (!table) {
    table = Deno.readTextFile(path).catch(() => undefined).finally(() => reading.delete(path));
    reading.set(path, table);
  }
  const text = await table;
  return text === undefined ? undefined : dropsIn(text, port, v6, hostname);
}

function tablePath(v6: boolean): string {
  return v6 ? "/proc/net/udp6" : "/proc/net/udp";
}

/** The drops of the socket on `port` in a /proc/net/udp(6) table; only its lines are split. */
function dropsIn(table: string, port: number, v6: boolean, hostname?: string): number | undefined {
  const needle = `:${port.toString(16).toUpperCase().padStart(4, "0")} `;
  const hexAddress = hostname && !v6 ? ipv4Hex(hostname) : undefined;
  for (let at = table.indexOf(needle); at !== -1; at = table.indexOf(needle, at + 1)) {
    const start = table.lastIndexOf("\n", at) + 1;
    const end = table.indexOf("\n", at);
    const line = table.slice(start, end === -1 ? undefined : end);
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    const fields = line.trim().split(/\s+/);
    if (fields.length < 13) continue;
    const [address, linePort] = fields[1].split(":");
    // The needle may have matched the remote address's port.
    if (`:${linePort} ` !== needle) continue;
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
