/**
 * The port grammar shared by positional ports and the targets file:
 * `[local:]remote[@tcp|@udp]`, as kubectl port-forward and krelay write it.
 */
import { UsageError } from "../errors.ts";
import type { PortSpec } from "../plan.ts";
import type { Protocol } from "../net/types.ts";

/** The grammar, quoted in every port error so the user sees what would have worked. */
export const PORT_GRAMMAR = "[local:]remote[@tcp|@udp]";

// IANA_SVC_NAME as Kubernetes validates container and Service port names.
const PORT_NAME = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;

/** Whether `text` is a valid Kubernetes port name (IANA_SVC_NAME). */
export function isPortName(text: string): boolean {
  return text.length <= 15 && PORT_NAME.test(text) && /[a-z]/.test(text) &&
    !text.includes("--");
}

/**
 * Parses a decimal port number in `[min, 65535]`. `what` names the field and `context`
 * begins the error (`invalid port "70000"`), so each grammar words its own message.
 */
export function parsePortNumber(text: string, min: number, what: string, context: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < min || port > 65535) {
    throw new UsageError(
      `${context}: ${what} ${JSON.stringify(text)} is not a number ${min}–65535`,
    );
  }
  return port;
}

/**
 * Splits a trailing `@tcp` / `@udp` (any case) off `text`; `context` and `grammar` word
 * the error for a bad or repeated suffix.
 */
export function splitProtocol(
  text: string,
  context: string,
  grammar: string,
): { body: string; protocol?: Protocol } {
  const at = text.indexOf("@");
  if (at < 0) return { body: text };
  const suffix = text.slice(at + 1);
  const lower = suffix.toLowerCase();
  if (lower === "tcp" || lower === "udp") return { body: text.slice(0, at), protocol: lower };
  throw new UsageError(
    `${context}: unknown protocol "@${suffix}", expected @tcp or @udp (${grammar})`,
  );
}

/**
 * Parses one `[local:]remote[@tcp|@udp]`. The remote is 1–65535 or a port name; the local
 * is 0–65535, empty (`:8080`) meaning a random free port, absent meaning "same as remote".
 */
export function parsePortSpec(text: string): PortSpec {
  if (text === "") throw new UsageError(`invalid port "": expected ${PORT_GRAMMAR}`);
  const context = `invalid port ${JSON.stringify(text)}`;
  const { body, protocol } = splitProtocol(text, context, PORT_GRAMMAR);
  const parts = body.split(":");
  if (parts.length > 2) {
    throw new UsageError(`invalid port "${text}": too many ":", expected ${PORT_GRAMMAR}`);
  }
  const remoteText = parts[parts.length - 1];
  if (remoteText === "") {
    throw new UsageError(
      `invalid port "${text}": the remote port is missing, expected ${PORT_GRAMMAR}`,
    );
  }
  let remote: number | string;
  if (/^\d+$/.test(remoteText)) {
    remote = parsePortNumber(remoteText, 1, "remote port", context);
  } else if (isPortName(remoteText)) {
    remote = remoteText;
  } else {
    throw new UsageError(
      `invalid port "${text}": remote ${JSON.stringify(remoteText)} is neither a number ` +
        `1–65535 nor a port name (lowercase letters, digits and "-", at most 15)`,
    );
  }
  const spec: PortSpec = { remote };
  if (parts.length === 2) {
    spec.localPort = parts[0] === "" ? 0 : parsePortNumber(parts[0], 0, "local port", context);
  }
  if (protocol) spec.protocol = protocol;
  return spec;
}
