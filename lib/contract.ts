/**
 * The client–agent contract: what the two ends of a tunnel must agree on, in one place.
 * The client writes the agent's pod or container from it; the agent reads its settings and
 * limits from it; the tunnel protocol's version is here too.
 */

import type { Protocol } from "./net/types.ts";

/**
 * The tunnel protocol's version, sent in both ends' handshake; ends of different versions
 * refuse each other with a message naming both.
 */
export const PROTOCOL_VERSION = 5;

/**
 * How the agent takes a pod port for a reverse forward (-R): `listen` binds a free port;
 * `steal` redirects the app's incoming connections to the client (the app no longer sees
 * them); `mirror` lets the app answer and sends a copy of what each caller sends.
 */
export type IncomingMode = "listen" | "steal" | "mirror";

/** What the client asks for: a mode, or `auto` (listen on a free port, mirror a served one). */
export type IncomingRequest = IncomingMode | "auto";

/**
 * How far a mirrored connection's copy may fall behind its caller before it is given up: the
 * caller never waits for the client, so a caller faster than the tunnel or the local server
 * fills it. Per connection, and across all of an agent's, which may share the app's pod.
 */
export const MIRROR_BACKLOG = 4 * 1024 * 1024;
export const MIRROR_BACKLOG_TOTAL = 16 * 1024 * 1024;

/**
 * The reason the agent resets a mirrored connection's stream with when its copy fell past
 * the backlog (the caller and the app go on); the client tells the user of it by this text.
 */
export const MIRROR_DROPPED =
  "the copy fell too far behind the caller; mirroring of this connection stopped";

/**
 * mirrord's `http_filter` for a stolen port: an HTTP/1.1 request whose path or one of whose
 * header lines (`Name: value`) matches comes to the client; every other request on the
 * connection, and every connection that is not HTTP/1.x, goes on to the app. Regular
 * expressions in JavaScript's syntax; an empty or absent one matches nothing.
 */
export interface HttpFilter {
  header?: string;
  path?: string;
}

/**
 * The group the agent runs as when it may redirect a port (steal, mirror): its netfilter
 * rules leave this group's own connections alone, so its pass-through to the app does not
 * loop back to itself. Distinct from the usual nonroot group (65532) apps run as.
 */
export const AGENT_STEAL_GID = 64_646;

/** The port the agent listens on, on its pod's 127.0.0.1, unless told another. */
export const AGENT_PORT = 4646;

/**
 * The environment variable that hands the agent what it checks tunnels against: the SHA-256
 * of the session token (tokenDigest), never the token itself.
 */
export const AGENT_TOKEN_DIGEST_ENV = "RELAY_AGENT_TOKEN_SHA256";

/**
 * What the agent's spec holds instead of the session token: its SHA-256 in lowercase hex. The
 * spec goes in with the Job, so the pod can start without waiting for anything else, and a
 * reader of the spec learns nothing that opens a tunnel (the token is 256 random bits).
 */
export async function tokenDigest(token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  return new Uint8Array(digest).toHex();
}

/** Whether `value` has the form of a tokenDigest. */
export function isTokenDigest(value: string): boolean {
  return /^[0-9a-f]{64}$/.test(value);
}

/**
 * The client's keep-alive interval. A ping goes out after one to two intervals of silence,
 * so 2 s keeps an idle tunnel alive through anything that cuts connections idle for 5 s or
 * more, and a tunnel whose agent stopped answering is replaced within about 6 s.
 */
export const CLIENT_KEEPALIVE_MS = 2_000;

/**
 * The agent's keep-alive interval: slightly longer than the client's, it is how the agent
 * learns that a client vanished without closing (SIGKILL, a laptop lid), within about 9 s.
 */
export const AGENT_KEEPALIVE_MS = 3_000;

/** How the agent runs: its flags, as both the client's manifest and `relay agent` spell them. */
export interface AgentSettings {
  /** TCP port on 127.0.0.1 to accept tunnels on (`--port`; 0 picks a free one). */
  port: number;
  /** A UDP session with no datagram either way for this long ends (`--udp-idle-timeout`). */
  udpIdleMs: number;
  /** Exit when no tunnel has been connected this long (`--idle-exit`; 0 never). */
  idleExitMs: number;
  /** Give up on one TCP connect after this long (`--connect-timeout`). */
  connectTimeoutMs: number;
  /**
   * What the agent may dial (`--allow`, repeated): the session's destinations, or `any`.
   * Absent: anything (a `relay agent` run by hand); relay always sets it.
   */
  allow?: DestinationRule[] | "any";
}

/** The agent's settings when its flags say nothing. */
export const AGENT_DEFAULTS: Readonly<AgentSettings> = {
  port: AGENT_PORT,
  udpIdleMs: 60_000,
  idleExitMs: 300_000,
  connectTimeoutMs: 10_000,
};

/**
 * One destination a session may open: a protocol, a host (a name or IP literal as the client
 * sends it, or `*` for any address: a workload's pods come and go) and a port (0 for any).
 * Loopback and link-local addresses (the agent itself, cloud metadata) are allowed only by a
 * rule that names them: a literal, or `localhost`.
 */
export interface DestinationRule {
  protocol: Protocol;
  host: string;
  port: number;
}

/** A rule as the agent's `--allow` spells it: `tcp/10.0.0.5/5432`, `tcp/redis.example/6379`. */
export function formatDestinationRule(rule: DestinationRule): string {
  return `${rule.protocol}/${rule.host}/${rule.port}`;
}

/** The rule `--allow TEXT` stands for, or undefined when TEXT is not one. */
export function parseDestinationRule(text: string): DestinationRule | undefined {
  const match = /^(tcp|udp)\/([^/\s]+)\/(\d{1,5})$/.exec(text);
  if (!match || Number(match[3]) > 65_535) return undefined;
  return { protocol: match[1] as Protocol, host: match[2].toLowerCase(), port: Number(match[3]) };
}

/** Room for the largest UDP payload: a datagram crosses the tunnel whole up to this size. */
export const MAX_DATAGRAM = 65_535;

/**
 * Bytes of datagrams one UDP stream may have in flight (sent, not yet taken by the far end's
 * reader) while it is the only UDP stream of its tunnel. Both ends use it, so each knows the
 * other's grant.
 */
export const UDP_WINDOW = 64 * 1024;

/**
 * In flight per UDP stream while its tunnel carries other UDP streams too: small, so that a
 * flooded session adds little delay to the others' datagrams (docs/MEASUREMENTS.md, "UDP
 * windows").
 */
export const UDP_SHARED_WINDOW = 4 * 1024;
