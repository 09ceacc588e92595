/**
 * A session's running state: its routes with their counters, tunnels and agent, and the events
 * that change them. Entries count where the bytes already pass (`splice`'s counts); the live
 * view, `-o json` and the plain log all read this one place.
 */
import type { SpliceCounts } from "../net/splice.ts";
import type { EventBody, RelayEvent, RouteCounters, RouteInfo } from "./events.ts";

/** One route's counters, kept as the connections on it open and close. */
export class RouteStats {
  open = 0;
  total = 0;
  failed = 0;
  dropped = 0;
  /** Of connections that ended; `live` adds the open ones'. */
  #sent = 0;
  #received = 0;
  /** Open connections' counts, and whether the local side is their `a` (else `b`). */
  readonly #live = new Map<SpliceCounts, boolean>();
  lastError?: { message: string; at: number };

  constructor(readonly info: RouteInfo) {}

  /** Bytes so far, open connections included. */
  get bytes(): { sent: number; received: number } {
    let sent = this.#sent;
    let received = this.#received;
    for (const [counts, localFirst] of this.#live) {
      sent += localFirst ? counts.aToB : counts.bToA;
      received += localFirst ? counts.bToA : counts.aToB;
    }
    return { sent, received };
  }

  /** @internal */
  track(counts: SpliceCounts, localFirst: boolean): void {
    this.#live.set(counts, localFirst);
  }

  /** @internal */
  untrack(counts: SpliceCounts): void {
    const localFirst = this.#live.get(counts);
    if (localFirst === undefined) return;
    this.#live.delete(counts);
    this.#sent += localFirst ? counts.aToB : counts.bToA;
    this.#received += localFirst ? counts.bToA : counts.aToB;
  }

  counters(): RouteCounters {
    const { sent, received } = this.bytes;
    return {
      id: this.info.id,
      open: this.open,
      total: this.total,
      failed: this.failed,
      bytes_sent: sent,
      bytes_received: received,
      dropped: this.dropped,
      ...(this.lastError
        ? {
          last_error: this.lastError.message,
          last_error_time: new Date(this.lastError.at).toISOString(),
        }
        : {}),
    };
  }
}

/** One connection or UDP session on a route, from open to close. */
export interface Tracked {
  /** Pass to `splice`; which side is local was said when tracking began. */
  readonly counts: SpliceCounts;
  /** Ends it; an error marks it failed and becomes the route's last error. */
  end(error?: string, dropped?: number): void;
}

/** Where the agent stands, for the view's header. */
export interface AgentState {
  phase: string;
  pod?: string;
}

/** The session's state and its event stream. */
export class SessionStatus {
  readonly routes: RouteStats[] = [];
  tunnels = 0;
  reconnects = 0;
  agent: AgentState = { phase: "starting" };
  /** Set as the session stops: what closes now closes because of it. */
  stopping = false;
  readonly #listeners = new Set<(event: RelayEvent) => void>();
  /** Tunnels lost and not yet replaced: the next ups are reconnects. */
  #lost = 0;

  constructor(private readonly now: () => number = Date.now) {}

  /** Calls `listener` for every event from now on; returns how to stop. */
  subscribe(listener: (event: RelayEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(body: EventBody): void {
    const event = { time: new Date(this.now()).toISOString(), ...body } as RelayEvent;
    for (const listener of this.#listeners) listener(event);
  }

  /**
   * A route is ready: registered (once per id) and announced. Ready again (an agent in another
   * pod after a rollout), it keeps its counters and takes the new facts.
   */
  ready(info: RouteInfo): RouteStats {
    let route = this.routes.find((r) => r.info.id === info.id);
    if (!route) {
      route = new RouteStats(info);
      this.routes.push(route);
    } else {
      Object.assign(route.info, info);
    }
    this.emit({ event: "ready", route: info });
    return route;
  }

  /**
   * A TCP connection on `route` from `peer`, to be spliced with the local side first (`a`),
   * or second when `localFirst` is false (a reverse forward's, spliced by the tunnel).
   */
  connection(route: RouteStats, peer: string, localFirst = true): Tracked {
    return this.#track(route, peer, "connection", localFirst);
  }

  /** A UDP session on `route` from `peer`, spliced with the local side first. */
  udpSession(route: RouteStats, peer: string): Tracked {
    return this.#track(route, peer, "udp_session", true);
  }

  #track(
    route: RouteStats,
    peer: string,
    kind: "connection" | "udp_session",
    localFirst: boolean,
  ): Tracked {
    const counts: SpliceCounts = { aToB: 0, bToA: 0 };
    const started = this.now();
    route.open++;
    route.total++;
    route.track(counts, localFirst);
    const id = route.info.id;
    this.emit(
      kind === "connection"
        ? { event: "connection", phase: "open", route: id, peer }
        : { event: "udp_session", phase: "start", route: id, peer },
    );
    let ended = false;
    return {
      counts,
      end: (error, dropped) => {
        if (ended) return;
        ended = true;
        route.open--;
        route.untrack(counts);
        if (dropped) route.dropped += dropped;
        if (error) {
          route.failed++;
          route.lastError = { message: error, at: this.now() };
        }
        const facts = {
          route: id,
          peer,
          bytes_sent: localFirst ? counts.aToB : counts.bToA,
          bytes_received: localFirst ? counts.bToA : counts.aToB,
          duration_ms: this.now() - started,
          ...(error ? { error } : {}),
        };
        this.emit(
          kind === "connection"
            ? { event: "connection", phase: "close", ...facts }
            : { event: "udp_session", phase: "end", ...facts, dropped: dropped ?? 0 },
        );
      },
    };
  }

  /** A route failed outside any one connection (an -R the agent could not take). */
  routeError(route: RouteStats, message: string): void {
    route.lastError = { message, at: this.now() };
  }

  tunnelUp(): void {
    this.tunnels++;
    if (this.#lost > 0) {
      this.#lost--;
      this.reconnects++;
    }
    this.emit({ event: "tunnel", phase: "up", tunnels: this.tunnels });
  }

  tunnelDown(reason: string): void {
    this.tunnels = Math.max(0, this.tunnels - 1);
    this.#lost++;
    this.emit({ event: "tunnel", phase: "down", tunnels: this.tunnels, reason });
  }

  agentPhase(phase: AgentEventPhase, pod?: string, reason?: string): void {
    this.agent = { phase, pod: pod ?? this.agent.pod };
    this.emit({
      event: "agent",
      phase,
      ...(pod ? { pod } : {}),
      ...(reason ? { reason } : {}),
    });
  }

  error(message: string): void {
    this.emit({ event: "error", message });
  }

  stats(): void {
    this.emit({
      event: "stats",
      tunnels: this.tunnels,
      reconnects: this.reconnects,
      routes: this.routes.map((r) => r.counters()),
    });
  }
}

/** The agent's steps, as its events name them. */
export type AgentEventPhase =
  | "creating"
  | "scheduled"
  | "pulling"
  | "started"
  | "replaced"
  | "deleted";
