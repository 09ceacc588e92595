/**
 * `relay proxy`, a session entry beside the forward direction (lib/session/run.ts): one local
 * port that speaks SOCKS5 and HTTP, told apart by the first byte. Each connection is a stream
 * on the session's tunnels to what the client names; names are resolved by the agent, inside
 * the cluster.
 */
import { describeError, UsageError } from "../errors.ts";
import { bindEach } from "../listen/bind.ts";
import { TcpListener } from "../listen/tcp.ts";
import type { Logger } from "../log.ts";
import { formatHostPort } from "../net/address.ts";
import { qualifier } from "../kube/short_names.ts";
import { closeQuietly, ConnChannel, writeAll } from "../net/socket.ts";
import { splice, type SpliceCounts } from "../net/splice.ts";
import { proxyRoute } from "../status/routes.ts";
import type { RouteStats } from "../status/session_status.ts";
import type { Protocol } from "../net/types.ts";
import type { ProxySpec } from "../plan.ts";
import type { ServeContext, SessionEntry } from "../session/run.ts";
import { OpenError, type TunnelStream } from "../tunnel/types.ts";
import {
  CONNECT_ESTABLISHED,
  errorResponse,
  httpHandshake,
  type ProxyRequest,
  statusForFailure,
} from "./http_proxy.ts";
import { HandshakeReader, ProxyRefusal } from "./reader.ts";
import {
  type Destination,
  encodeReply,
  REPLY,
  replyForFailure,
  SOCKS5,
  socksHandshake,
  type SocksRequest,
} from "./socks5.ts";
import { UdpAssociation } from "./udp_associate.ts";

/** A client that has not finished its handshake by then is closed. */
const HANDSHAKE_TIMEOUT_MS = 30_000;
/** How long a refused client may take to read the refusal before its socket closes. */
const LINGER_MS = 2_000;
/** SOCKS4's "request rejected or failed" (its reply is VN 0, CD 91, then 6 ignored bytes). */
const SOCKS4_REJECTED = Uint8Array.of(0x00, 0x5b, 0, 0, 0, 0, 0, 0);
const TLS_HANDSHAKE = 0x16;

/**
 * Binds the proxy's port on every address, before the session starts (a busy port is exit 2
 * before any cluster work); main.ts closes the listeners after the run.
 */
export function bindProxy(
  spec: ProxySpec,
  addresses: readonly string[],
  warn?: (message: string) => void,
): TcpListener[] {
  return bindEach(addresses, spec.port, (address) => {
    try {
      return TcpListener.bind(address);
    } catch (error) {
      // The forward's advice (a free port is `:PORT`) is not how the proxy says it.
      if (!(error instanceof UsageError && error.cause instanceof Deno.errors.AddrInUse)) {
        throw error;
      }
      throw new UsageError(
        `relay proxy: cannot listen on ${formatHostPort(address.hostname, address.port)}: the ` +
          `address is already in use (choose another --port, or --port 0 for a free one)`,
        { cause: error },
      );
    }
  }, warn);
}

/** What every client connection is served with. */
interface Proxy {
  spec: ProxySpec;
  context: ServeContext;
  logger: Logger;
  /** The name the agent is asked for, for the name a client gave. */
  qualify: (host: string) => string;
}

/** The proxy of `spec` on `listeners`; the agent may open anything (`any`). */
export function proxyEntry(
  spec: ProxySpec,
  listeners: TcpListener[],
  logger: Logger,
): SessionEntry {
  let namespace = "";
  let qualify = (host: string) => host;
  return {
    prepare: ({ kube, agentNamespace }) => {
      namespace = kube.namespace;
      qualify = qualifier(namespace, agentNamespace);
      return Promise.resolve();
    },
    // What a client asks for is known only when it asks: the agent's policy is `any` (still
    // refusing loopback and link-local addresses; see README, Security).
    destinations: () => "any",
    serve: async (context) => {
      const proxy: Proxy = { spec, context, logger, qualify };
      const serving = listeners.map((listener) => {
        const facts = {
          localAddress: listener.hostname,
          localPort: listener.port,
          namespace,
          user: spec.auth?.user,
        };
        logger.readyProxy(facts);
        const route = context.status.ready(proxyRoute(facts));
        return listener.serve(
          (conn) => serveClient(conn, proxy, route),
          (error) =>
            logger.error(
              `proxy: accepting on ${formatHostPort(listener.hostname, listener.port)}: ${
                describeError(error)
              }`,
            ),
        );
      });
      await new Promise<void>((resolve) => {
        if (context.signal.aborted) return resolve();
        context.signal.addEventListener("abort", () => resolve(), { once: true });
      });
      for (const listener of listeners) listener.close();
      await Promise.allSettled(serving);
    },
  };
}

/** One client connection: SOCKS5 when its first byte says so, else HTTP. */
async function serveClient(conn: Deno.TcpConn, proxy: Proxy, route: RouteStats): Promise<void> {
  const peer = conn.remoteAddr;
  const client = formatHostPort(unmapped(peer.hostname), peer.port);
  const tracked = proxy.context.status.connection(route, client);
  let failed: string | undefined;
  const reader = new HandshakeReader(conn);
  const write = (bytes: Uint8Array) => writeAll(conn, bytes);
  // A client that never completes its handshake does not keep a connection for ever.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, HANDSHAKE_TIMEOUT_MS);
  const handshakeDone = () => clearTimeout(timer);
  try {
    if (!(await reader.more())) return;
    const first = reader.buffered[0];
    if (first === SOCKS5) {
      const request = await socksHandshake(reader, write, proxy.spec.auth);
      if (request) await serveSocks(conn, reader, request, proxy, handshakeDone, tracked.counts);
    } else if (first === 0x04) {
      await write(SOCKS4_REJECTED);
      throw new ProxyRefusal("SOCKS4 is not supported: use SOCKS5 (curl --socks5-hostname)");
    } else if (first === TLS_HANDSHAKE) {
      throw new ProxyRefusal(
        "the client speaks TLS: the proxy speaks SOCKS5 and plain HTTP (a proxy URL of " +
          "http://, not https://)",
      );
    } else {
      const request = await httpHandshake(reader, write, proxy.spec.auth);
      if (request) await serveHttp(conn, reader, request, proxy, handshakeDone, tracked.counts);
    }
  } catch (error) {
    if (proxy.context.stopped) return;
    if (timedOut) {
      failed = `no complete request within ${HANDSHAKE_TIMEOUT_MS / 1000} s`;
      proxy.logger.error(`proxy: ${client}: ${failed}; closed`);
    } else if (error instanceof ProxyRefusal) {
      failed = error.message;
      proxy.logger.error(`proxy: ${client}: ${error.message}`);
      await lingerClose(conn);
    } else {
      proxy.logger.debug(`proxy: ${client}: ${describeError(error)}`);
    }
  } finally {
    clearTimeout(timer);
    tracked.end(failed);
  }
}

/** A SOCKS5 request: CONNECT spliced with a stream, or a UDP association. */
async function serveSocks(
  conn: Deno.TcpConn,
  reader: HandshakeReader,
  request: SocksRequest,
  proxy: Proxy,
  handshakeDone: () => void,
  counts: SpliceCounts,
): Promise<void> {
  const write = (bytes: Uint8Array) => writeAll(conn, bytes);
  const target = formatHostPort(request.destination.host, request.destination.port);
  if (request.command === "udp-associate") {
    handshakeDone();
    return await associate(conn, request, proxy, counts);
  }
  let stream: TunnelStream;
  try {
    stream = await proxy.context.open(requestTo(request.destination, proxy));
  } catch (error) {
    const reply = replyForFailure(error instanceof OpenError ? error.code : undefined);
    await write(encodeReply(reply)).catch(() => {});
    throw new ProxyRefusal(
      `SOCKS5 CONNECT ${target}: ${failure(error)} (replied ${replyName(reply)})`,
    );
  }
  handshakeDone();
  proxy.logger.debug(`proxy: SOCKS5 CONNECT ${target}`);
  try {
    await write(encodeReply(REPLY.succeeded));
  } catch {
    return stream.reset("the client went away");
  }
  await bridge(conn, reader.rest(), stream, proxy.context, counts);
}

/** An HTTP request: CONNECT spliced with a stream, or a request passed on to its origin. */
async function serveHttp(
  conn: Deno.TcpConn,
  reader: HandshakeReader,
  request: ProxyRequest,
  proxy: Proxy,
  handshakeDone: () => void,
  counts: SpliceCounts,
): Promise<void> {
  const write = (bytes: Uint8Array) => writeAll(conn, bytes);
  const { destination } = request;
  const what = `${request.kind === "connect" ? "CONNECT" : "request to"} ` +
    formatHostPort(destination.host, destination.port);
  const refuse = async (error: unknown): Promise<never> => {
    const { status, proxyStatus } = statusForFailure(
      error instanceof OpenError ? error.code : undefined,
    );
    const reason = `cannot reach ${formatHostPort(destination.host, destination.port)}: ` +
      failure(error);
    await write(errorResponse(status, reason, proxyStatus)).catch(() => {});
    throw new ProxyRefusal(`HTTP ${what}: ${failure(error)} (replied ${status})`);
  };
  if (request.kind === "connect") {
    let stream: TunnelStream;
    try {
      stream = await proxy.context.open(requestTo(destination, proxy));
    } catch (error) {
      return refuse(error);
    }
    handshakeDone();
    proxy.logger.debug(`proxy: HTTP ${what}`);
    try {
      await write(CONNECT_ESTABLISHED);
    } catch {
      return stream.reset("the client went away");
    }
    return await bridge(conn, reader.rest(), stream, proxy.context, counts);
  }
  // The request goes right behind the OPEN (within the stream's first window), one round trip
  // sooner; nothing has been answered yet, so a refused open still gets its error response.
  let stream: TunnelStream;
  try {
    stream = await proxy.context.open(requestTo(destination, proxy), { early: true });
  } catch (error) {
    return refuse(error);
  }
  const early = reader.rest();
  // Settles with what went wrong, if anything: it may fail while the open is awaited below.
  const sent = (async () => {
    await stream.write(request.head);
    counts.aToB += request.head.byteLength;
    if (early.length > 0) await stream.write(early);
    counts.aToB += early.byteLength;
  })().then(() => undefined, (error: unknown) => error ?? new Error("write failed"));
  try {
    await stream.opened;
  } catch (refusal) {
    await sent;
    return refuse(refusal);
  }
  const unsent = await sent;
  if (unsent) {
    stream.reset("the request could not be sent");
    return refuse(unsent);
  }
  handshakeDone();
  proxy.logger.debug(`proxy: HTTP ${what}`);
  await splice(new ConnChannel(conn, proxy.context.buffers), stream, counts);
}

/** The client's bytes already read go first, then both directions are spliced. */
async function bridge(
  conn: Deno.TcpConn,
  early: Uint8Array,
  stream: TunnelStream,
  context: ServeContext,
  counts: SpliceCounts,
): Promise<void> {
  if (early.length > 0) {
    try {
      await stream.write(early);
      counts.aToB += early.byteLength;
    } catch {
      return; // reset already: the listener closes the connection
    }
  }
  await splice(new ConnChannel(conn, context.buffers), stream, counts);
}

/**
 * UDP ASSOCIATE: relays datagrams until the control connection closes, counting their payloads
 * as the control connection's bytes.
 */
async function associate(
  conn: Deno.TcpConn,
  request: SocksRequest,
  proxy: Proxy,
  counts: SpliceCounts,
): Promise<void> {
  const local = unmapped(conn.localAddr.hostname);
  const client = unmapped(conn.remoteAddr.hostname);
  let association: UdpAssociation;
  try {
    // Bound where the client reached the proxy: an address it can send to, and the one
    // replies then come from (a wildcard socket might answer from another on a multi-homed
    // host).
    association = UdpAssociation.bind({
      hostname: local,
      client,
      clientPort: request.destination.port,
      open: (destination) => proxy.context.open(requestTo(destination, proxy, "udp")),
      onError: (line) => {
        if (!proxy.context.stopped) proxy.logger.error(`proxy: ${client}: ${line}`);
      },
      buffers: proxy.context.buffers,
      counts,
    });
  } catch (error) {
    await writeAll(conn, encodeReply(REPLY.generalFailure)).catch(() => {});
    throw new ProxyRefusal(
      `SOCKS5 UDP ASSOCIATE: cannot bind a UDP socket on ${local}: ${describeError(error)}`,
    );
  }
  try {
    await writeAll(conn, encodeReply(REPLY.succeeded, association.bound));
    const serving = association.serve();
    const where = formatHostPort(association.bound.host, association.bound.port);
    proxy.logger.debug(`proxy: SOCKS5 UDP ASSOCIATE for ${client} on ${where}`);
    // The association ends with its TCP connection (RFC 1928 §7); nothing more comes on it.
    const sink = new Uint8Array(512);
    while ((await conn.read(sink).catch(() => null)) !== null) { /* discard */ }
    association.close();
    await serving;
    proxy.logger.debug(
      `proxy: UDP association on ${where} ended; ${association.dropped} datagrams dropped`,
    );
  } finally {
    association.close();
  }
}

/** The open for what a client named: its short names made relative to `-n`. */
function requestTo(destination: Destination, proxy: Proxy, protocol: Protocol = "tcp") {
  return { protocol, host: proxy.qualify(destination.host), port: destination.port };
}

/** Why an open failed; an agent's refusal says what kind first. */
function failure(error: unknown): string {
  const text = describeError(error);
  return error instanceof OpenError ? `${error.code}: ${text}` : text;
}

const REPLY_NAMES = new Map<number, string>(
  Object.entries(REPLY).map(([name, code]) => [code, name.replace(/[A-Z]/g, " $&").toLowerCase()]),
);

/** `0x04 host unreachable`, for log lines. */
function replyName(code: number): string {
  return `0x${code.toString(16).padStart(2, "0")} ${REPLY_NAMES.get(code) ?? ""}`.trim();
}

/** `::ffff:127.0.0.1` (IPv4 on a dual-stack socket) as `127.0.0.1`. */
function unmapped(address: string): string {
  const match = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return match ? match[1] : address;
}

/**
 * After a refusal: the reply is sent, then the socket half-closes and what the client still
 * sends is read and dropped for a moment, since closing with its unread request queued would
 * send a reset that can destroy the reply before the client reads it.
 */
async function lingerClose(conn: Deno.TcpConn): Promise<void> {
  const timer = setTimeout(() => closeQuietly(conn), LINGER_MS);
  try {
    await conn.closeWrite();
    const sink = new Uint8Array(16 * 1024);
    for (let total = 0; total < 256 * 1024;) {
      const n = await conn.read(sink);
      if (n === null) break;
      total += n;
    }
  } catch {
    // closed by then: nothing left to wait for
  } finally {
    clearTimeout(timer);
  }
}
