/**
 * The proxy's HTTP side, as HTTPS_PROXY and `curl -x` use it: CONNECT host:port (a tunnel),
 * and absolute-URI requests (`GET http://svc.ns:8080/path`), passed on in origin form.
 *
 * The request head is parsed by hand: it is read off a socket whose remaining bytes (a body,
 * or the TLS after CONNECT) are then spliced as they are, and no platform HTTP server hands
 * the connection back after the head. URLs are parsed by the platform (`URL`).
 */
import type { Destination } from "../kube/resolve.ts";
import { isHostname, isIPv4, isIPv6 } from "../net/address.ts";
import type { ProxyCredentials } from "../plan.ts";
import type { OpenFailure } from "../tunnel/types.ts";
import { credentialsMatch, parseBasic } from "./auth.ts";
import { type HandshakeReader, HandshakeTooLarge, ProxyRefusal } from "./reader.ts";

/** A request line and its header lines, as sent. */
export interface RequestHead {
  method: string;
  target: string;
  version: string;
  /** In order, names as written. */
  headers: [name: string, value: string][];
  /** Bytes of the head, the empty line included. */
  length: number;
}

/** What a client asks the proxy for. */
export type ProxyRequest =
  | { kind: "connect"; destination: Destination }
  /** `head` is the request rewritten for the origin server; its body follows as sent. */
  | { kind: "forward"; destination: Destination; head: Uint8Array };

/** A request the proxy answers with an error status. */
export class HttpProxyError extends Error {
  override name = "HttpProxyError";
  constructor(
    readonly status: number,
    message: string,
    /** The RFC 9209 error type for the Proxy-Status header. */
    readonly proxyStatus = "http_request_error",
  ) {
    super(message);
  }
}

/** The answer to a CONNECT whose destination is connected: the tunnel starts after it. */
export const CONNECT_ESTABLISHED = latin1("HTTP/1.1 200 Connection established\r\n\r\n");

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^(\S+) (\S+) (HTTP\/\d\.\d)$/;
const HEADER_LINE = /^([^:\s]+):[ \t]*(.*?)[ \t]*$/;
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

/** Where the head ends: the index just past its empty line, or -1 while it is incomplete. */
function headEnd(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0x0a) continue;
    if (bytes[i + 1] === 0x0a) return i + 2;
    if (bytes[i + 1] === 0x0d && bytes[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}

/** The request head, or undefined while incomplete; an HttpProxyError (400, 505) when bad. */
export function parseRequestHead(bytes: Uint8Array): RequestHead | undefined {
  // Empty lines before the request line are ignored (RFC 9112 §2.2).
  let start = 0;
  while (bytes[start] === 0x0d || bytes[start] === 0x0a) start++;
  const end = headEnd(bytes.subarray(start));
  if (end < 0) return undefined;
  const lines = fromLatin1(bytes.subarray(start, start + end)).split(/\r?\n/).slice(0, -2);
  const request = REQUEST_LINE.exec(lines[0] ?? "");
  if (!request || !TOKEN.test(request[1]) || CONTROL.test(request[2])) {
    throw new HttpProxyError(400, `malformed request line ${JSON.stringify(lines[0])}`);
  }
  const [, method, target, version] = request;
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") {
    throw new HttpProxyError(505, `${version} is not supported: the proxy speaks HTTP/1.1`);
  }
  const headers: [string, string][] = [];
  for (const line of lines.slice(1)) {
    const header = HEADER_LINE.exec(line);
    // A folded line (leading whitespace) is refused too, as RFC 9112 §5.2 lets a proxy do,
    // and so is a control character (a bare CR) that an origin might read as a line end.
    if (!header || !TOKEN.test(header[1]) || CONTROL.test(header[2])) {
      throw new HttpProxyError(400, `malformed header line ${JSON.stringify(line)}`);
    }
    headers.push([header[1], header[2]]);
  }
  return { method, target, version, headers, length: start + end };
}

/** Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own, never passed on. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
  "host",
]);

/**
 * What `head` asks for: a CONNECT tunnel, or a request to pass on. The request is rewritten
 * to origin form with the URI's Host, without hop-by-hop and Proxy-* headers, and with
 * `Connection: close`: relay opens one connection to the origin per client connection, so
 * the client opens a new one for its next request. Transfer-Encoding stays: the body is
 * passed on as sent, framing included.
 */
export function proxyRequestOf(head: RequestHead): ProxyRequest {
  if (head.method === "CONNECT") {
    return { kind: "connect", destination: parseAuthority(head.target) };
  }
  const target = head.target;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(target)) {
    throw new HttpProxyError(
      400,
      `${head.method} ${target} is not a proxy request: expected an absolute URI ` +
        `(http://host:port/path) or CONNECT host:port`,
    );
  }
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    throw new HttpProxyError(400, `invalid URI ${JSON.stringify(target)}`);
  }
  if (url.protocol !== "http:") {
    throw new HttpProxyError(
      400,
      `${url.protocol}// URIs are not proxied as requests: clients send https:// through ` +
        `CONNECT`,
    );
  }
  if (url.username || url.password) {
    throw new HttpProxyError(400, "a URI with user information is not proxied");
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const destination = { host, port: url.port ? Number(url.port) : 80 };
  // The path as sent: URL would resolve dot segments and re-encode, which could change what
  // the origin serves.
  const afterScheme = target.slice(target.indexOf("//") + 2);
  const pathStart = afterScheme.search(/[/?#]/);
  let path = pathStart < 0 ? "/" : afterScheme.slice(pathStart).replace(/#.*$/, "");
  if (!path.startsWith("/")) path = `/${path}`;
  const dropped = new Set(HOP_BY_HOP);
  for (const [name, value] of head.headers) {
    if (name.toLowerCase() !== "connection") continue;
    for (const listed of value.split(",")) dropped.add(listed.trim().toLowerCase());
  }
  const kept = head.headers.filter(([name]) => {
    const lower = name.toLowerCase();
    return !dropped.has(lower) && !lower.startsWith("proxy-");
  });
  const lines = [
    `${head.method} ${path} ${head.version}`,
    `Host: ${url.host}`,
    ...kept.map(([name, value]) => `${name}: ${value}`),
    "Connection: close",
    "",
    "",
  ];
  return { kind: "forward", destination, head: latin1(lines.join("\r\n")) };
}

/** CONNECT's `host:port` (an IPv6 literal in brackets); the port is required. */
export function parseAuthority(text: string): Destination {
  const match = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  const valid = match?.[1] !== undefined ? isIPv6(host ?? "") : isHostname(host ?? "") ||
    isIPv4(host ?? "");
  if (!match || !host || !valid || port < 1 || port > 65_535) {
    throw new HttpProxyError(
      400,
      `CONNECT ${JSON.stringify(text)}: expected host:port (an IPv6 address in brackets)`,
    );
  }
  return { host: host.toLowerCase(), port };
}

/** The status and RFC 9209 error type for an open the agent refused. */
export function statusForFailure(
  code: OpenFailure | undefined,
): { status: number; proxyStatus: string } {
  switch (code) {
    case "no-such-host":
      return { status: 502, proxyStatus: "dns_error" };
    case "refused":
      return { status: 502, proxyStatus: "connection_refused" };
    case "timeout":
      return { status: 504, proxyStatus: "connection_timeout" };
    case "unreachable":
      return { status: 502, proxyStatus: "destination_ip_unroutable" };
    case "forbidden":
    case "denied":
      return { status: 403, proxyStatus: "destination_ip_prohibited" };
    default:
      return { status: 502, proxyStatus: "proxy_internal_error" };
  }
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  407: "Proxy Authentication Required",
  431: "Request Header Fields Too Large",
  502: "Bad Gateway",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/** A complete error response that says why in its body and its Proxy-Status header. */
export function errorResponse(status: number, message: string, proxyStatus: string): Uint8Array {
  const body = new TextEncoder().encode(`relay: ${message}\n`);
  // An sf-string (RFC 8941) holds printable ASCII only, with " and \ escaped.
  const details = message.replace(/[^\x20-\x7e]/g, "?").replace(/["\\]/g, "\\$&");
  const lines = [
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}`,
    ...(status === 407 ? ['Proxy-Authenticate: Basic realm="relay"'] : []),
    `Proxy-Status: relay; error=${proxyStatus}; details="${details}"`,
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${body.length}`,
    "Connection: close",
    "",
    "",
  ];
  const head = latin1(lines.join("\r\n"));
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

/**
 * Reads a request head and says what it asks for, after checking `auth` (`Proxy-Authorization:
 * Basic`) when set. Resolves null when the client hung up first; throws ProxyRefusal after
 * writing the error response.
 */
export async function httpHandshake(
  reader: HandshakeReader,
  write: (bytes: Uint8Array) => Promise<void>,
  auth: ProxyCredentials | undefined,
): Promise<ProxyRequest | null> {
  const refuse = async (error: HttpProxyError): Promise<never> => {
    await write(errorResponse(error.status, error.message, error.proxyStatus)).catch(() => {});
    throw new ProxyRefusal(`HTTP ${error.status}: ${error.message}`);
  };
  let head: RequestHead | null;
  try {
    head = await reader.next(parseRequestHead);
  } catch (error) {
    if (error instanceof HttpProxyError) return refuse(error);
    if (error instanceof HandshakeTooLarge) {
      return refuse(new HttpProxyError(431, `request head too large (${error.message})`));
    }
    throw error;
  }
  if (!head) return null;
  if (auth) {
    const given = head.headers.find(([name]) => name.toLowerCase() === "proxy-authorization");
    const credentials = given && parseBasic(given[1]);
    if (!credentials || !credentialsMatch(auth, credentials.user, credentials.password)) {
      return refuse(
        new HttpProxyError(
          407,
          credentials
            ? `wrong username or password (user ${JSON.stringify(credentials.user)})`
            : "Proxy-Authorization: Basic is required",
        ),
      );
    }
  }
  try {
    return proxyRequestOf(head);
  } catch (error) {
    if (error instanceof HttpProxyError) return refuse(error);
    throw error;
  }
}

/**
 * Each byte as the character of that code: a head's octets survive the trip through text
 * unchanged (TextDecoder's "latin1" is windows-1252, which remaps 0x80–0x9f).
 */
function fromLatin1(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

/** Text whose characters are all below 256, as those bytes (the head's own encoding). */
function latin1(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}
