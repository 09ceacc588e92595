/**
 * Reverse forwards for the agent: a port of the pod it listens on for the client (LISTEN),
 * each accepted connection opened as a stream back to the client on the same tunnel.
 */
import { AcceptBackoff } from "../lib/net/accept_backoff.ts";
import type { BufferPool } from "../lib/net/buffer_pool.ts";
import { closeQuietly, ConnChannel } from "../lib/net/socket.ts";
import { splice } from "../lib/net/splice.ts";
import { describeError } from "../lib/errors.ts";
import {
  type KeptListener,
  OpenError,
  type OpenRequest,
  type Tunnel,
} from "../lib/tunnel/types.ts";

/** What a reverse listener needs from the agent. */
export interface ReverseListenOptions {
  buffers?: BufferPool;
  log: (line: string) => void;
}

/**
 * Listens on `request.port` on every address of the pod (IPv6 and IPv4 together where the
 * pod has IPv6). A port something in the pod already listens on is `in-use`.
 */
export function listenForClient(
  request: OpenRequest,
  tunnel: Tunnel,
  options: ReverseListenOptions,
): Promise<KeptListener> {
  if (request.protocol !== "tcp") {
    return Promise.reject(new OpenError("forbidden", "only TCP ports can be reverse forwarded"));
  }
  let listener: Deno.TcpListener;
  try {
    listener = bindAll(request.port);
  } catch (error) {
    return Promise.reject(listenFailure(error, request.port));
  }
  const open = new Set<Deno.TcpConn>();
  let closed = false;
  void (async () => {
    const backoff = new AcceptBackoff();
    while (!closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
        backoff.succeeded();
      } catch (error) {
        if (closed || error instanceof Deno.errors.BadResource) return;
        const { report, pause } = backoff.failed();
        if (report) {
          options.log(
            `relay agent: cannot accept on port ${request.port}: ${describeError(error)}`,
          );
        }
        await pause();
        continue;
      }
      open.add(conn);
      void carry(conn, request.port, tunnel, options).finally(() => open.delete(conn));
    }
  })();
  return Promise.resolve({
    close() {
      if (closed) return;
      closed = true;
      closeQuietly(listener);
      for (const conn of open) closeQuietly(conn);
    },
  });
}

/** One caller's connection: a stream to the client, spliced with it; closed if refused. */
async function carry(
  conn: Deno.TcpConn,
  port: number,
  tunnel: Tunnel,
  options: ReverseListenOptions,
): Promise<void> {
  conn.setNoDelay(true);
  const caller = (conn.remoteAddr as Deno.NetAddr).hostname.replace(/^::ffff:(?=\d+\.)/, "");
  let stream;
  try {
    stream = await tunnel.open({ protocol: "tcp", host: caller, port });
  } catch {
    // The client said why (nothing listening locally); the caller sees its connection end.
    closeQuietly(conn);
    return;
  }
  await splice(new ConnChannel(conn, options.buffers), stream);
}

/** `[::]:port`, which takes IPv4 too; `0.0.0.0:port` where the pod has no IPv6. */
function bindAll(port: number): Deno.TcpListener {
  try {
    return Deno.listen({ hostname: "::", port, transport: "tcp" });
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse || error instanceof Deno.errors.PermissionDenied) {
      throw error;
    }
    return Deno.listen({ hostname: "0.0.0.0", port, transport: "tcp" });
  }
}

function listenFailure(error: unknown, port: number): OpenError {
  if (error instanceof Deno.errors.AddrInUse) {
    return new OpenError("in-use", `port ${port} is already in use in the pod`);
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new OpenError(
      "forbidden",
      `cannot listen on port ${port} in the pod: ${describeError(error)}`,
    );
  }
  return new OpenError(
    "error",
    `cannot listen on port ${port} in the pod: ${describeError(error)}`,
  );
}
