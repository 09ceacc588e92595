/**
 * A local hop whose only job is TCP_NODELAY on relay's tunnels to the API server: Deno's HTTP
 * client leaves Nagle's algorithm on, and small writes then wait for delayed ACKs
 * (docs/MEASUREMENTS.md). The client sends to it as a proxy on a unix socket in a private
 * directory, and it carries each request unchanged to the API server over TLS: Deno's own, or
 * node:tls for a client certificate, which Deno.startTls cannot present.
 */
import type { EventEmitter } from "node:events";
import { connect as connectNodeTls, type TLSSocket } from "node:tls";
import { describeError } from "../errors.ts";
import { closeQuietly, writeAll } from "../net/socket.ts";

/** Where the bridge connects, and the TLS material it connects with. */
export interface BridgeTarget {
  /** The API server's URL (https: or http:). */
  server: URL;
  /** PEM: the CA to verify the API server with (the system's roots if absent). */
  ca?: string;
  /** PEM: the client certificate and its key, when the kubeconfig authenticates with one. */
  cert?: string;
  key?: string;
  /** Longest the API server may take to accept and finish TLS; default 15 s. */
  connectTimeoutMs?: number;
}

/** A listening bridge; `path` goes into the HTTP client's `proxy: { transport: "unix" }`. */
export interface NoDelayBridge {
  /** The unix socket the HTTP client connects to. */
  readonly path: string;
  /** Stops taking connections and removes the socket; open ones end with their peers. */
  close(): void;
}

/**
 * Starts a bridge, or returns undefined where there are no unix sockets (connections then go
 * straight from Deno's client, with Nagle's algorithm on, and work as before).
 */
export function startNoDelayBridge(target: BridgeTarget): NoDelayBridge | undefined {
  if (Deno.build.os === "windows") return undefined;
  let dir: string;
  let listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  try {
    dir = Deno.makeTempDirSync({ prefix: "relay-" });
    listener = Deno.listen({ transport: "unix", path: `${dir}/api.sock` });
  } catch {
    return undefined;
  }
  void (async () => {
    try {
      for await (const local of listener) void forward(local, target);
    } catch {
      // the listener was closed
    }
  })();
  let closed = false;
  return {
    path: `${dir}/api.sock`,
    close() {
      if (closed) return;
      closed = true;
      closeQuietly(listener);
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // already gone
      }
    },
  };
}

/**
 * Bytes read from either side at once: a whole tunnel batch (lib/tunnel/writer.ts) in one read
 * and one TLS write, which costs less CPU than several (docs/MEASUREMENTS.md).
 */
const READ_SIZE = 256 * 1024;

/**
 * Longest the API server may take to accept a connection and finish TLS by default. One that
 * accepts and never answers (still starting, or a proxy before it) would otherwise hold the
 * connection, and the request waiting on it, for good.
 */
const CONNECT_TIMEOUT_MS = 15_000;

async function forward(local: Deno.UnixConn, target: BridgeTarget): Promise<void> {
  const { server } = target;
  const hostname = server.hostname.replace(/^\[(.*)\]$/, "$1");
  const https = server.protocol === "https:";
  const port = Number(server.port) || (https ? 443 : 80);
  let opened: Deno.Conn | undefined;
  const timeoutMs = target.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
  const connecting = AbortSignal.timeout(timeoutMs);
  // Closing a Deno TLS connection mid-handshake ends the wait here, but Deno (2.9) keeps its
  // socket until the server answers or closes it; node:tls's socket closes at once.
  const giveUp = () => opened && closeQuietly(opened);
  connecting.addEventListener("abort", giveUp, { once: true });
  try {
    if (https && target.cert && target.key) {
      spliceNode(local, await nodeTls(hostname, port, target, connecting));
      return;
    }
    const tcp = opened = await Deno.connect({ hostname, port, signal: connecting });
    tcp.setNoDelay(true);
    let remote: Deno.Conn = tcp;
    if (https) {
      const tls = opened = await Deno.startTls(tcp, {
        hostname,
        caCerts: target.ca ? [target.ca] : undefined,
      });
      // Now, not at the first write: a certificate that fails verification is told below.
      await tls.handshake();
      remote = tls;
    }
    connecting.removeEventListener("abort", giveUp);
    spliceNative(local, remote);
  } catch (error) {
    connecting.removeEventListener("abort", giveUp);
    if (opened) closeQuietly(opened);
    // Told as an HTTP answer, so the client's error names the reason, not a closed socket.
    const reason = connecting.aborted
      ? `no answer within ${timeoutMs / 1000} s`
      : describeError(error);
    const body = `relay cannot reach the API server at ${server.origin}: ${reason}`;
    await local.write(new TextEncoder().encode(
      `HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\n` +
        `content-length: ${new TextEncoder().encode(body).length}\r\n` +
        `connection: close\r\n\r\n${body}`,
    )).catch(() => {});
    closeQuietly(local);
  }
}

function nodeTls(
  host: string,
  port: number,
  target: BridgeTarget,
  signal: AbortSignal,
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connectNodeTls({
      host,
      port,
      // SNI carries names only; an address is checked against the certificate's IP SANs.
      servername: /^[\d.]+$|:/.test(host) ? undefined : host,
      ca: target.ca,
      cert: target.cert,
      key: target.key,
    });
    socket.setNoDelay(true);
    const giveUp = () => socket.destroy(new Error("timed out"));
    signal.addEventListener("abort", giveUp, { once: true });
    socket.once("secureConnect", () => {
      signal.removeEventListener("abort", giveUp);
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", (error) => {
      signal.removeEventListener("abort", giveUp);
      reject(error);
    });
  });
}

/** Copies both ways between two Deno connections; when either side ends, both close. */
function spliceNative(local: Deno.Conn, remote: Deno.Conn): void {
  const end = () => {
    closeQuietly(local);
    closeQuietly(remote);
  };
  copy(local, remote).finally(end);
  copy(remote, local).finally(end);
}

async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(READ_SIZE);
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) return;
      await writeAll(to, buffer.subarray(0, n));
    }
  } catch {
    // either side went away; the caller closes both
  }
}

/** The same with a node:tls socket on the far side, with its backpressure. */
function spliceNode(local: Deno.Conn, remote: TLSSocket): void {
  const end = () => {
    remote.destroy();
    closeQuietly(local);
  };
  remote.on("error", end);
  remote.on("close", end);
  remote.on("data", (chunk: Uint8Array) => {
    remote.pause();
    holdNetworkReads(remote, true);
    writeAll(local, chunk).then(() => {
      holdNetworkReads(remote, false);
      remote.resume();
    }, end);
  });
  void (async () => {
    // node:tls keeps what it is given until its write callback, which returns the buffer here
    // for reuse: a fresh copy per read churns V8 into back-to-back full GCs in bulk transfers.
    const free: Uint8Array[] = [];
    try {
      for (;;) {
        const buffer = free.pop() ?? new Uint8Array(READ_SIZE);
        const n = await local.read(buffer);
        if (n === null) break;
        const sent = remote.write(buffer.subarray(0, n), () => free.push(buffer));
        if (!sent) await drainOrClose(remote);
      }
    } catch {
      // the HTTP client went away
    }
    end();
  })();
}

/**
 * Stops (or restarts) a node:tls socket's reads from the network: Deno's node:tls (2.9) keeps
 * reading from its TCP handle while the socket is paused, so what the API server sent piled up
 * in memory instead of in TCP's window (docs/MEASUREMENTS.md). Where that handle is not there
 * (another Deno), pause() alone is what is left.
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

/**
 * Resolves at the socket's next "drain" or "close", and removes both listeners either way: a
 * bulk transfer waits here thousands of times, and listeners left behind would pile up on the
 * socket (and be walked on every event).
 */
export function drainOrClose(socket: EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off("drain", done);
      socket.off("close", done);
      resolve();
    };
    socket.on("drain", done);
    socket.on("close", done);
  });
}
