/** Routes as the status names them, from the facts the ready lines state. */
import {
  formatHostPort,
  formatTarget,
  type ProxyReadyFacts,
  type ReadyLineFacts,
  type ReverseReadyFacts,
} from "../log.ts";
import type { RouteInfo } from "./events.ts";

/** A forward's listener: `tcp/127.0.0.1:8080` to `svc/web:80`. */
export function forwardRoute(facts: ReadyLineFacts): RouteInfo {
  const local = formatHostPort(facts.localAddress, facts.localPort);
  return {
    id: `${facts.protocol}/${local}`,
    direction: "forward",
    protocol: facts.protocol,
    local,
    // As the ready line says it: TCP and UDP on one port are two rows that must differ.
    target: `${formatTarget(facts.target)}:${facts.remotePort}` +
      (facts.protocol === "udp" ? "/udp" : "") + (facts.via ? ` (from ${facts.via})` : ""),
  };
}

/**
 * A -R port in the pod: `reverse/80` to `127.0.0.1:8080`. Its id is the port's alone, the same
 * when a new agent takes it in another pod.
 */
export function reverseRoute(facts: ReverseReadyFacts): RouteInfo {
  return {
    id: `reverse/${facts.remotePort}`,
    direction: "reverse",
    protocol: "tcp",
    local: formatHostPort(facts.localAddress, facts.localPort),
    target: `${facts.place}:${facts.remotePort}`,
    mode: facts.mode ?? "listen",
  };
}

/** `relay proxy`'s port: `proxy/127.0.0.1:1080`, to whatever each client asks for. */
export function proxyRoute(facts: ProxyReadyFacts): RouteInfo {
  const local = formatHostPort(facts.localAddress, facts.localPort);
  return {
    id: `proxy/${local}`,
    direction: "proxy",
    protocol: "tcp",
    local,
    target: `any (names in ${facts.namespace})`,
  };
}
