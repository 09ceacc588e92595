/**
 * The tunnel's default tunables (TunnelOptions overrides each). Why each has its value, with
 * the measurements, is in docs/MEASUREMENTS.md ("Tunnel flow control").
 */

/**
 * The receive window a stream starts with: what every open stream may have in flight toward
 * us, so what 1,000 idle connections cost; a busy stream's window grows from it.
 */
export const DEFAULT_STREAM_WINDOW = 64 * 1024;

/**
 * Most a stream's receive window grows to while its reader keeps up: one window a round trip
 * is a stream's most, and a distant cluster's round trip includes the queues on its path.
 */
export const DEFAULT_MAX_STREAM_WINDOW = 32 * 1024 * 1024;

/**
 * Growth a new stream is granted at once, from the session's budget: what a transfer can carry
 * in its first round trip, so a fetch of a few MiB from a distant cluster takes about as many
 * round trips as on a connection with no windows of its own.
 */
export const DEFAULT_STREAM_HEAD_START = 4 * 1024 * 1024;

/**
 * Growth all of a session's streams may share beyond their initial windows: room for one
 * stream at the full per-stream maximum, or several busy ones below it.
 */
export const DEFAULT_SESSION_GROWTH = 32 * 1024 * 1024;

/**
 * The quiet spell after which a stream gives back its grown credit, so streams that once
 * carried a burst do not keep the session's growth budget from a new bulk stream.
 */
export const DEFAULT_IDLE_CREDIT_MS = 5_000;

/** Silence before a keep-alive ping. */
export const DEFAULT_KEEPALIVE_MS = 10_000;

/** Datagrams queued per UDP stream before drops. */
export const DEFAULT_UDP_QUEUE = 256;

/**
 * Streams a peer may have open on one tunnel, and opens it may have in progress (dials not yet
 * answered): bounds on what one token holder can make this end hold. Well above what relay
 * opens (the benchmark's 1,000 connections spread over two tunnels).
 */
export const DEFAULT_MAX_STREAMS = 4096;
export const DEFAULT_MAX_DIALS = 1024;

/**
 * The last stream id an end may use (ids are u32 on the wire and only ever grow): an end
 * that has used its ids up goes away gracefully, so its streams finish and new ones go to
 * another tunnel.
 */
export const MAX_STREAM_ID = 0xffff_ffff;
