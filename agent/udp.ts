/**
 * One UDP session for the agent: a socket of its own, datagrams sent to one destination and
 * replies accepted only from it, closed after a spell of silence.
 */
import { MAX_DATAGRAM } from "../lib/contract.ts";
import { addressBytes } from "../lib/net/address.ts";
import { duplexOf } from "../lib/net/channel.ts";
import type { ByteChannel, Duplex } from "../lib/net/types.ts";
import { kernelDropsSoon } from "../lib/net/udp_drops.ts";
import { resolveHost, type Resolver } from "./dial.ts";

/** What a UDP session needs. */
export interface UdpSessionOptions {
  resolve: Resolver;
  /** Close the session after this long with no datagram either way (ms). */
  idleMs: number;
  /**
   * Told once, as the session ends, how many datagrams from the destination the kernel
   * dropped because the session's socket buffer was full (the session was sending faster
   * than the tunnel carried it); unknown (not called) where /proc/net/udp is unreadable.
   */
  onDrops?: (dropped: number) => void;
  /** Keeps the addresses the agent may send to; throws when none is left. */
  screen?: (addresses: string[]) => string[];
}

/**
 * Opens a UDP "connection" to host:port: each chunk written is sent as one datagram, each
 * datagram from host:port is one chunk read. Reading ends when the session idles out or the
 * writing side is closed.
 */
export async function dialUdp(
  host: string,
  port: number,
  options: UdpSessionOptions,
): Promise<Duplex> {
  const resolved = await resolveHost(host, options.resolve);
  const [address] = options.screen ? options.screen(resolved) : resolved;
  const target = addressBytes(address);
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: address.includes(":") ? "::" : "0.0.0.0",
    port: 0,
  });
  const localPort = (socket.addr as Deno.NetAddr).port;
  const buffer = new Uint8Array(MAX_DATAGRAM);
  let closed = false;
  let lastActive = Date.now();
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const closeSocket = () => {
    try {
      socket.close();
    } catch {
      // already closed
    }
  };
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(idleTimer);
    const { onDrops } = options;
    if (!onDrops) return closeSocket();
    // Read before closing: the kernel forgets a socket's counters with the socket.
    void kernelDropsSoon(localPort, address.includes(":")).then((dropped) => {
      if (dropped !== undefined) onDrops(dropped);
    }).finally(closeSocket);
  };
  // One timer, re-armed lazily, rather than one per datagram.
  const armIdle = (delay: number) => {
    idleTimer = setTimeout(() => {
      const quiet = Date.now() - lastActive;
      if (quiet >= options.idleMs) close();
      else armIdle(options.idleMs - quiet);
    }, delay);
  };
  armIdle(options.idleMs);

  // Read and written as a channel, with no Web Streams per datagram; the streams are made
  // only if asked for.
  const channel: ByteChannel = {
    async read() {
      while (!closed) {
        let datagram: Uint8Array, from: Deno.Addr;
        try {
          [datagram, from] = await socket.receive(buffer);
        } catch {
          break; // the socket was closed (idle, or the client ended the session)
        }
        const peer = from as Deno.NetAddr;
        if (peer.port !== port || !sameAddress(addressBytes(peer.hostname), target)) continue;
        lastActive = Date.now();
        return datagram.slice();
      }
      close();
      return null;
    },
    async write(datagram) {
      if (closed) return;
      lastActive = Date.now();
      try {
        await socket.send(datagram, { transport: "udp", hostname: address, port });
      } catch {
        // UDP gives no delivery promise; a datagram the kernel refuses is simply lost
      }
    },
    closeWrite: close,
    abort: close,
  };
  return duplexOf(channel, { cancel: close });
}

/** Compares addresses as bytes, so `::ffff:1.2.3.4` and `1.2.3.4` are the same peer. */
function sameAddress(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (!a || !b) return false;
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}
