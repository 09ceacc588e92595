/**
 * The port-forward WebSocket through an HTTP proxy (a kubeconfig's `proxy-url`): Deno's own
 * WebSocket, which connects through the proxy but leaves Nagle's algorithm on. Everywhere else
 * relay's client (websocket_client.ts) carries the port-forward.
 */
import type { RawConnection } from "./config.ts";
import type { PortForwardSocket } from "./portforward.ts";
import type { MessagePiece } from "./websocket_client.ts";
import { UpgradeRefused, WebSocketClosedError } from "./websocket_client.ts";

/**
 * Opens `url` with Deno's WebSocket. Rejects with the signal's reason when it aborts, with
 * UpgradeRefused when the API server refused (Deno's WebSocket does not say with what, so a
 * plain GET asks again), or with why the API server could not be reached.
 */
export async function openProxiedWebSocket(
  conn: RawConnection,
  url: URL,
  protocol: string,
  options: { signal?: AbortSignal; maxBufferedBytes: number },
): Promise<PortForwardSocket> {
  const socket = new WebSocket(url, {
    protocols: [protocol],
    headers: conn.headers,
    client: conn.client,
  });
  socket.binaryType = "arraybuffer";
  // Messages may arrive before the caller reads; queue them from the start.
  const pieces = new DenoWebSocketPieces(socket, options.maxBufferedBytes);
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
  if (opened) return pieces;
  if (signal?.aborted) throw signal.reason;
  const httpUrl = new URL(url);
  httpUrl.protocol = url.protocol === "ws:" ? "http:" : "https:";
  const response = await fetch(httpUrl, {
    headers: conn.headers,
    client: conn.client,
    signal: AbortSignal.timeout(10_000),
  });
  const body = await response.text().catch(() => "");
  throw new UpgradeRefused(response.status, response.statusText, response.headers, body);
}

/** Deno's WebSocket, whose every message is whole, as pieces of messages. */
class DenoWebSocketPieces implements PortForwardSocket {
  readonly #socket: WebSocket;
  readonly #maxBuffered: number;
  /** Messages received and not yet read: a WebSocket cannot be told to stop sending. */
  #received: Uint8Array[] = [];
  #reader: { resolve: (piece: MessagePiece | null) => void; reject: (e: unknown) => void } | null =
    null;
  #end: { error: Error } | "closed" | null = null;

  constructor(socket: WebSocket, maxBuffered: number) {
    this.#socket = socket;
    this.#maxBuffered = maxBuffered;
    socket.addEventListener("message", (event) => {
      if (!(event.data instanceof ArrayBuffer)) return; // v4 sends binary only
      const bytes = new Uint8Array(event.data);
      const reader = this.#reader;
      this.#reader = null;
      if (reader) reader.resolve(whole(bytes));
      else this.#received.push(bytes);
    });
    socket.addEventListener("close", (event) => {
      if (!event.wasClean && event.code !== 1000 && event.code !== 1005) {
        this.#finish({ error: new WebSocketClosedError(event.reason, event.code) });
      } else this.#finish("closed");
    });
  }

  get protocol(): string {
    return this.#socket.protocol;
  }

  get open(): boolean {
    return this.#socket.readyState === WebSocket.OPEN;
  }

  readPiece(): Promise<MessagePiece | null> {
    const bytes = this.#received.shift();
    if (bytes !== undefined) return Promise.resolve(whole(bytes));
    if (this.#end === "closed") return Promise.resolve(null);
    if (this.#end) return Promise.reject(this.#end.error);
    return new Promise((resolve, reject) => (this.#reader = { resolve, reject }));
  }

  /** The channel byte goes in the byte before `chunk` when it is free, else into a copy. */
  async sendData(chunk: Uint8Array, inHeadroom: boolean): Promise<void> {
    let message: Uint8Array;
    if (inHeadroom && chunk.byteOffset >= 1) {
      message = new Uint8Array(chunk.buffer, chunk.byteOffset - 1, chunk.length + 1);
    } else {
      message = new Uint8Array(chunk.length + 1);
      message.set(chunk, 1);
    }
    message[0] = 0;
    this.#socket.send(message);
    // Deno's WebSocket has no "drain" event; poll only while above the mark.
    while (this.#socket.bufferedAmount > this.#maxBuffered) {
      if (this.#socket.readyState !== WebSocket.OPEN) throw new Error("the WebSocket closed");
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  close(): void {
    const state = this.#socket.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) this.#socket.close();
  }

  abort(): void {
    this.#received = [];
    this.#finish("closed");
    this.close();
  }

  #finish(end: { error: Error } | "closed"): void {
    if (this.#end) return;
    this.#end = end;
    const reader = this.#reader;
    this.#reader = null;
    if (end === "closed") reader?.resolve(null);
    else {
      this.#received = [];
      reader?.reject(end.error);
    }
  }
}

function whole(bytes: Uint8Array): MessagePiece {
  return { binary: true, bytes, first: true, last: true };
}
