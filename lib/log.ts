/**
 * What relay prints: ready lines on stdout (kubectl's format, so scripts that parse
 * `kubectl port-forward` output keep working), status and errors on stderr.
 */
import type { HttpFilter, IncomingMode } from "./contract.ts";
import { formatHostPort } from "./net/address.ts";
import type { Protocol } from "./net/types.ts";
import type { TargetRef } from "./plan.ts";

export { formatHostPort };

/** A target as the user would write it: `svc/kube-dns`, `host/redis.example`, `ip/[fd00::1]`. */
export function formatTarget(target: TargetRef): string {
  const name = target.kind === "ip" && target.name.includes(":") ? `[${target.name}]` : target.name;
  return `${target.kind}/${name}`;
}

/** The facts one ready line states. */
export interface ReadyLineFacts {
  /** The local address a listener is bound to. */
  localAddress: string;
  localPort: number;
  target: TargetRef;
  /** The remote port, resolved to a number when known, else as written. */
  remotePort: number | string;
  protocol: Protocol;
  /** Where connections leave from, when not relay's own agent pod: `pod/web-7f9c`. */
  via?: string;
}

/** The facts one reverse forward's ready line states. */
export interface ReverseReadyFacts {
  /** The pod the agent listens in: `pod/web-7f9c`. */
  place: string;
  remotePort: number;
  localAddress: string;
  localPort: number;
  /** How the agent took the port (default listen). */
  mode?: IncomingMode;
  /** With steal: the HTTP requests that come here. */
  filter?: HttpFilter;
}

/** The facts of `relay proxy`'s ready line, one per address it listens on. */
export interface ProxyReadyFacts {
  localAddress: string;
  localPort: number;
  /** Where short names resolve (`-n`, or the context's namespace). */
  namespace: string;
  /** The user clients must give (--proxy-auth); absent: none. */
  user?: string;
}

/**
 * kubectl's ready line, naming the target since one relay serves several:
 * `Forwarding from 127.0.0.1:6379 -> host/redis.example:6379`, and for UDP
 * `Forwarding from 127.0.0.1:5353 -> svc/kube-dns:53/udp`.
 */
export function formatReadyLine(facts: ReadyLineFacts): string {
  const suffix = facts.protocol === "udp" ? "/udp" : "";
  return `Forwarding from ${formatHostPort(facts.localAddress, facts.localPort)} -> ` +
    `${formatTarget(facts.target)}:${facts.remotePort}${suffix}` +
    (facts.via ? ` (from ${facts.via})` : "");
}

/** `Listening on pod/web-7f9c:9000 -> 127.0.0.1:9000`: connections to that port come here. */
export function formatReverseReadyLine(facts: ReverseReadyFacts): string {
  const route = `${facts.place}:${facts.remotePort} -> ` +
    formatHostPort(facts.localAddress, facts.localPort);
  switch (facts.mode ?? "listen") {
    case "listen":
      return `Listening on ${route}`;
    case "mirror":
      return `Mirroring ${route} (the app still answers; steal with --steal or ` +
        `feature.network.incoming: steal)`;
    case "steal":
      if (facts.filter) return `Stealing ${route} (${describeFilter(facts.filter)})`;
      return `Stealing ${route} (the app no longer sees these connections; mirror with ` +
        `--mirror or feature.network.incoming: mirror)`;
  }
}

/**
 * `Proxying on 127.0.0.1:1080 (SOCKS5 and HTTP; names resolve in the cluster, short ones in
 * namespace shop)`: relay proxy listens there.
 */
export function formatProxyReadyLine(facts: ProxyReadyFacts): string {
  return `Proxying on ${formatHostPort(facts.localAddress, facts.localPort)} (SOCKS5 and ` +
    `HTTP; names resolve in the cluster, short ones in namespace ${facts.namespace}` +
    (facts.user === undefined ? ")" : `; user ${facts.user} with --proxy-auth's password)`);
}

/** Which requests a filtered steal takes, for its ready line. */
function describeFilter(filter: HttpFilter): string {
  const which = [
    filter.path !== undefined ? `whose path matches ${filter.path}` : "",
    filter.header !== undefined ? `with a header matching ${filter.header}` : "",
  ].filter(Boolean).join(" or ");
  return `HTTP requests ${which}; every other request and connection still reaches the app`;
}

/** Where a logger writes lines; each call gets one line without its newline. */
export interface LogSinks {
  stdout(line: string): void;
  stderr(line: string): void;
}

/** relay's output, one method per kind of line. */
export interface Logger {
  /** A listener is ready (stdout, always). */
  ready(facts: ReadyLineFacts): void;
  /** A reverse forward's port listens in the pod (stdout, always). */
  readyReverse(facts: ReverseReadyFacts): void;
  /** relay proxy listens (stdout, always). */
  readyProxy(facts: ProxyReadyFacts): void;
  /** Something the user should know while running (stderr, always). */
  info(message: string): void;
  /** Detail for `-v` (stderr, only when verbose). */
  debug(message: string): void;
  /** A failure that does not stop the run, or the last line before exiting (stderr). */
  error(message: string): void;
}

const encoder = new TextEncoder();

/** Sinks that write synchronously to the process's stdout and stderr. */
export const processSinks: LogSinks = {
  stdout: (line) => void Deno.stdout.writeSync(encoder.encode(line + "\n")),
  stderr: (line) => void Deno.stderr.writeSync(encoder.encode(line + "\n")),
};

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  verbose?: boolean;
  sinks?: LogSinks;
}

/** A logger writing to `sinks` (the process's streams unless given). */
export function createLogger(options: LoggerOptions = {}): Logger {
  const sinks = options.sinks ?? processSinks;
  return {
    ready: (facts) => sinks.stdout(formatReadyLine(facts)),
    readyReverse: (facts) => sinks.stdout(formatReverseReadyLine(facts)),
    readyProxy: (facts) => sinks.stdout(formatProxyReadyLine(facts)),
    info: (message) => sinks.stderr(message),
    debug: (message) => {
      if (options.verbose) sinks.stderr(message);
    },
    error: (message) => sinks.stderr(`error: ${message}`),
  };
}
