/**
 * mirrord's port-forward flags: `-L [local:]host:port[@proto]` and
 * `-R remote[:local][@proto]`.
 */
import { UsageError } from "../errors.ts";
import type { ForwardSpec, PortSpec, ReverseSpec } from "../plan.ts";
import { isHostname, isIP, isIPv6 } from "../net/address.ts";
import { parsePortNumber, splitProtocol } from "./ports.ts";

const L_GRAMMAR = "[local:]host:port[@tcp|@udp]";
const R_GRAMMAR = "remote[:local][@tcp]";

/** Splits `host:port` where host may be `[v6]`; the port part is returned as text. */
function splitHostPort(text: string, context: string): { host: string; port: string } {
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") {
      throw new UsageError(`${context}: expected [IPv6]:port inside ${L_GRAMMAR}`);
    }
    return { host: text.slice(1, close), port: text.slice(close + 2) };
  }
  const colon = text.lastIndexOf(":");
  if (colon < 0) {
    throw new UsageError(`${context}: the port is missing, expected ${L_GRAMMAR}`);
  }
  const host = text.slice(0, colon);
  if (host.includes(":")) {
    throw new UsageError(
      `${context}: too many ":" (write an IPv6 host in brackets), expected ${L_GRAMMAR}`,
    );
  }
  return { host, port: text.slice(colon + 1) };
}

/** Parses one `-L` value into a forward to a `host/` or `ip/` target. */
export function parseLocalForward(value: string): ForwardSpec {
  const context = `invalid -L ${JSON.stringify(value)}`;
  const { body, protocol } = splitProtocol(value, context, L_GRAMMAR);
  // A leading run of digits (or nothing) before the first ":" is the local port, unless what
  // follows has no ":" of its own (then it was host:port with a numeric-looking host).
  let localText: string | undefined;
  let rest = body;
  const first = body.indexOf(":");
  if (!body.startsWith("[") && first >= 0 && /^\d*$/.test(body.slice(0, first))) {
    const after = body.slice(first + 1);
    if (after.includes(":")) {
      localText = body.slice(0, first);
      rest = after;
    }
  }
  const parts = body.split(":");
  if (
    !body.startsWith("[") && parts.length === 3 && !parts.includes("") && !/^\d+$/.test(parts[0])
  ) {
    throw new UsageError(
      `${context}: the local port "${parts[0]}" is not a number, expected ${L_GRAMMAR}`,
    );
  }
  const { host, port } = splitHostPort(rest, context);
  if (host === "") {
    throw new UsageError(`${context}: the host is missing, expected ${L_GRAMMAR}`);
  }
  if (/^\d+$/.test(host) && isHostname(port) && !/^\d+$/.test(port)) {
    throw new UsageError(
      `${context}: the port is missing after "${port}", expected ${L_GRAMMAR}`,
    );
  }
  const ip = isIP(host);
  if (!ip && (!isHostname(host) || /^\d+$/.test(host))) {
    throw new UsageError(`${context}: "${host}" is not a valid hostname or IP address`);
  }
  if (isIPv6(host) && !rest.startsWith("[")) {
    throw new UsageError(`${context}: write the IPv6 host in brackets`);
  }
  const portSpec: PortSpec = { remote: parsePortNumber(port, 1, "port", context) };
  if (localText !== undefined) {
    portSpec.localPort = localText === ""
      ? 0
      : parsePortNumber(localText, 0, "local port", context);
  }
  if (protocol) portSpec.protocol = protocol;
  return {
    target: { kind: ip ? "ip" : "host", name: host },
    ports: [portSpec],
    source: `-L ${value}`,
  };
}

/** Parses one `-R` value; protocol defaults to tcp and local to the remote port. */
export function parseReverseForward(value: string): ReverseSpec {
  const context = `invalid -R ${JSON.stringify(value)}`;
  const { body, protocol } = splitProtocol(value, context, R_GRAMMAR);
  const parts = body.split(":");
  if (parts.length > 2 || parts[0] === "" || parts[1] === "") {
    throw new UsageError(`${context}: expected ${R_GRAMMAR}`);
  }
  const remotePort = parsePortNumber(parts[0], 1, "remote port", context);
  const localPort = parts.length === 2
    ? parsePortNumber(parts[1], 1, "local port", context)
    : remotePort;
  return { remotePort, localPort, protocol: protocol ?? "tcp", source: `-R ${value}` };
}
