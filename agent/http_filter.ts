/**
 * Stealing with an HTTP filter: on each stolen connection the agent reads HTTP/1.1 requests
 * one at a time, sends those whose path or a header matches the filter to the client (a
 * stream on the tunnel) and the others to the app, and relays each answer back, so one
 * keep-alive connection can carry both kinds. A connection that does not start with an
 * HTTP/1.x request (or says nothing for FIRST_BYTES_MS: a server-speaks-first protocol) goes
 * to the app untouched.
 *
 * The framing is hand-written on purpose: bytes must pass through unchanged and each
 * message's end must be found on a live connection shared by two destinations; Deno's
 * node:http is built on its own server and cannot take over an accepted socket.
 */
import type { HttpFilter } from "../lib/contract.ts";
import type { BufferPool } from "../lib/net/buffer_pool.ts";
import { closeQuietly, ConnChannel } from "../lib/net/socket.ts";
import { splice } from "../lib/net/splice.ts";
import type { ByteChannel } from "../lib/net/types.ts";
import type { OpenRequest, Tunnel } from "../lib/tunnel/types.ts";

/** How long a caller may stay silent before it is taken to speak another protocol. */
export const FIRST_BYTES_MS = 1_000;
/** The most a request or response head may take. */
const MAX_HEAD = 64 * 1024;
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.[01]$/;
const CRLF2 = [13, 10, 13, 10];

/** A compiled filter: a request matches when its path or any header matches. */
export interface CompiledFilter {
  header?: RegExp;
  path?: RegExp;
}

/**
 * Compiles `filter`'s regular expressions; throws SyntaxError naming a bad one. Both ignore
 * case, as mirrord's do, so a mirrord config steals the same requests here.
 */
export function compileFilter(filter: HttpFilter): CompiledFilter {
  return {
    ...(filter.header ? { header: new RegExp(filter.header, "i") } : {}),
    ...(filter.path ? { path: new RegExp(filter.path, "i") } : {}),
  };
}

/**
 * Whether a request head (its target and header lines) matches `filter`. A header is matched
 * as `name: value`, one space after the colon, whatever spacing the client sent.
 */
export function matches(filter: CompiledFilter, target: string, headers: string[]): boolean {
  if (filter.path) {
    const path = target.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "") || "/";
    if (filter.path.test(path)) return true;
  }
  return filter.header !== undefined &&
    headers.some((line) => filter.header!.test(normalHeader(line)));
}

function normalHeader(line: string): string {
  const colon = line.indexOf(":");
  if (colon < 0) return line;
  return `${line.slice(0, colon).trim()}: ${line.slice(colon + 1).trim()}`;
}

/** Reads a ByteChannel with lookahead: whole heads, exact lengths, lines. */
export class Reader {
  #buf = new Uint8Array(0);
  #eof = false;
  #inflight: Promise<boolean> | undefined;

  constructor(private readonly source: ByteChannel) {}

  /** Bytes read but not yet taken. */
  get pending(): Uint8Array {
    return this.#buf;
  }

  /** Reads once more; false at the end of the stream. A read in flight is shared. */
  fill(): Promise<boolean> {
    return this.#inflight ??= this.#read().finally(() => (this.#inflight = undefined));
  }

  /** The stream again as a channel: buffered bytes first, then further reads. */
  channel(): ByteChannel {
    const source = this.source;
    return {
      read: async () => {
        if (this.#buf.length === 0 && !await this.fill()) return null;
        return this.take(this.#buf.length);
      },
      write: (chunk) => source.write(chunk),
      closeWrite: () => source.closeWrite(),
      abort: (reason) => source.abort(reason),
      onFailure: (callback) => source.onFailure?.(callback),
    };
  }

  async #read(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = await this.source.read();
    if (chunk === null) {
      this.#eof = true;
      return false;
    }
    const joined = new Uint8Array(this.#buf.length + chunk.length);
    joined.set(this.#buf);
    joined.set(chunk, this.#buf.length);
    this.#buf = joined;
    return true;
  }

  /** The next `n` buffered bytes, removed from the buffer. */
  take(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /**
   * A message head through its blank line; null at the end of the stream before a byte of
   * it; throws when it outgrows MAX_HEAD or the stream ends inside it.
   */
  async head(): Promise<Uint8Array | null> {
    for (let from = 0;;) {
      const end = indexOf(this.#buf, CRLF2, Math.max(0, from - 3));
      if (end >= 0) return this.take(end + 4);
      if (this.#buf.length > MAX_HEAD) throw new Error("HTTP head too large");
      from = this.#buf.length;
      if (!await this.fill()) {
        if (this.#buf.length === 0) return null;
        throw new Error("connection ended inside an HTTP head");
      }
    }
  }

  /** One line with its CRLF. */
  async line(): Promise<Uint8Array> {
    for (;;) {
      const end = indexOf(this.#buf, [13, 10], 0);
      if (end >= 0) return this.take(end + 2);
      if (this.#buf.length > MAX_HEAD) throw new Error("HTTP line too long");
      if (!await this.fill()) throw new Error("connection ended inside a chunked body");
    }
  }

  /** Copies exactly `n` bytes to `to`. */
  async copy(n: number, to: ByteChannel): Promise<void> {
    while (n > 0) {
      if (this.#buf.length === 0 && !await this.fill()) {
        throw new Error("connection ended inside an HTTP body");
      }
      const part = this.take(Math.min(n, this.#buf.length));
      n -= part.length;
      await to.write(part);
    }
  }

  /** Copies everything up to the end of the stream to `to`. */
  async copyToEnd(to: ByteChannel): Promise<void> {
    do {
      if (this.#buf.length > 0) await to.write(this.take(this.#buf.length));
    } while (await this.fill());
  }
}

/** A parsed head: its first line and header lines, and what the framing needs. */
export interface Head {
  bytes: Uint8Array;
  first: string;
  headers: string[];
  chunked: boolean;
  length: number | undefined;
  close: boolean;
}

export function parseHead(bytes: Uint8Array): Head {
  const lines = new TextDecoder("latin1").decode(bytes.subarray(0, bytes.length - 4))
    .split("\r\n");
  const headers = lines.slice(1);
  let chunked = false;
  let length: number | undefined;
  let close = false;
  for (const line of headers) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`malformed HTTP header line`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim().toLowerCase();
    if (name === "transfer-encoding") chunked = /(^|,)\s*chunked\s*$/.test(value);
    else if (name === "content-length") {
      if (!/^\d+$/.test(value)) throw new Error("bad Content-Length");
      length = Number(value);
    } else if (name === "connection") close = /(^|,)\s*close\s*(,|$)/.test(value);
  }
  return { bytes, first: lines[0], headers, chunked, length, close };
}

/** Copies a body framed as `head` says (requests: no framing means no body). */
async function copyBody(
  head: Head,
  from: Reader,
  to: ByteChannel,
  untilClose: boolean,
): Promise<void> {
  if (head.chunked) {
    for (;;) {
      const sizeLine = await from.line();
      await to.write(sizeLine);
      const size = parseInt(new TextDecoder().decode(sizeLine).split(";")[0].trim(), 16);
      if (!Number.isFinite(size) || size < 0) throw new Error("bad chunk size");
      if (size === 0) {
        // Trailers, then the blank line.
        for (let line; (line = await from.line()).length > 2;) await to.write(line);
        await to.write(new Uint8Array([13, 10]));
        return;
      }
      await from.copy(size + 2, to);
    }
  }
  if (head.length !== undefined) return await from.copy(head.length, to);
  if (untilClose) await from.copyToEnd(to);
}

/** One destination of a filtered connection, connected when first needed. */
interface Destination {
  channel: ByteChannel;
  reader: Reader;
}

/** Serves one stolen connection through `filter`. */
export async function filterConnection(
  caller: Deno.TcpConn,
  app: { hostname: string; port: number } | undefined,
  request: OpenRequest,
  tunnel: Tunnel,
  filter: CompiledFilter,
  log: (line: string) => void,
  buffers?: BufferPool,
): Promise<void> {
  const callerChannel = new ConnChannel(caller, buffers);
  const fromCaller = new Reader(callerChannel);
  let toApp: Destination | undefined;
  let toClient: Destination | undefined;
  const connectApp = async (): Promise<Destination> => {
    if (!app) throw new Error(`nothing listens on port ${request.port} in the pod`);
    const conn = await Deno.connect({ ...app, transport: "tcp" });
    conn.setNoDelay(true);
    const channel = new ConnChannel(conn, buffers);
    return { channel, reader: new Reader(channel) };
  };
  const connectClient = async (): Promise<Destination> => {
    const stream = await tunnel.open(request);
    return { channel: stream, reader: new Reader(stream) };
  };
  const endAll = () => {
    callerChannel.abort();
    toApp?.channel.abort("done");
    toClient?.channel.abort("done");
  };
  try {
    const first = await firstBytes(fromCaller);
    if (!first || !REQUEST_LINE.test(firstLine(fromCaller.pending))) {
      // Not HTTP/1.x: the app gets the connection as it came.
      const to = await connectApp();
      await splice(fromCaller.channel(), to.channel);
      return;
    }
    for (;;) {
      const headBytes = await fromCaller.head();
      if (headBytes === null) break;
      const head = parseHead(headBytes);
      const [, method, target] = REQUEST_LINE.exec(head.first) ?? [];
      if (!method) throw new Error("not an HTTP/1.x request line");
      const local = matches(filter, target, head.headers);
      let dest: Destination;
      try {
        dest = local ? (toClient ??= await connectClient()) : (toApp ??= await connectApp());
      } catch (error) {
        // The caller speaks HTTP: it gets an answer saying why, as from any proxy.
        await badGateway(callerChannel, local ? "relay's local port" : "the app", error);
        throw error;
      }
      await dest.channel.write(headBytes);
      await copyBody(head, fromCaller, dest.channel, false);
      const response = await relayResponse(dest, callerChannel, method);
      if (response === "upgraded") {
        // A protocol switch (WebSocket) or a tunnel: the rest is raw bytes both ways.
        await splice(fromCaller.channel(), dest.reader.channel());
        return;
      }
      if (response === "closed" || head.close) break;
      if (response === "dest-closed") {
        if (local) toClient = undefined;
        else toApp = undefined;
      }
    }
    await callerChannel.closeWrite();
  } catch (error) {
    log(`relay agent: HTTP filter on port ${request.port}: ${(error as Error).message}`);
  } finally {
    endAll();
    closeQuietly(caller);
  }
}

/** Answers the caller 502 and closes, when its request's destination cannot be reached. */
async function badGateway(caller: ByteChannel, who: string, error: unknown): Promise<void> {
  const body = new TextEncoder().encode(
    `relay: ${who} did not answer: ${error instanceof Error ? error.message : error}\n`,
  );
  const head = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n" +
    `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  try {
    await caller.write(new TextEncoder().encode(head));
    await caller.write(body);
    await caller.closeWrite();
  } catch {
    // the caller went away: nobody to tell
  }
}

/**
 * Relays one response from `dest` to the caller. "closed": the response ended with its
 * connection (the caller's ends too); "dest-closed": complete, but its sender closes;
 * "upgraded": 101 or a successful CONNECT.
 */
async function relayResponse(
  dest: Destination,
  caller: ByteChannel,
  method: string,
): Promise<"kept" | "closed" | "dest-closed" | "upgraded"> {
  for (;;) {
    const bytes = await dest.reader.head();
    if (bytes === null) throw new Error("the destination closed before answering");
    const head = parseHead(bytes);
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head.first)?.[1]);
    if (!status) throw new Error("not an HTTP/1.x response");
    await caller.write(bytes);
    if (status === 101 || (method === "CONNECT" && status >= 200 && status < 300)) {
      return "upgraded";
    }
    if (status >= 100 && status < 200) continue; // 100 Continue and friends: the real one follows
    const bodiless = method === "HEAD" || status === 204 || status === 304;
    if (!bodiless && !head.chunked && head.length === undefined) {
      await dest.reader.copyToEnd(caller);
      return "closed";
    }
    if (!bodiless) await copyBody(head, dest.reader, caller, false);
    return head.close ? "dest-closed" : "kept";
  }
}

/** Waits for the caller's first bytes, FIRST_BYTES_MS at most; false if none came. */
async function firstBytes(reader: Reader): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const silent = new Promise<false>((resolve) =>
    timer = setTimeout(() => resolve(false), FIRST_BYTES_MS)
  );
  try {
    // The read goes on if the caller is silent; its bytes are then still in the Reader.
    const filling = reader.fill();
    if (!await Promise.race([filling, silent])) return false;
    // A request line can come in pieces: read until it is whole (or the head is).
    while (indexOf(reader.pending, [13, 10], 0) < 0 && reader.pending.length < MAX_HEAD) {
      if (!await reader.fill()) break;
    }
    return true;
  } finally {
    clearTimeout(timer);
  }
}

function firstLine(bytes: Uint8Array): string {
  const end = indexOf(bytes, [13, 10], 0);
  return new TextDecoder("latin1").decode(end >= 0 ? bytes.subarray(0, end) : bytes);
}

function indexOf(haystack: Uint8Array, needle: number[], from: number): number {
  outer: for (let i = from; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
