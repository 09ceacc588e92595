/**
 * Connections to the API server with TCP_NODELAY, as byte transports for the WebSocket
 * client: with Nagle's algorithm on, a small write waits for the ACK of the one before, up to
 * a delayed ACK's ~40 ms (docs/MEASUREMENTS.md). Plain TCP for http:, Deno's TLS on top of it
 * for https:, and node:tls when the kubeconfig presents a client certificate, which neither
 * Deno.startTls can present nor Deno.connectTls can combine with TCP_NODELAY.
 */
import { connect as connectNodeTls, type TLSSocket } from "node:tls";
import { closeQuietly } from "../net/socket.ts";
import { type ByteTransport, connTransport } from "./websocket_client.ts";

/** Where to connect, and with what TLS material (PEM). */
export interface ApiEndpoint {
  server: URL;
  tls: { ca?: string; cert?: string; key?: string; serverName?: string };
}

/**
 * Connects to `endpoint.server` with TCP_NODELAY and finishes TLS. An aborted `signal` closes
 * what was opened and rejects with its reason.
 */
export async function dialApiServer(
  endpoint: ApiEndpoint,
  signal?: AbortSignal,
): Promise<ByteTransport> {
  signal?.throwIfAborted();
  const { server, tls } = endpoint;
  const hostname = server.hostname.replace(/^\[(.*)\]$/, "$1");
  const https = server.protocol === "https:" || server.protocol === "wss:";
  const port = Number(server.port) || (https ? 443 : 80);
  if (https && tls.cert && tls.key) return await nodeTls(hostname, port, endpoint, signal);
  let opened: Deno.Conn | undefined;
  // Deno (2.9) keeps a TLS socket closed mid-handshake until the server answers or closes it.
  const giveUp = () => opened && closeQuietly(opened);
  signal?.addEventListener("abort", giveUp, { once: true });
  try {
    const tcp = opened = await Deno.connect({ hostname, port, signal });
    tcp.setNoDelay(true);
    if (!https) return connTransport(tcp);
    const conn = opened = await Deno.startTls(tcp, {
      hostname: tls.serverName || hostname,
      caCerts: tls.ca ? [tls.ca] : undefined,
    });
    // Now rather than at the first write: a certificate that fails verification is told here.
    await conn.handshake();
    return connTransport(conn);
  } catch (error) {
    if (opened) closeQuietly(opened);
    if (signal?.aborted) throw signal.reason;
    throw error;
  } finally {
    signal?.removeEventListener("abort", giveUp);
  }
}

function nodeTls(
  host: string,
  port: number,
  endpoint: ApiEndpoint,
  signal?: AbortSignal,
): Promise<ByteTransport> {
  const { ca, cert, key, serverName } = endpoint.tls;
  return new Promise((resolve, reject) => {
    const socket = connectNodeTls({
      host,
      port,
      // SNI carries names only; an address is checked against the certificate's IP SANs.
      servername: serverName || (/^[\d.]+$|:/.test(host) ? undefined : host),
      ca,
      cert,
      key,
    });
    socket.setNoDelay(true);
    const giveUp = () => socket.destroy();
    const failed = (error: Error) => {
      signal?.removeEventListener("abort", giveUp);
      socket.destroy();
      reject(signal?.aborted ? signal.reason : error);
    };
    signal?.addEventListener("abort", giveUp, { once: true });
    socket.once("error", failed);
    socket.once("close", () => failed(new Error("the connection closed during the TLS handshake")));
    socket.once("secureConnect", () => {
      signal?.removeEventListener("abort", giveUp);
      socket.removeAllListeners("error");
      socket.removeAllListeners("close");
      resolve(new NodeTlsTransport(socket));
    });
  });
}

/** Received bytes held beyond which the socket stops reading from the network. */
const NODE_READ_AHEAD = 256 * 1024;

/** A node:tls socket as a ByteTransport, with its backpressure both ways. */
class NodeTlsTransport implements ByteTransport {
  readonly #socket: TLSSocket;
  #chunks: Uint8Array[] = [];
  #held = 0;
  #paused = false;
  #ended = false;
  #error: Error | null = null;
  #waiter: (() => void) | null = null;

  constructor(socket: TLSSocket) {
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#held += chunk.length;
      if (this.#held >= NODE_READ_AHEAD && !this.#paused) {
        this.#paused = true;
        socket.pause();
        holdNetworkReads(socket, true);
      }
      this.#wake();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#wake();
    });
    socket.on("error", (error: Error) => {
      this.#error ??= error;
      this.#wake();
    });
    socket.on("close", () => {
      this.#ended = true;
      this.#wake();
    });
  }

  async read(): Promise<Uint8Array | null> {
    for (;;) {
      const chunk = this.#chunks.shift();
      if (chunk !== undefined) {
        this.#held -= chunk.length;
        if (this.#paused && this.#held < NODE_READ_AHEAD) {
          this.#paused = false;
          holdNetworkReads(this.#socket, false);
          this.#socket.resume();
        }
        return chunk;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((resolve) => (this.#waiter = resolve));
    }
  }

  /** node:tls keeps `bytes` until its callback, so this resolves only then. */
  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#socket.destroyed) return reject(this.#error ?? new Error("the socket is closed"));
      this.#socket.write(bytes, (error) => (error ? reject(error) : resolve()));
    });
  }

  close(): void {
    this.#socket.destroy();
    this.#ended = true;
    this.#wake();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }
}

/**
 * Stops (or restarts) a node:tls socket's reads from the network: Deno's node:tls (2.9) keeps
 * reading from its TCP handle while the socket is paused, so what the API server sent would
 * pile up in memory instead of in TCP's window (docs/MEASUREMENTS.md). Where that handle is
 * not there (another Deno), pause() alone is what is left.
 */
function holdNetworkReads(socket: TLSSocket, hold: boolean): void {
  const tcp = (socket as unknown as { _handle?: { _nativeTcpHandle?: NativeHandle } })._handle
    ?._nativeTcpHandle;
  if (hold) tcp?.readStop?.();
  else tcp?.readStart?.();
}

interface NativeHandle {
  readStop?(): void;
  readStart?(): void;
}
