/**
 * Reverse forwards for the agent (LISTEN): a port of the pod it takes for the client, each
 * connection arriving there opened as a stream back to the client on the same tunnel.
 * A free port is listened on; a port the app serves is stolen or mirrored through netfilter
 * redirects (netfilter.ts) to a listener of the agent's own.
 */
import type { IncomingMode } from "../lib/contract.ts";
import { describeError } from "../lib/errors.ts";
import { AcceptBackoff } from "../lib/net/accept_backoff.ts";
import type { BufferPool } from "../lib/net/buffer_pool.ts";
import { closeQuietly, ConnChannel } from "../lib/net/socket.ts";
import { splice } from "../lib/net/splice.ts";
import {
  type KeptListener,
  type ListenOptions,
  OpenError,
  type OpenRequest,
  type Tunnel,
} from "../lib/tunnel/types.ts";
import { type CompiledFilter, compileFilter, filterConnection } from "./http_filter.ts";
import { MirrorBudget, mirrorConnection } from "./mirror.ts";
import { PortClaims } from "./port_claims.ts";
import type { PortRedirects } from "./netfilter.ts";
import { appAddress, listenersOn, podAddresses } from "./port_owners.ts";

/** What a reverse listener needs from the agent. */
export interface ReverseListenOptions {
  buffers?: BufferPool;
  /** What the agent's mirrored copies may queue together (one per agent). */
  mirrorBudget?: MirrorBudget;
  /** The agent's claims on pod ports, which other relay sessions in the pod see (one per agent). */
  claims?: PortClaims;
  log: (line: string) => void;
  /** The agent's redirects, made when first needed (steal, mirror). */
  redirects: () => PortRedirects;
  /** Who listens on a port of the pod (tests replace it). */
  listening?: (port: number) => Promise<string[]>;
}

/**
 * Takes `request.port` for the client in `mode`: `listen` binds it on every address of the
 * pod (`in-use` if something listens there); `steal` redirects it; `mirror` redirects it and
 * passes each connection on to the app (`refused` if nothing listens there); `auto` mirrors a
 * port the app listens on and listens on a free one.
 */
export async function listenForClient(
  request: OpenRequest,
  how: ListenOptions,
  tunnel: Tunnel,
  options: ReverseListenOptions,
): Promise<KeptListener> {
  if (request.protocol !== "tcp") {
    throw new OpenError("forbidden", "only TCP ports can be reverse forwarded");
  }
  // One session a port, whichever way each takes it (listen, steal, mirror).
  const release = (options.claims ?? new PortClaims()).claim(request.port);
  try {
    const kept = await takePort(request, how, tunnel, options);
    return {
      mode: kept.mode,
      close() {
        kept.close();
        release();
      },
    };
  } catch (error) {
    release();
    throw error;
  }
}

/** What {@link listenForClient} does once the port is this session's. */
async function takePort(
  request: OpenRequest,
  { mode, filter }: ListenOptions,
  tunnel: Tunnel,
  options: ReverseListenOptions,
): Promise<KeptListener> {
  let compiled: CompiledFilter | undefined;
  if (filter) {
    if (mode !== "steal") throw new OpenError("forbidden", "an HTTP filter goes with steal only");
    try {
      compiled = compileFilter(filter);
    } catch (error) {
      throw new OpenError("error", `bad HTTP filter: ${describeError(error)}`);
    }
  }
  const port = request.port;
  const owners = mode === "listen" ? [] : await (options.listening ?? listenersOn)(port);
  const effective: IncomingMode = mode === "auto"
    ? (owners.length > 0 ? "mirror" : "listen")
    : mode;
  if (effective === "listen") {
    let listener: Deno.TcpListener;
    try {
      listener = bindAll(port);
    } catch (error) {
      throw listenFailure(error, port);
    }
    return acceptInto(
      listener,
      "listen",
      port,
      options,
      (conn) => carry(conn, port, tunnel, options),
    );
  }
  const app = appAddress(owners, podAddresses());
  if (effective === "mirror" && app === undefined) {
    throw new OpenError(
      "refused",
      `nothing listens on port ${port} in the pod, so there is nothing to mirror`,
    );
  }
  // The redirect's target: a port of the agent's own, on every address (REDIRECT sends
  // outside callers to the pod's address and in-pod ones to loopback).
  const listener = bindAll(0);
  const redirects = options.redirects();
  try {
    await redirects.add(port, (listener.addr as Deno.NetAddr).port);
  } catch (error) {
    closeQuietly(listener);
    throw error;
  }
  options.log(`relay agent: ${effective === "steal" ? "stealing" : "mirroring"} port ${port}`);
  const budget = options.mirrorBudget ?? new MirrorBudget();
  const handle = (conn: Deno.TcpConn): Promise<void> => {
    if (compiled) {
      const to = app === undefined ? undefined : { hostname: app, port };
      const request = callerRequest(conn, port);
      return filterConnection(conn, to, request, tunnel, compiled, options.log, options.buffers);
    }
    if (effective === "steal") return carry(conn, port, tunnel, options);
    const request = callerRequest(conn, port);
    return mirrorConnection(
      conn,
      { hostname: app!, port },
      request,
      tunnel,
      budget,
      options.buffers,
    );
  };
  const kept = acceptInto(listener, effective, port, options, handle);
  return {
    mode: effective,
    close() {
      // The rule goes first, so no new connection reaches a closed listener.
      redirects.remove(port).catch((error) =>
        options.log(
          `relay agent: cannot remove the redirect of port ${port}: ${describeError(error)}`,
        )
      ).finally(() => kept.close());
    },
  };
}

/** Accepts on `listener` until closed, handing each connection to `handle`. */
function acceptInto(
  listener: Deno.TcpListener,
  mode: IncomingMode,
  port: number,
  options: ReverseListenOptions,
  handle: (conn: Deno.TcpConn) => Promise<void>,
): KeptListener {
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
          options.log(`relay agent: cannot accept on port ${port}: ${describeError(error)}`);
        }
        await pause();
        continue;
      }
      conn.setNoDelay(true);
      open.add(conn);
      void handle(conn).finally(() => open.delete(conn));
    }
  })();
  return {
    mode,
    close() {
      if (closed) return;
      closed = true;
      closeQuietly(listener);
      for (const conn of open) closeQuietly(conn);
    },
  };
}

/** The open the client gets for a caller of `port`: the caller's address and the port. */
function callerRequest(conn: Deno.TcpConn, port: number): OpenRequest {
  const caller = (conn.remoteAddr as Deno.NetAddr).hostname.replace(/^::ffff:(?=\d+\.)/, "");
  return { protocol: "tcp", host: caller, port };
}

/** One caller's connection: a stream to the client, spliced with it; closed if refused. */
async function carry(
  conn: Deno.TcpConn,
  port: number,
  tunnel: Tunnel,
  options: ReverseListenOptions,
): Promise<void> {
  let stream;
  try {
    stream = await tunnel.open(callerRequest(conn, port));
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
