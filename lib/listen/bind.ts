/**
 * Binds every local listener a plan needs, all at once and before any cluster work, so a
 * busy port is reported (exit 2) before a pod is created.
 */
import type { UsageError } from "../errors.ts";
import type { ReadyLineFacts } from "../log.ts";
import { isIPv6, LOCALHOST } from "../net/address.ts";
import type { ForwardSpec, PortSpec } from "../plan.ts";
import type { Protocol } from "../net/types.ts";
import { type BindAddress, TcpListener } from "./tcp.ts";
import { UdpListener, type UdpListenerOptions } from "./udp.ts";

/** The sockets bound for one port of one forward, on every `--address`. */
export interface PortBinding {
  forward: ForwardSpec;
  port: PortSpec;
  /**
   * The local port bound (the chosen one for `:remote`); undefined while the port waits for
   * a named remote port to be resolved (`svc/x http`): then call {@link bindPort} later.
   */
  localPort?: number;
  /** One per address; empty when TCP is not (or not yet) wanted. */
  tcp: TcpListener[];
  /** One per address; empty when UDP is not (or not yet) wanted. */
  udp: UdpListener[];
  /**
   * For a named port without `@proto`, both protocols are tried, since only the cluster
   * knows which the name declares; a bind that failed is kept here and becomes the error
   * only if that protocol turns out to be the one needed.
   */
  deferred: Partial<Record<Protocol, UsageError>>;
}

/** Every listener of a run; closing it closes them all. */
export interface ListenerSet {
  bindings: PortBinding[];
  close(): void;
}

/** Options for {@link bindForwards} and {@link bindPort}. */
export interface BindOptions {
  /** Local addresses (IP literals, or {@link LOCALHOST}); each port is bound on all of them. */
  addresses: readonly string[];
  /** Options for every UDP listener. */
  udp: UdpListenerOptions;
  /** Told why localhost's ::1 was left out, when it could not be bound (see {@link bindEach}). */
  warn?: (message: string) => void;
}

/**
 * Binds every port of every forward. If one bind fails, everything bound so far is closed
 * and that bind's UsageError is thrown: no half-open set is ever left behind.
 */
export function bindForwards(forwards: readonly ForwardSpec[], options: BindOptions): ListenerSet {
  const bindings: PortBinding[] = [];
  const closeAll = () => bindings.forEach(closeBinding);
  try {
    for (const forward of forwards) {
      const forwardOptions = forwardBindOptions(forward, options);
      for (const port of forward.ports) {
        const local = port.localPort ?? (typeof port.remote === "number" ? port.remote : undefined);
        const binding: PortBinding = { forward, port, tcp: [], udp: [], deferred: {} };
        bindings.push(binding);
        if (local === undefined) continue;
        if (port.protocol) {
          bindPort(binding, local, port.protocol, forwardOptions);
        } else if (typeof port.remote === "number") {
          bindPort(binding, local, "tcp", forwardOptions);
        } else {
          bindEither(binding, local, forwardOptions);
        }
      }
    }
  } catch (error) {
    closeAll();
    throw error;
  }
  return { bindings, close: closeAll };
}

/** `options` with the forward's own addresses, if it has them (a targets file line's `-l`). */
export function forwardBindOptions(forward: ForwardSpec, options: BindOptions): BindOptions {
  return forward.addresses ? { ...options, addresses: forward.addresses } : options;
}

/**
 * Binds `protocol` for a binding on every address at `port` (0: a free one, then the same
 * port on the other addresses, as kubectl does for localhost). On failure, this call's
 * listeners are closed again and the UsageError thrown.
 */
export function bindPort(
  binding: PortBinding,
  port: number,
  protocol: Protocol,
  options: BindOptions,
): void {
  const bound = bindEach(
    options.addresses,
    binding.localPort ?? port,
    (address) =>
      protocol === "tcp" ? TcpListener.bind(address) : UdpListener.bind(address, options.udp),
    options.warn,
  );
  binding.localPort = bound[0]?.port ?? binding.localPort ?? port;
  if (protocol === "tcp") binding.tcp.push(...(bound as TcpListener[]));
  else binding.udp.push(...(bound as UdpListener[]));
}

/**
 * Binds one listener per address with `bind`, all on one port (0: the first picks a free one,
 * the others take the same, as kubectl does for localhost). An address that a wildcard bound
 * here already covers is left out rather than failing on its port, and so is localhost's ::1
 * when it cannot be bound (`warn` hears of a port taken there). On failure, those bound are
 * closed again and the error (a UsageError from the listener) thrown.
 */
export function bindEach<L extends TcpListener | UdpListener>(
  addresses: readonly string[],
  port: number,
  bind: (address: BindAddress) => L,
  warn?: (message: string) => void,
): L[] {
  const bound: L[] = [];
  const optional = addresses.includes(LOCALHOST) && !addresses.includes("::1") ? "::1" : "";
  const wanted = new Set(addresses.flatMap((a) => a === LOCALHOST ? ["127.0.0.1", "::1"] : [a]));
  let chosen = port;
  try {
    for (const hostname of wildcardsFirst([...wanted])) {
      let listener: L;
      try {
        listener = bind({ hostname, port: chosen });
      } catch (error) {
        const inUse = (error as Error).cause instanceof Deno.errors.AddrInUse;
        if (inUse && coveredByWildcard(hostname, bound)) continue;
        if (hostname !== optional) throw error;
        // Without IPv6 there is no one to tell; a port someone else holds on ::1 is news.
        if (inUse) {
          warn?.(`localhost: listening on 127.0.0.1:${chosen} only; ${(error as Error).message}`);
        }
        continue;
      }
      bound.push(listener);
      chosen = listener.port;
    }
  } catch (error) {
    bound.forEach((listener) => listener.close());
    throw error;
  }
  return bound;
}

/**
 * Whether a wildcard listener already bound takes `hostname`'s connections on its port: `::`
 * and `0.0.0.0` take their family's, and where `::` is dual-stack (Linux's default) IPv4's too.
 */
function coveredByWildcard(hostname: string, bound: readonly { hostname: string }[]): boolean {
  const has = (wildcard: string) => bound.some((l) => l.hostname === wildcard);
  if (isIPv6(hostname)) return hostname !== "::" && has("::");
  return has("::") || (hostname !== "0.0.0.0" && has("0.0.0.0"));
}

/** `::` before `0.0.0.0`, so that a dual-stack `::` is what takes a port both ask for. */
function wildcardsFirst(addresses: readonly string[]): string[] {
  const rank = (a: string) => (a === "::" ? 0 : a === "0.0.0.0" ? 1 : 2);
  return [...addresses].sort((a, b) => rank(a) - rank(b));
}

// Both protocols, keeping a failure as deferred; if both fail, the TCP error is the answer.
function bindEither(binding: PortBinding, port: number, options: BindOptions): void {
  for (const protocol of ["tcp", "udp"] as const) {
    try {
      bindPort(binding, port, protocol, options);
    } catch (error) {
      binding.deferred[protocol] = error as UsageError;
    }
  }
  if (binding.deferred.tcp && binding.deferred.udp) throw binding.deferred.tcp;
}

/** Closes every listener of one binding. */
export function closeBinding(binding: PortBinding): void {
  for (const listener of [...binding.tcp, ...binding.udp]) listener.close();
}

/**
 * The facts of each ready line for a binding's `protocol` listeners (one per address),
 * with the remote port as resolved in the cluster (a named port's number, when known).
 */
export function readyFacts(
  binding: PortBinding,
  protocol: Protocol,
  remotePort: number | string = binding.port.remote,
): ReadyLineFacts[] {
  const listeners = protocol === "tcp" ? binding.tcp : binding.udp;
  return listeners.map((listener) => ({
    localAddress: listener.hostname,
    localPort: listener.port,
    target: binding.forward.target,
    remotePort,
    protocol,
  }));
}
