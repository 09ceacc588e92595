/**
 * One port-forward to one pod port, as a byte Duplex: the API server's
 * `pods/portforward` upgraded to a WebSocket with subprotocol `v4.channel.k8s.io`.
 *
 * Framing: every binary message starts with a channel byte (0 data, 1 error). The first
 * message on each channel carries the port, two bytes little-endian, which is checked and
 * stripped. Outgoing data is `[0, ...bytes]`. Text on the error channel fails the readable.
 */
import { readableOf, writableOf } from "../net/channel.ts";
import type { ByteChannel, Duplex, HeadroomWriter } from "../net/types.ts";
import type { RawConnection } from "./config.ts";
import { KubeError, UsageError } from "./errors.ts";

/** The subprotocol spoken on the port-forward WebSocket. */
export const PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io";

const DATA_CHANNEL = 0;
const ERROR_CHANNEL = 1;

/** The one thing dialPortForward needs from a loaded kubeconfig. */
export interface PortForwardCredentials {
  rawConnection(): Promise<RawConnection>;
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
  const socket = new WebSocket(url, {
    protocols: [PORT_FORWARD_PROTOCOL],
    headers: conn.headers,
    client: conn.client,
  });
  socket.binaryType = "arraybuffer";
  // Messages may arrive before the caller reads; queue them from the start.
  const duplex = new PortForwardDuplex(socket, target, options.maxBufferedBytes ?? 1 << 20);
  const { signal } = options;
  const giveUp = () => socket.close();
  signal?.addEventListener("abort", giveUp, { once: true });
  let opened = false;
  try {
    if (signal?.aborted) socket.close();
    else {
      opened = await new Promise<boolean>((resolve) => {
        socket.addEventListener("open", () => resolve(true), { once: true });
        socket.addEventListener("close", () => resolve(false), { once: true });
      });
    }
  } finally {
    signal?.removeEventListener("abort", giveUp);
  }
  if (!opened) {
    if (signal?.aborted) throw signal.reason;
    throw await diagnoseUpgrade(conn, url, target);
  }
  if (socket.protocol !== PORT_FORWARD_PROTOCOL) {
    socket.close();
    throw new KubeError(
      `the API server did not accept the ${PORT_FORWARD_PROTOCOL} port-forward protocol` +
        ` (it chose "${socket.protocol}")`,
    );
  }
  return duplex;
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

/** Deno's WebSocket reports a failed upgrade without its status; ask again with a plain GET. */
async function diagnoseUpgrade(
  conn: RawConnection,
  url: URL,
  target: PortForwardTarget,
): Promise<Error> {
  const where = `pod/${target.pod} port ${target.port} in namespace ${target.namespace}`;
  const httpUrl = new URL(url);
  httpUrl.protocol = url.protocol === "ws:" ? "http:" : "https:";
  let response: Response;
  try {
    response = await fetch(httpUrl, {
      headers: conn.headers,
      client: conn.client,
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    return new KubeError(
      `cannot open a port-forward to ${where}: cannot reach the API server at ${conn.server.origin}: ${
        error instanceof Error ? error.message : error
      }`,
      { cause: error },
    );
  }
  const body = await response.text().catch(() => "");
  const reason = statusMessage(body) ?? response.statusText;
  if (response.status === 403) {
    return new KubeError(
      `forbidden: cannot create/get pods/portforward in namespace ${target.namespace}` +
        (reason ? ` (${reason})` : ""),
      { status: 403 },
    );
  }
  if (response.status === 404) {
    return new UsageError(`pod ${target.pod} not found in namespace ${target.namespace}`);
  }
  return new KubeError(
    `cannot open a port-forward to ${where}: HTTP ${response.status}${reason ? ` ${reason}` : ""}`,
    { status: response.status },
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
 * The framing, the backpressure and the error channel on top of an (opening) WebSocket, as a
 * ByteChannel (what the tunnel reads and writes, per message, without Web Streams) and as a
 * Duplex whose streams are made on the channel when first asked for.
 */
class PortForwardDuplex implements Duplex, ByteChannel {
  /** Room for the channel byte, so the tunnel's batches are sent without another copy. */
  readonly headroom: HeadroomWriter = { bytes: 1, write: (chunk) => this.#send(chunk, true) };
  /** Deno's WebSocket copies a message in send(), before a write here resolves. */
  readonly chunkFreeAfterWrite = true;
  readonly #socket: WebSocket;
  readonly #target: PortForwardTarget;
  readonly #maxBuffered: number;
  /** Port-prefix bytes still expected on each channel. */
  readonly #prefixLeft = [2, 2];
  readonly #prefix = [new Uint8Array(2), new Uint8Array(2)];
  #errorText = "";
  /** Data received and not yet read: a WebSocket cannot be told to stop sending. */
  #received: Uint8Array[] = [];
  #reader: { resolve: (chunk: Uint8Array | null) => void; reject: (e: unknown) => void } | null =
    null;
  #readDone = false;
  #failure: Error | null = null;
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  constructor(socket: WebSocket, target: PortForwardTarget, maxBuffered: number) {
    this.#socket = socket;
    this.#target = target;
    this.#maxBuffered = maxBuffered;
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("close", (event) => this.#onClose(event));
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
  read(): Promise<Uint8Array | null> {
    const chunk = this.#received.shift();
    if (chunk !== undefined) return Promise.resolve(chunk);
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#readDone) return Promise.resolve(null);
    return new Promise((resolve, reject) => (this.#reader = { resolve, reject }));
  }

  /** A WebSocket cannot half-close: the end of writing closes it. */
  closeWrite(): void {
    this.#close();
  }

  abort(): void {
    this.#endRead();
    this.#close();
  }

  #onMessage(event: MessageEvent): void {
    if (!(event.data instanceof ArrayBuffer)) return; // v4 sends binary only
    let bytes: Uint8Array = new Uint8Array(event.data);
    if (bytes.length === 0) return;
    const channel = bytes[0];
    bytes = bytes.subarray(1);
    if (channel !== DATA_CHANNEL && channel !== ERROR_CHANNEL) return;
    bytes = this.#stripPrefix(channel, bytes);
    if (bytes.length === 0) return;
    if (channel === DATA_CHANNEL) {
      if (this.#readDone) return;
      const reader = this.#reader;
      this.#reader = null;
      if (reader) reader.resolve(bytes);
      else this.#received.push(bytes);
    } else {
      this.#errorText += new TextDecoder().decode(bytes);
      this.#fail(
        new KubeError(
          `port-forward to pod/${this.#target.pod} port ${this.#target.port} failed: ${this.#errorText}`,
        ),
      );
      this.#close();
    }
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
        this.#fail(
          new KubeError(
            `port-forward answered for port ${port} instead of ${this.#target.port} on pod/${this.#target.pod}`,
          ),
        );
        this.#close();
        return new Uint8Array(0);
      }
    }
    return bytes.subarray(take);
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.#send(chunk, false);
  }

  /**
   * Sends `chunk` on the data channel. The channel byte must precede the payload in one
   * message: in the byte before the chunk when `inHeadroom` says it is free, else in a copy.
   */
  async #send(chunk: Uint8Array, inHeadroom: boolean): Promise<void> {
    if (this.#socket.readyState !== WebSocket.OPEN) {
      throw new KubeError(`port-forward to pod/${this.#target.pod} is closed`);
    }
    let message: Uint8Array;
    if (inHeadroom && chunk.byteOffset >= 1) {
      message = new Uint8Array(chunk.buffer, chunk.byteOffset - 1, chunk.length + 1);
    } else {
      message = new Uint8Array(chunk.length + 1);
      message.set(chunk, 1);
    }
    message[0] = DATA_CHANNEL;
    this.#socket.send(message);
    // Deno's WebSocket has no "drain" event; poll only while above the mark.
    while (this.#socket.bufferedAmount > this.#maxBuffered) {
      if (this.#socket.readyState !== WebSocket.OPEN) {
        throw new KubeError(`port-forward to pod/${this.#target.pod} closed while writing`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  #onClose(event: CloseEvent): void {
    if (this.#readDone) return;
    if (this.#errorText === "" && !event.wasClean && event.code !== 1000 && event.code !== 1005) {
      this.#fail(
        new KubeError(
          `port-forward to pod/${this.#target.pod} port ${this.#target.port} was cut` +
            ` (WebSocket close ${event.code}${event.reason ? ` ${event.reason}` : ""})`,
        ),
      );
      return;
    }
    this.#endRead();
  }

  /** Like an errored stream: what was received and not yet read is dropped. */
  #fail(error: Error): void {
    if (this.#readDone) return;
    this.#failure = error;
    this.#received = [];
    this.#readDone = true;
    const reader = this.#reader;
    this.#reader = null;
    reader?.reject(error);
  }

  /** Like a closed stream: what was received is still read, then null. */
  #endRead(): void {
    if (this.#readDone) return;
    this.#readDone = true;
    const reader = this.#reader;
    this.#reader = null;
    reader?.resolve(null);
  }

  #close(): void {
    const state = this.#socket.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) this.#socket.close();
  }
}
