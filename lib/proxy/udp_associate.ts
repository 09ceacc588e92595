/**
 * SOCKS5 UDP ASSOCIATE (RFC 1928 §7): a local UDP socket per association; each destination a
 * client's datagrams name gets a UDP stream of its own through the tunnel (DATA = one
 * datagram, as for a forwarded UDP session), whose replies go back to the client wrapped in
 * the header of the destination they came from. The association lives as long as its TCP
 * control connection.
 */
import { MAX_DATAGRAM } from "../contract.ts";
import { describeError } from "../errors.ts";
import type { Destination } from "../kube/resolve.ts";
import { addressBytes, formatHostPort } from "../net/address.ts";
import type { BufferPool } from "../net/buffer_pool.ts";
import type { SpliceCounts } from "../net/splice.ts";
import type { TunnelStream } from "../tunnel/types.ts";
import { encodeDatagram, parseDatagram } from "./socks5.ts";

/** What an association needs. */
export interface AssociationOptions {
  /** Where to bind: the local address the client reached the proxy at. */
  hostname: string;
  /** The client's address: only its datagrams are relayed. */
  client: string;
  /** The port the client said it sends from; 0: the first datagram's. */
  clientPort: number;
  /** Opens a UDP stream to a destination (rejects with the agent's OpenError). */
  open(destination: Destination): Promise<TunnelStream>;
  /** One line per destination that could not be opened. */
  onError(line: string): void;
  /** Streams (destinations) at once; datagrams to further ones are dropped. Default 256. */
  maxDestinations?: number;
  /** Where a reply's bytes go back once copied into the datagram sent (the session's pool). */
  buffers?: BufferPool;
  /** Payload bytes relayed: aToB the client's datagrams sent on, bToA the replies sent back. */
  counts?: SpliceCounts;
}

/** Datagrams a destination holds while its stream opens; later ones are dropped. */
const PENDING_LIMIT = 16;

interface Route {
  destination: Destination;
  stream?: TunnelStream;
  pending: Uint8Array[];
}

/** One association: bound at once, relaying from {@link serve} until {@link close}. */
export class UdpAssociation {
  readonly #socket: Deno.DatagramConn;
  readonly #options: AssociationOptions;
  readonly #routes = new Map<string, Route>();
  readonly #client: Uint8Array | null;
  #clientPort: number;
  #closed = false;
  /** Datagrams dropped: fragments, malformed, from strangers, or with no room. */
  dropped = 0;

  private constructor(socket: Deno.DatagramConn, options: AssociationOptions) {
    this.#socket = socket;
    this.#options = options;
    this.#client = addressBytes(options.client);
    this.#clientPort = options.clientPort;
  }

  /** Binds a socket on a free port of `options.hostname`; throws when it cannot. */
  static bind(options: AssociationOptions): UdpAssociation {
    const socket = Deno.listenDatagram({ hostname: options.hostname, port: 0, transport: "udp" });
    return new UdpAssociation(socket, options);
  }

  /** The address for the reply's BND.ADDR and BND.PORT: where the client sends datagrams. */
  get bound(): Destination {
    const addr = this.#socket.addr as Deno.NetAddr;
    return { host: addr.hostname, port: addr.port };
  }

  /** Destinations with a stream (or one opening) now. */
  get destinationCount(): number {
    return this.#routes.size;
  }

  /** Relays the client's datagrams until {@link close}; resolves then. */
  async serve(): Promise<void> {
    const buffer = new Uint8Array(MAX_DATAGRAM);
    while (!this.#closed) {
      let data: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [received, addr] = await this.#socket.receive(buffer);
        data = received.slice();
        from = addr as Deno.NetAddr;
      } catch {
        break; // closed
      }
      if (!this.#fromClient(from)) {
        this.dropped++;
        continue;
      }
      const datagram = parseDatagram(data);
      // Fragments are dropped: reassembly is optional (RFC 1928 §7) and no client in use
      // relies on it.
      if (!datagram || datagram.fragment !== 0) {
        this.dropped++;
        continue;
      }
      await this.#send(datagram.destination, datagram.payload);
    }
    this.close();
  }

  /** Whether `from` is the client; the first datagram from its address fixes an unknown port. */
  #fromClient(from: Deno.NetAddr): boolean {
    const bytes = addressBytes(from.hostname);
    if (!bytes || !this.#client || bytes.some((b, i) => b !== this.#client![i])) return false;
    if (this.#clientPort === 0) this.#clientPort = from.port;
    return from.port === this.#clientPort;
  }

  async #send(destination: Destination, payload: Uint8Array): Promise<void> {
    const key = formatHostPort(destination.host, destination.port);
    let route = this.#routes.get(key);
    if (!route) {
      if (this.#routes.size >= (this.#options.maxDestinations ?? 256)) {
        this.dropped++;
        return;
      }
      route = { destination, pending: [] };
      this.#routes.set(key, route);
      void this.#openRoute(key, route);
    }
    if (!route.stream) {
      if (route.pending.length < PENDING_LIMIT) route.pending.push(payload);
      else this.dropped++;
      return;
    }
    await this.#forward(route.stream, payload);
  }

  async #forward(stream: TunnelStream, payload: Uint8Array): Promise<void> {
    try {
      await stream.write(payload);
      if (this.#options.counts) this.#options.counts.aToB += payload.byteLength;
    } catch {
      this.dropped++;
    }
  }

  async #openRoute(key: string, route: Route): Promise<void> {
    let stream: TunnelStream;
    try {
      stream = await this.#options.open(route.destination);
    } catch (error) {
      // The next datagram to it tries again (a name may resolve later, say).
      this.#routes.delete(key);
      if (!this.#closed) this.#options.onError(`udp ${key}: ${describeOpenError(error)}`);
      return;
    }
    if (this.#closed) return stream.reset("association ended");
    route.stream = stream;
    for (const payload of route.pending.splice(0)) await this.#forward(stream, payload);
    // Replies, until the agent ends the session (idle) or the association ends.
    try {
      for (let reply; (reply = await stream.read()) !== null;) {
        if (this.#closed) break;
        const datagram = encodeDatagram(route.destination, reply);
        const size = reply.byteLength;
        this.#options.buffers?.release(reply);
        const to = {
          transport: "udp" as const,
          hostname: this.#options.client,
          port: this.#clientPort,
        };
        try {
          await this.#socket.send(datagram, to);
          if (this.#options.counts) this.#options.counts.bToA += size;
        } catch {
          this.dropped++;
        }
      }
    } catch {
      // reset by the agent or the tunnel: the next datagram opens a new stream
    }
    if (this.#routes.get(key) === route) this.#routes.delete(key);
    stream.reset("session ended");
  }

  /** Ends the association: the socket closes and every stream is reset. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#socket.close();
    } catch {
      // closed already
    }
    for (const route of this.#routes.values()) route.stream?.reset("association ended");
    this.#routes.clear();
  }
}

function describeOpenError(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" ? `${code}: ${describeError(error)}` : describeError(error);
}
