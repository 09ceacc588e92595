/**
 * Reads TCP_NODELAY back from a socket of this process, which Deno has no API for: the
 * socket's inode from /proc/self/net/tcp{,6} by its ports, its descriptor from /proc/self/fd,
 * then getsockopt(2) through FFI. Linux only.
 */

/** True where the probe can work. */
export const canProbeNoDelay = Deno.build.os === "linux";

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;

/** Whether the TCP socket of this process from `localPort` to `remotePort` has TCP_NODELAY. */
export function tcpNoDelay(localPort: number, remotePort: number): boolean {
  const inode = socketInode(localPort, remotePort);
  const fd = descriptorOf(inode);
  const libc = Deno.dlopen("libc.so.6", {
    getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  });
  try {
    const value = new Int32Array(1);
    const length = new Uint32Array([4]);
    const result = libc.symbols.getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, value, length);
    if (result !== 0) throw new Error(`getsockopt on fd ${fd} failed`);
    return value[0] !== 0;
  } finally {
    libc.close();
  }
}

function socketInode(localPort: number, remotePort: number): string {
  for (const file of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(file).split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10) continue;
      const port = (address: string) => parseInt(address.split(":")[1], 16);
      if (port(fields[1]) === localPort && port(fields[2]) === remotePort) return fields[9];
    }
  }
  throw new Error(`no TCP socket from port ${localPort} to port ${remotePort}`);
}

function descriptorOf(inode: string): number {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === `socket:[${inode}]`) {
        return Number(entry.name);
      }
    } catch {
      // closed since the listing
    }
  }
  throw new Error(`no descriptor for socket inode ${inode}`);
}
