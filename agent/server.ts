/**
 * The agent's listener: accepts tunnels on 127.0.0.1, checks their token, dials what they
 * open, and exits by itself when no tunnel has been connected for a while.
 */
import { VERSION } from "../lib/version.ts";
import { acceptTunnel } from "../lib/tunnel/handshake.ts";
import { connDuplex } from "../lib/tunnel/duplex.ts";
import type { Duplex, OpenRequest, Tunnel, TunnelStream } from "../lib/tunnel/types.ts";
import { denoConnector, type Dialer, dialTcp, systemResolver } from "./dial.ts";
import { dialUdp } from "./udp.ts";
import { describeError } from "../lib/errors.ts";
import { AcceptBackoff } from "../lib/listen/accept_backoff.ts";

/** Defaults for the `relay agent` flags. */
export const AGENT_DEFAULTS = {
  port: 4646,
  udpIdleMs: 60_000,
  idleExitMs: 300_000,
  connectTimeoutMs: 10_000,
} as const;

/**
 * The agent's keep-alive interval. The client pings every 2 s of silence; the agent's own,
 * slightly longer, interval is how it learns that a client vanished without closing (SIGKILL,
 * a laptop lid, an API server restart that the port-forward path does not pass on): such a
 * tunnel is dropped within about 9 s, which frees its port-forward stream and starts the
 * idle-exit clock.
 */
const AGENT_KEEPALIVE_MS = 3_000;

/** Everything a running agent needs; the token is required here (runAgent reads the env). */
export interface AgentConfig {
  /** The session token every tunnel must present. */
  token: string;
  /** TCP port on 127.0.0.1 (0 picks a free one, for tests). */
  port?: number;
  /** Idle timeout of a UDP session (ms). */
  udpIdleMs?: number;
  /** Exit after this long with no tunnel connected (ms); 0 never. */
  idleExitMs?: number;
  /** Give up on a TCP connect after this long (ms). */
  connectTimeoutMs?: number;
  /** Keep-alive ping interval on tunnels (ms); see TunnelOptions. */
  keepAliveMs?: number;
  /** Replace name resolution or connecting (tests). */
  dialer?: Partial<Dialer>;
  /** Where log lines go (default: stderr). */
  log?: (line: string) => void;
}

/** A started agent. */
export interface AgentHandle {
  /** The port it listens on. */
  readonly port: number;
  /** Settles with the exit code once the agent has stopped. */
  readonly finished: Promise<number>;
  /** Stop: close the listener and every tunnel; `finished` then settles with 0. */
  stop(reason: string): void;
}

/** Binds 127.0.0.1:port and serves tunnels until stopped or idle. */
export function startAgent(config: AgentConfig): AgentHandle {
  const log = config.log ?? ((line: string) => console.error(line));
  const idleExitMs = config.idleExitMs ?? AGENT_DEFAULTS.idleExitMs;
  const udpIdleMs = config.udpIdleMs ?? AGENT_DEFAULTS.udpIdleMs;
  const dialer: Dialer = {
    resolve: config.dialer?.resolve ?? systemResolver,
    connect: config.dialer?.connect ?? denoConnector,
    connectTimeoutMs: config.dialer?.connectTimeoutMs ?? config.connectTimeoutMs ??
      AGENT_DEFAULTS.connectTimeoutMs,
  };
  // Loopback only: the kubelet's port-forward reaches the pod's localhost, nothing else may.
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port: config.port ?? AGENT_DEFAULTS.port,
    transport: "tcp",
  });
  const port = (listener.addr as Deno.NetAddr).port;
  const tunnels = new Set<Tunnel>();
  const handshaking = new Set<Deno.Conn>();
  let stopped = false;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((resolve) => (finish = resolve));

  const onOpen = async (request: OpenRequest): Promise<Duplex> => {
    try {
      return request.protocol === "udp"
        ? await dialUdp(request.host, request.port, {
          resolve: dialer.resolve,
          idleMs: udpIdleMs,
          onDrops: (dropped) => {
            if (dropped > 0) {
              log(
                `relay agent: ${
                  describe(request)
                } session ended; ${dropped} datagrams dropped (socket buffer full)`,
              );
            }
          },
        })
        : await dialTcp(request.host, request.port, dialer);
    } catch (e) {
      const code = (e as { code?: string }).code ?? "error";
      log(`relay agent: open ${describe(request)} failed (${code}): ${(e as Error).message}`);
      throw e;
    }
  };

  // Drops are a UDP session's normal answer to overload; they are reported, never hidden.
  const onStreamEnd = (stream: TunnelStream) => {
    if (stream.request.protocol === "udp" && stream.dropped > 0) {
      log(
        `relay agent: ${
          describe(stream.request)
        } session ended; ${stream.dropped} datagrams dropped (tunnel full)`,
      );
    }
  };

  const armIdleExit = () => {
    clearTimeout(idleTimer);
    if (idleExitMs <= 0 || stopped || tunnels.size > 0) return;
    idleTimer = setTimeout(() => {
      const seconds = Math.round(idleExitMs / 1000);
      stop(`no tunnel connected for ${seconds} s, exiting`);
    }, idleExitMs);
  };

  const serve = async (conn: Deno.Conn) => {
    const from = conn.remoteAddr as Deno.NetAddr;
    try {
      (conn as Deno.TcpConn).setNoDelay(true);
    } catch {
      // not fatal: only latency
    }
    const transport = connDuplex(conn);
    handshaking.add(conn);
    let tunnel: Tunnel;
    try {
      tunnel = await acceptTunnel(transport, {
        token: config.token,
        onOpen,
        onStreamEnd,
        keepAliveMs: config.keepAliveMs ?? AGENT_KEEPALIVE_MS,
      });
    } catch (e) {
      const why = describeError(e);
      log(`relay agent: refused a tunnel from ${from.hostname}:${from.port}: ${why}`);
      return;
    } finally {
      handshaking.delete(conn);
    }
    if (stopped) return tunnel.close("agent stopping");
    tunnels.add(tunnel);
    clearTimeout(idleTimer);
    await tunnel.closed;
    tunnels.delete(tunnel);
    armIdleExit();
  };

  // A failed accept (out of file descriptors, with every tunnel's dialed connections open)
  // must not end the agent and the tunnels it carries: pause and accept again.
  const acceptLoop = async () => {
    const backoff = new AcceptBackoff();
    while (!stopped) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
        backoff.succeeded();
      } catch (e) {
        if (stopped) return;
        if (e instanceof Deno.errors.BadResource) return stop("listener closed");
        const { report, pause } = backoff.failed();
        if (report) log(`relay agent: cannot accept a tunnel: ${describeError(e)}`);
        await pause();
        continue;
      }
      serve(conn);
    }
  };

  const stop = (reason: string) => {
    if (stopped) return;
    stopped = true;
    clearTimeout(idleTimer);
    log(`relay agent ${VERSION}: ${reason}`);
    try {
      listener.close();
    } catch {
      // already closed
    }
    for (const conn of handshaking) {
      try {
        conn.close();
      } catch {
        // the handshake ended meanwhile
      }
    }
    const closing = [...tunnels].map((t) => (t.close(reason), t.closed));
    Promise.all(closing).then(() => finish(0));
  };

  acceptLoop();
  armIdleExit();
  return { port, finished, stop };
}

function describe(request: OpenRequest): string {
  const host = request.host.includes(":") ? `[${request.host}]` : request.host;
  return `${request.protocol} ${host}:${request.port}`;
}
