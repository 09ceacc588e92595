/**
 * A WebSocket client (RFC 6455) on a byte transport the caller opened (a Deno connection
 * through connTransport): the HTTP/1.1 upgrade (§4.1), then a WebSocketConnection
 * (websocket_connection.ts). relay opens its own sockets to set TCP_NODELAY, which Deno's
 * WebSocket does not allow.
 */
import { closeQuietly, writeAll } from "../net/socket.ts";
import {
  type ByteTransport,
  type ConnectionOptions,
  WebSocketConnection,
} from "./websocket_connection.ts";

export {
  type ByteTransport,
  type CloseInfo,
  type Message,
  type MessagePiece,
  WebSocketClosedError,
  WebSocketConnection,
} from "./websocket_connection.ts";
export { CloseCode, WebSocketProtocolError } from "./websocket_frames.ts";

/** Options of connectWebSocket. */
export interface WebSocketClientOptions extends ConnectionOptions {
  /** Subprotocols offered, in order of preference. */
  protocols?: readonly string[];
  /** Added to the upgrade request (authorization, impersonation). */
  headers?: Headers;
  /** Gives up on an upgrade not yet answered, closing the transport. */
  signal?: AbortSignal;
}

/** The server answered the upgrade with something other than 101: its status and body. */
export class UpgradeRefused extends Error {
  constructor(
    readonly status: number,
    readonly statusText: string,
    readonly headers: Headers,
    readonly body: string,
  ) {
    super(`HTTP ${status}${statusText ? ` ${statusText}` : ""}`);
    this.name = "UpgradeRefused";
  }
}

/** The server said 101 but broke the handshake's rules, or the answer was not HTTP. */
export class WebSocketHandshakeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebSocketHandshakeError";
  }
}

/** The connection ended before any answer to the upgrade: the request may not have been read. */
export class UpgradeUnanswered extends WebSocketHandshakeError {
  constructor() {
    super("the server closed the connection without answering");
    this.name = "UpgradeUnanswered";
  }
}

/**
 * Upgrades `transport` to a WebSocket at `url`. On any failure the transport is closed; an
 * aborted signal rejects with its reason.
 */
export async function connectWebSocket(
  transport: ByteTransport,
  url: URL,
  options: WebSocketClientOptions = {},
): Promise<WebSocketConnection> {
  const { signal } = options;
  const giveUp = () => transport.close();
  signal?.addEventListener("abort", giveUp, { once: true });
  try {
    signal?.throwIfAborted();
    const { protocol, leftover } = await upgrade(transport, url, options);
    signal?.throwIfAborted();
    return new WebSocketConnection(transport, protocol, leftover, options);
  } catch (error) {
    transport.close();
    if (signal?.aborted) throw signal.reason;
    throw error;
  } finally {
    signal?.removeEventListener("abort", giveUp);
  }
}

/** Most bytes one read takes: a whole tunnel batch of the other end's. */
const READ_BYTES = 256 * 1024;

/**
 * A Deno connection as a ByteTransport. Reads go into one buffer and come out as a copy of
 * what was read, since the WebSocket hands out views of them: a fresh buffer per read would be
 * zeroed whole while TLS fills only 16–32 KiB of it.
 */
export function connTransport(conn: Deno.Conn): ByteTransport {
  const buffer = new Uint8Array(READ_BYTES);
  return {
    async read() {
      const n = await conn.read(buffer);
      return n === null ? null : buffer.slice(0, n);
    },
    write: (bytes) => writeAll(conn, bytes),
    close: () => closeQuietly(conn),
  };
}

/** What a successful upgrade leaves: the chosen subprotocol and bytes read past the answer. */
export interface Upgraded {
  /** The subprotocol the server chose, "" if it chose none. */
  protocol: string;
  /** Frame bytes that arrived with the 101 answer. */
  leftover: Uint8Array;
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Most bytes of a response head, and of a refusal's body kept for its error. */
const MAX_HEAD_BYTES = 64 * 1024;
const MAX_BODY_BYTES = 64 * 1024;

/**
 * Sends the upgrade request for `url` and reads the answer. Rejects with UpgradeRefused for a
 * status other than 101 (after reading its body), WebSocketHandshakeError for a 101 that
 * breaks the rules, or the transport's error. Does not close the transport.
 */
async function upgrade(
  transport: ByteTransport,
  url: URL,
  options: { protocols?: readonly string[]; headers?: Headers } = {},
): Promise<Upgraded> {
  const key = encodeBase64(crypto.getRandomValues(new Uint8Array(16)));
  const protocols = options.protocols ?? [];
  const lines = [
    `GET ${url.pathname}${url.search} HTTP/1.1`,
    `Host: ${url.host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${key}`,
    "Sec-WebSocket-Version: 13",
  ];
  if (protocols.length > 0) lines.push(`Sec-WebSocket-Protocol: ${protocols.join(", ")}`);
  for (const [name, value] of options.headers ?? []) {
    if (/[\r\n]/.test(value)) throw new TypeError(`header ${name} holds a line break`);
    lines.push(`${name}: ${value}`);
  }
  await transport.write(new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`));

  const reader = new Reader(transport);
  const head = await reader.head();
  const { status, statusText, headers } = parseHead(head);
  if (status !== 101) {
    // 1xx, 204 and 304 answers have no body (RFC 9112 §6.3).
    const bodiless = status < 200 || status === 204 || status === 304;
    throw new UpgradeRefused(
      status,
      statusText,
      headers,
      bodiless ? "" : await reader.body(headers),
    );
  }
  if (headers.get("upgrade")?.toLowerCase() !== "websocket") {
    throw new WebSocketHandshakeError("the server answered 101 without Upgrade: websocket");
  }
  const connection = (headers.get("connection") ?? "").toLowerCase().split(/\s*,\s*/);
  if (!connection.includes("upgrade")) {
    throw new WebSocketHandshakeError("the server answered 101 without Connection: upgrade");
  }
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(key + GUID));
  if (headers.get("sec-websocket-accept") !== encodeBase64(new Uint8Array(digest))) {
    throw new WebSocketHandshakeError("the server's Sec-WebSocket-Accept does not match the key");
  }
  if (headers.has("sec-websocket-extensions")) {
    throw new WebSocketHandshakeError("the server chose an extension, and none was offered");
  }
  const protocol = headers.get("sec-websocket-protocol") ?? "";
  if (protocol !== "" && !protocols.includes(protocol)) {
    throw new WebSocketHandshakeError(
      `the server chose the subprotocol "${protocol}", which was not offered`,
    );
  }
  return { protocol, leftover: reader.rest() };
}

function parseHead(head: string): { status: number; statusText: string; headers: Headers } {
  const [statusLine, ...lines] = head.split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!match) {
    throw new WebSocketHandshakeError(
      `the server's answer is not HTTP/1.1: ${JSON.stringify(statusLine.slice(0, 80))}`,
    );
  }
  const headers = new Headers();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    try {
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    } catch {
      // a header name or value Headers refuses: not one the handshake needs
    }
  }
  return { status: Number(match[1]), statusText: match[2] ?? "", headers };
}

/** Reads the answer's head, then either a refusal's body or nothing more. */
class Reader {
  #buffered: Uint8Array = new Uint8Array(0);
  #ended = false;

  constructor(readonly transport: ByteTransport) {}

  /** The head up to the blank line, as text; what followed it stays buffered. */
  async head(): Promise<string> {
    for (let searched = 0;;) {
      const end = indexOfBlankLine(this.#buffered, Math.max(0, searched - 3));
      if (end >= 0) {
        const head = new TextDecoder("latin1").decode(this.#buffered.subarray(0, end));
        this.#buffered = this.#buffered.subarray(end + 4);
        return head;
      }
      searched = this.#buffered.length;
      if (searched > MAX_HEAD_BYTES) {
        throw new WebSocketHandshakeError(`the server's answer has a head over ${MAX_HEAD_BYTES}`);
      }
      if (!(await this.#more())) {
        if (this.#buffered.length === 0) throw new UpgradeUnanswered();
        throw new WebSocketHandshakeError(
          "the server closed the connection in the middle of its answer",
        );
      }
    }
  }

  /** A refusal's body, cut at MAX_BODY_BYTES; empty if it cannot be read. */
  async body(headers: Headers): Promise<string> {
    try {
      let bytes: Uint8Array;
      if (headers.get("transfer-encoding")?.toLowerCase().includes("chunked")) {
        bytes = await this.#chunked();
      } else {
        const length = headers.get("content-length");
        const want = length === null ? MAX_BODY_BYTES : Math.min(Number(length), MAX_BODY_BYTES);
        while (this.#buffered.length < want && await this.#more());
        bytes = this.#buffered.subarray(0, want);
      }
      return new TextDecoder().decode(bytes);
    } catch {
      return "";
    }
  }

  /** Bytes read past what was consumed. */
  rest(): Uint8Array {
    return this.#buffered;
  }

  async #chunked(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let total = 0;
    while (total < MAX_BODY_BYTES) {
      let eol: number;
      while ((eol = indexOfCrlf(this.#buffered)) < 0) {
        if (!(await this.#more())) return concat(parts);
      }
      const size = parseInt(new TextDecoder().decode(this.#buffered.subarray(0, eol)), 16);
      this.#buffered = this.#buffered.subarray(eol + 2);
      if (!(size > 0)) break;
      while (this.#buffered.length < size + 2 && await this.#more());
      const part = this.#buffered.subarray(0, Math.min(size, this.#buffered.length));
      parts.push(part);
      total += part.length;
      this.#buffered = this.#buffered.subarray(Math.min(size + 2, this.#buffered.length));
    }
    return concat(parts).subarray(0, MAX_BODY_BYTES);
  }

  async #more(): Promise<boolean> {
    if (this.#ended) return false;
    const chunk = await this.transport.read();
    if (chunk === null) {
      this.#ended = true;
      return false;
    }
    this.#buffered = this.#buffered.length === 0 ? chunk : concat([this.#buffered, chunk]);
    return true;
  }
}

function encodeBase64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function indexOfBlankLine(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

function indexOfCrlf(bytes: Uint8Array): number {
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10) return i;
  }
  return -1;
}
