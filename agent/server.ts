/**
 * The agent's listener: accepts tunnels on 127.0.0.1, checks their token, dials what they
 * open, and exits by itself when no tunnel has been connected for a while.
 */
import { AGENT_DEFAULTS, AGENT_KEEPALIVE_MS, type AgentSettings } from "../lib/contract.ts";
import { describeError } from "../lib/errors.ts";
import { AcceptBackoff } from "../lib/net/accept_backoff.ts";
import { formatHostPort } from "../lib/net/address.ts";
import { BufferPool } from "../lib/net/buffer_pool.ts";
import { connDuplex } from "../lib/net/socket.ts";
import type { Duplex } from "../lib/net/types.ts";
import { acceptTunnel } from "../lib/tunnel/handshake.ts";
import type { OpenRequest, Tunnel, TunnelStream } from "../lib/tunnel/types.ts";
import { VERSION } from "../lib/version.ts";
import { denoConnector, type Dialer, dialTcp, systemResolver } from "./dial.ts";
import { listenForClient } from "./listen.ts";
import { MirrorBudget } from "./mirror.ts";
import { PortClaims } from "./port_claims.ts";
import { DestinationPolicy } from "./policy.ts";
import { type IptablesRunner, podFamilies, PortRedirects, sweepStale } from "./netfilter.ts";
import { hasNetAdmin } from "./port_owners.ts";
import { dialUdp } from "./udp.ts";

export { AGENT_DEFAULTS };

/**
 * Everything a running agent needs: its settings (defaults where absent) and what it checks
 * tunnels' tokens against.
 */
export interface AgentConfig extends Partial<AgentSettings> {
  /** The SHA-256 of the session token every tunnel must present (contract.ts tokenDigest). */
  tokenDigest: string;
  /** Keep-alive ping interval on tunnels (ms); see TunnelOptions. */
  keepAliveMs?: number;
  /** Replace name resolution or connecting (tests). */
  dialer?: Partial<Dialer>;
  /** Where log lines go (default: stderr). */
  log?: (line: string) => void;
  /** Replace iptables (tests). */
  iptables?: IptablesRunner;
  /** The port, already bound on 127.0.0.1 (early_listener.ts); else `port` is bound. */
  listener?: Deno.TcpListener;
  /** The pool its sockets and tunnels read into (default: a new one). */
  buffers?: BufferPool;
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
  const listener = config.listener ?? Deno.listen({
    hostname: "127.0.0.1",
    port: config.port ?? AGENT_DEFAULTS.port,
    transport: "tcp",
  });
  const port = (listener.addr as Deno.NetAddr).port;
  // One pool for the agent's sockets and tunnels: what one reads, another releases.
  const buffers = config.buffers ?? new BufferPool();
  // Steal and mirror change the pod's netfilter rules; they are made on first use and
  // removed before the agent exits, and a dead agent's are swept away at start.
  let redirects: PortRedirects | undefined;
  let families: Awaited<ReturnType<typeof podFamilies>> = ["ipv4"];
  const mirrorBudget = new MirrorBudget();
  const claims = new PortClaims();
  const ready = (async () => {
    if (!config.iptables && !(await hasNetAdmin())) return;
    families = await podFamilies(config.iptables);
    try {
      const swept = await sweepStale(families, port, config.iptables);
      for (const gone of swept) {
        log(`relay agent: removed the redirects of a relay agent that is gone (port ${gone})`);
      }
    } catch (e) {
      log(`relay agent: cannot look for redirects left by a dead agent: ${describeError(e)}`);
    }
  })();
  const getRedirects = () =>
    redirects ??= new PortRedirects({
      agentPort: port,
      agentGid: Deno.gid() ?? 0,
      families,
      run: config.iptables,
    });
  const tunnels = new Set<Tunnel>();
  const handshaking = new Set<Deno.Conn>();
  let stopped = false;
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((resolve) => (finish = resolve));

  const policy = new DestinationPolicy(config.allow);
  const onOpen = async (request: OpenRequest, signal?: AbortSignal): Promise<Duplex> => {
    try {
      const rule = policy.admit(request);
      const screen = (addresses: string[]) => policy.screen(request, rule, addresses);
      return request.protocol === "udp"
        ? await dialUdp(request.host, request.port, {
          resolve: dialer.resolve,
          screen,
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
        : await dialTcp(request.host, request.port, dialer, buffers, signal, screen);
    } catch (e) {
      const code = (e as { code?: string }).code ?? "error";
      log(`relay agent: open ${describe(request)} failed (${code}): ${describeError(e)}`);
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
    const transport = connDuplex(conn, buffers);
    handshaking.add(conn);
    let tunnel: Tunnel;
    try {
      tunnel = await acceptTunnel(transport, {
        tokenDigest: config.tokenDigest,
        onOpen,
        onStreamEnd,
        onListen: async (request, how, tunnel) => {
          await ready;
          return listenForClient(request, how, tunnel, {
            buffers,
            mirrorBudget,
            claims,
            log,
            redirects: getRedirects,
          });
        },
        onSessionEnd: (reason) => stop(`relay ended the session (${reason}), exiting`),
        buffers,
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
    // The app's ports answer normally again before the agent is gone.
    const unredirect = ready.then(() => redirects?.removeAll()).catch((e) =>
      log(`relay agent: cannot remove its redirects: ${describeError(e)}`)
    );
    Promise.all([...closing, unredirect]).then(() => finish(0));
  };

  acceptLoop();
  armIdleExit();
  return { port, finished, stop };
}

function describe(request: OpenRequest): string {
  return `${request.protocol} ${formatHostPort(request.host, request.port)}`;
}
