/**
 * relay's events, as `-o json` writes them (one object per line) and as the live view and the
 * plain log read them. The JSON Schema in docs/events.schema.json describes the same shapes;
 * a test validates every line relay writes against it.
 */

/** Which way a route's connections go. */
export type Direction = "forward" | "reverse" | "proxy";

/** One local port relay serves, and where its connections go. */
export interface RouteInfo {
  /** Stable for the run: `tcp/127.0.0.1:8080` (the local end) or `reverse/80` (the pod's port). */
  id: string;
  direction: Direction;
  protocol: "tcp" | "udp";
  /** The local end: `127.0.0.1:8080`. */
  local: string;
  /** The other end as the user named it: `svc/web:80`, `pod/web-7f9c:80`, `any` (proxy). */
  target: string;
  /** With -R: listen, steal or mirror. */
  mode?: string;
}

/** A route's counters, as the live view shows them and the `stats` event carries them. */
export interface RouteCounters {
  id: string;
  open: number;
  total: number;
  failed: number;
  /** Bytes from the local side into the tunnel. */
  bytes_sent: number;
  /** Bytes from the tunnel to the local side. */
  bytes_received: number;
  /** UDP datagrams dropped (queues full), both ends. */
  dropped: number;
  last_error?: string;
  /** When the last error happened (ISO 8601). */
  last_error_time?: string;
}

/** Every event: what happened and when (ISO 8601). */
export type RelayEvent =
  & { time: string }
  & (
    | { event: "ready"; route: RouteInfo }
    | {
      event: "connection";
      phase: "open" | "close";
      route: string;
      /** The local peer (forward) or the caller in the cluster (reverse): `127.0.0.1:51234`. */
      peer: string;
      /** On close. */
      bytes_sent?: number;
      bytes_received?: number;
      duration_ms?: number;
      error?: string;
    }
    | {
      event: "udp_session";
      phase: "start" | "end";
      route: string;
      peer: string;
      bytes_sent?: number;
      bytes_received?: number;
      dropped?: number;
      duration_ms?: number;
      error?: string;
    }
    | { event: "tunnel"; phase: "up" | "down"; tunnels: number; reason?: string }
    | {
      event: "agent";
      phase: "creating" | "scheduled" | "pulling" | "started" | "replaced" | "deleted";
      /** `namespace/name` of the agent's pod, once known. */
      pod?: string;
      reason?: string;
    }
    | { event: "error"; message: string }
    | { event: "stats"; tunnels: number; reconnects: number; routes: RouteCounters[] }
  );

/** An event before its time is stamped. */
export type EventBody = RelayEvent extends infer E ? E extends unknown ? Omit<E, "time"> : never
  : never;
