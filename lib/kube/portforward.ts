/**
 * One port-forward to one pod port, as a byte Duplex: the API server's
 * `pods/portforward` upgraded to a WebSocket with subprotocol `v4.channel.k8s.io`.
 *
 * Framing: every binary message starts with a channel byte (0 data, 1 error). The first
 * message on each channel carries the port, two bytes little-endian, which is checked and
 * stripped. Outgoing data is `[0, ...bytes]`. Text on the error channel fails the readable.
 *
 * The WebSocket is relay's own client (websocket_client.ts) on a connection with TCP_NODELAY
 * (api_socket.ts); through a kubeconfig's HTTP proxy it is Deno's (portforward_proxied.ts).
 */
import { readableOf, writableOf } from "../net/channel.ts";
import type { ByteChannel, Duplex, HeadroomWriter } from "../net/types.ts";
import { dialApiServer } from "./api_socket.ts";
import type { RawConnection } from "./config.ts";
import { KubeError, UsageError } from "./errors.ts";
import { openProxiedWebSocket } from "./portforward_proxied.ts";
import type { SpareConnections } from "./spare_connection.ts";
import {
  type ByteTransport,
  connectWebSocket,
  type MessagePiece,
  UpgradeRefused,
  UpgradeUnanswered,
  WebSocketClosedError,
  type WebSocketConnection,
  WebSocketHandshakeError,
  WebSocketProtocolError,
} from "./websocket_client.ts";

/** The subprotocol spoken on the port-forward WebSocket. */
export const PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io";

const DATA_CHANNEL = 0;
const ERROR_CHANNEL = 1;

/** What dialPortForward needs from a loaded kubeconfig. */
export interface PortForwardCredentials {
  rawConnection(): Promise<RawConnection>;
  /** A connection dialed ahead, used instead of dialing when there is one. */
  spares?: Pick<SpareConnections, "take">;
}

/** Which pod port to forward to. */
export interface PortForwardTarget {
  namespace: string;
  pod: string;
  port: number;
}

/** Tuning; the defaults suit a tunnel. */
export interface PortForwardOptions {
  /** Writes wait while the socket has more than this many bytes unsent. Default 1 MiB. */
  maxBufferedBytes?: number;
  /**
   * Gives up on an upgrade not yet answered, closing its socket: an API server (or a proxy
   * before it) that accepts a connection and never answers would otherwise hold it for good.
   */
  signal?: AbortSignal;
}

/** The WebSocket under a port-forward: either client, read as pieces of binary messages. */
export interface PortForwardSocket {
  readonly protocol: string;
  /** True until it closes or starts closing. */
  readonly open: boolean;
  /** Null once closed cleanly; rejects when cut (WebSocketClosedError) or broken. */
  readPiece(): Promise<MessagePiece | null>;
  /** Sends `[0, ...chunk]` as one message; `inHeadroom`: the byte before chunk is free. */
  sendData(chunk: Uint8Array, inHeadroom: boolean): Promise<void>;
  /** Starts the closing handshake. */
  close(): void;
  /** Closes at once; reads end. */
  abort(): void;
}

/**
 * Open a port-forward WebSocket to `target` and return it as a Duplex once the upgrade has
 * succeeded. Rejects with a one-line error: UsageError when the pod does not exist, KubeError
 * naming the permission on 403, else KubeError with the HTTP status and the server's reason.
 */
export async function dialPortForward(
  kube: PortForwardCredentials,
  target: PortForwardTarget,
  options: PortForwardOptions = {},
): Promise<Duplex> {
  const conn = await kube.rawConnection();
  const url = portForwardUrl(conn.server, target);
  const { signal } = options;
  const maxBufferedBytes = options.maxBufferedBytes ?? 1 << 20;
  const where = `pod/${target.pod} port ${target.port} in namespace ${target.namespace}`;
  let socket: PortForwardSocket;
  try {
    socket = conn.proxyUrl
      ? await openProxiedWebSocket(conn, url, PORT_FORWARD_PROTOCOL, { signal, maxBufferedBytes })
      : await openWebSocket(conn, url, kube.spares, { signal, maxBufferedBytes });
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    if (error instanceof UpgradeRefused) throw refusal(error, target);
    if (error instanceof WebSocketHandshakeError) {
      throw new KubeError(`cannot open a port-forward to ${where}: ${error.message}`, {
        cause: error,
      });
    }
    throw new KubeError(
      `cannot open a port-forward to ${where}: cannot reach the API server at ${conn.server.origin}: ${
        error instanceof Error ? error.message : error
      }`,
      { cause: error },
    );
  }
  if (socket.protocol !== PORT_FORWARD_PROTOCOL) {
    socket.abort();
    throw new KubeError(
      `the API server did not accept the ${PORT_FORWARD_PROTOCOL} port-forward protocol` +
        ` (it chose "${socket.protocol}")`,
    );
  }
  return new PortForwardDuplex(socket, target);
}

/**
 * relay's client on a connection of its own, with TCP_NODELAY: the spare if there is one, else
 * a new one; a spare the server has closed in the meantime is replaced by a new one once.
 */
async function openWebSocket(
  conn: RawConnection,
  url: URL,
  spares: PortForwardCredentials["spares"],
  options: { signal?: AbortSignal; maxBufferedBytes: number },
): Promise<PortForwardSocket> {
  const upgrade = async (transport: ByteTransport) =>
    new ClientSocket(
      await connectWebSocket(transport, url, {
        protocols: [PORT_FORWARD_PROTOCOL],
        headers: conn.headers,
        ...options,
      }),
    );
  const spare = await spares?.take(conn, options.signal);
  if (spare) {
    try {
      return await upgrade(spare);
    } catch (error) {
      const answered = error instanceof UpgradeRefused ||
        (error instanceof WebSocketHandshakeError && !(error instanceof UpgradeUnanswered));
      if (answered || options.signal?.aborted) throw error;
    }
  }
  return await upgrade(await dialApiServer(conn, options.signal));
}

/** The data channel's byte, sent before each chunk. */
const DATA_PREFIX = new Uint8Array([DATA_CHANNEL]);

/** relay's client copies each message as it masks it: the headroom byte goes unused. */
class ClientSocket implements PortForwardSocket {
  constructor(readonly ws: WebSocketConnection) {}
  get protocol(): string {
    return this.ws.protocol;
  }
  get open(): boolean {
    return this.ws.open;
  }
  readPiece(): Promise<MessagePiece | null> {
    return this.ws.readPiece();
  }
  sendData(chunk: Uint8Array): Promise<void> {
    return this.ws.send([DATA_PREFIX, chunk]);
  }
  close(): void {
    this.ws.close();
  }
  abort(): void {
    this.ws.abort();
  }
}

/** The WebSocket URL of pods/portforward, keeping any path prefix of the server URL. */
export function portForwardUrl(server: URL, target: PortForwardTarget): URL {
  const url = new URL(server);
  url.protocol = server.protocol === "http:" ? "ws:" : "wss:";
  const base = url.pathname.replace(/\/+$/, "");
  url.pathname = `${base}/api/v1/namespaces/${encodeURIComponent(target.namespace)}/pods/${
    encodeURIComponent(target.pod)
  }/portforward`;
  url.search = `?ports=${target.port}`;
  return url;
}

/** The API server's refusal of the upgrade as one line, by its status. */
function refusal(refused: UpgradeRefused, target: PortForwardTarget): Error {
  const reason = statusMessage(refused.body) ?? refused.statusText;
  if (refused.status === 403) {
    return new KubeError(
      `forbidden: cannot create/get pods/portforward in namespace ${target.namespace}` +
        (reason ? ` (${reason})` : ""),
      { status: 403 },
    );
  }
  if (refused.status === 404) {
    return new UsageError(`pod ${target.pod} not found in namespace ${target.namespace}`);
  }
  const where = `pod/${target.pod} port ${target.port} in namespace ${target.namespace}`;
  return new KubeError(
    `cannot open a port-forward to ${where}: HTTP ${refused.status}${reason ? ` ${reason}` : ""}`,
    { status: refused.status },
  );
}

function statusMessage(body: string): string | undefined {
  try {
    const message = JSON.parse(body)?.message;
    return typeof message === "string" && message ? message : undefined;
  } catch {
    return body.trim().split("\n")[0] || undefined;
  }
}

/**
 * The framing and the error channel on top of a PortForwardSocket, as a ByteChannel (what the
 * tunnel reads and writes, per message, without Web Streams) and as a Duplex whose streams are
 * made on the channel when first asked for.
 */
class PortForwardDuplex implements Duplex, ByteChannel {
  /** Room for the channel byte, so a batch can be sent without another copy. */
  readonly headroom: HeadroomWriter = { bytes: 1, write: (chunk) => this.#send(chunk, true) };
  /** Both sockets copy (or frame) a message before a write here resolves. */
  readonly chunkFreeAfterWrite = true;
  readonly #socket: PortForwardSocket;
  readonly #target: PortForwardTarget;
  /** Port-prefix bytes still expected on each channel. */
  readonly #prefixLeft = [2, 2];
  readonly #prefix = [new Uint8Array(2), new Uint8Array(2)];
  /** The channel of the message being read, -1 for none or one ignored. */
  #channel = -1;
  #errorText = "";
  readonly #errorDecoder = new TextDecoder();
  #readDone = false;
  #failure: Error | null = null;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  constructor(socket: PortForwardSocket, target: PortForwardTarget) {
    this.#socket = socket;
    this.#target = target;
  }

  get channel(): ByteChannel {
    return this;
  }

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= readableOf(this);
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableOf(this);
  }

  /** The next data received; null once the socket closed cleanly. Rejects on a failure. */
  async read(): Promise<Uint8Array | null> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      if (this.#readDone) return null;
      let piece: MessagePiece | null;
      try {
        piece = await this.#socket.readPiece();
      } catch (error) {
        throw this.#fail(this.#cut(error));
      }
      if (this.#readDone) return null; // aborted meanwhile
      if (piece === null) {
        this.#readDone = true;
        return null;
      }
      const data = this.#onPiece(piece);
      if (data !== null) return data;
    }
  }

  /** A WebSocket cannot half-close: the end of writing closes it. */
  closeWrite(): void {
    this.#socket.close();
  }

  abort(): void {
    this.#readDone = true;
    this.#socket.abort();
  }

  /** The data in `piece`, or null for a piece that carries none (prefix, error, ignored). */
  #onPiece(piece: MessagePiece): Uint8Array | null {
    if (!piece.binary) return null; // v4 sends binary only
    let bytes = piece.bytes;
    if (piece.first) {
      this.#channel = bytes.length > 0 ? bytes[0] : -1;
      bytes = bytes.subarray(1);
    }
    const channel = this.#channel;
    if (channel !== DATA_CHANNEL && channel !== ERROR_CHANNEL) return null;
    bytes = this.#stripPrefix(channel, bytes);
    if (bytes.length === 0 && !(channel === ERROR_CHANNEL && piece.last)) return null;
    if (channel === DATA_CHANNEL) return bytes;
    this.#errorText += this.#errorDecoder.decode(bytes, { stream: !piece.last });
    if (!piece.last || this.#errorText === "") return null;
    this.#socket.close();
    throw this.#fail(
      new KubeError(
        `port-forward to pod/${this.#target.pod} port ${this.#target.port} failed: ${this.#errorText}`,
      ),
    );
  }

  /** Consume (and check) the port announcement at the start of a channel. */
  #stripPrefix(channel: number, bytes: Uint8Array): Uint8Array {
    let left = this.#prefixLeft[channel];
    if (left === 0) return bytes;
    const take = Math.min(left, bytes.length);
    this.#prefix[channel].set(bytes.subarray(0, take), 2 - left);
    left -= take;
    this.#prefixLeft[channel] = left;
    if (left === 0) {
      const port = this.#prefix[channel][0] | (this.#prefix[channel][1] << 8);
      if (port !== this.#target.port) {
        this.#socket.close();
        throw this.#fail(
          new KubeError(
            `port-forward answered for port ${port} instead of ${this.#target.port} on pod/${this.#target.pod}`,
          ),
        );
      }
    }
    return bytes.subarray(take);
  }

  /** What a socket that was cut or broke the protocol is, in a port-forward's words. */
  #cut(error: unknown): Error {
    const what = `port-forward to pod/${this.#target.pod} port ${this.#target.port}`;
    if (error instanceof WebSocketClosedError) {
      const detail = error.message ? `: ${error.message}` : "";
      return new KubeError(`${what} was cut (WebSocket close ${error.code}${detail})`, {
        cause: error,
      });
    }
    if (error instanceof WebSocketProtocolError) {
      return new KubeError(
        `${what} failed: the API server broke the WebSocket protocol: ${error.message}`,
        {
          cause: error,
        },
      );
    }
    return error instanceof Error ? error : new Error(String(error));
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.#send(chunk, false);
  }

  /** Sends `chunk` on the data channel. */
  async #send(chunk: Uint8Array, inHeadroom: boolean): Promise<void> {
    if (!this.#socket.open) {
      throw new KubeError(`port-forward to pod/${this.#target.pod} is closed`);
    }
    try {
      await this.#socket.sendData(chunk, inHeadroom);
    } catch (error) {
      throw new KubeError(`port-forward to pod/${this.#target.pod} closed while writing`, {
        cause: error,
      });
    }
  }

  /** Like an errored stream: reads fail from now on. */
  #fail(error: Error): Error {
    if (!this.#failure && !this.#readDone) this.#failure = error;
    this.#readDone = true;
    return this.#failure ?? error;
  }
}
