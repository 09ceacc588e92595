/**
 * SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): the handshake, from a
 * client's bytes to the destination it asks for (the forward path's Destination) or to the
 * protocol's own error reply, and the UDP request header of UDP ASSOCIATE.
 *
 * Hand-written: neither Deno nor Node has a SOCKS server, and the handshake is a few
 * length-prefixed fields read off a socket whose remaining bytes are then spliced as they are.
 */
import type { Destination } from "../kube/resolve.ts";
import { formatIPv4, formatIPv6, isHostname, isIP, parseIPv4, parseIPv6 } from "../net/address.ts";
import type { ProxyCredentials } from "../plan.ts";
import type { OpenFailure } from "../tunnel/types.ts";
import { credentialsMatch } from "./auth.ts";
import { type HandshakeReader, ProxyRefusal } from "./reader.ts";

export type { Destination };

/** The SOCKS protocol version this speaks: the first byte of every SOCKS5 connection. */
export const SOCKS5 = 0x05;

/** Reply codes (RFC 1928 §6). */
export const REPLY = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  refused: 0x05,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

/** One of {@link REPLY}. */
export type ReplyCode = (typeof REPLY)[keyof typeof REPLY];

/** Authentication methods (RFC 1928 §3). */
export const METHOD = { none: 0x00, userPassword: 0x02, noneAcceptable: 0xff } as const;

const ATYP = { ipv4: 0x01, domain: 0x03, ipv6: 0x04 } as const;

/** A request the proxy refuses, with the reply code that says why. */
export class SocksError extends Error {
  override name = "SocksError";
  constructor(readonly reply: ReplyCode, message: string) {
    super(message);
  }
}

/** A parsed message and how many bytes it took. */
export interface Parsed {
  length: number;
}

/** The client's greeting: the authentication methods it offers. */
export interface Greeting extends Parsed {
  methods: number[];
}

/** The RFC 1929 sub-negotiation: what the client says it is. */
export interface Credentials extends Parsed, ProxyCredentials {}

/** What the client asks for; BIND is refused with `commandNotSupported`. */
export interface SocksRequest extends Parsed {
  command: "connect" | "udp-associate";
  destination: Destination;
}

/** The greeting, or undefined while incomplete. */
export function parseGreeting(bytes: Uint8Array): Greeting | undefined {
  if (bytes.length < 2) return undefined;
  if (bytes[0] !== SOCKS5) {
    throw new SocksError(REPLY.generalFailure, `SOCKS version ${bytes[0]}, expected 5`);
  }
  const length = 2 + bytes[1];
  if (bytes.length < length) return undefined;
  return { methods: [...bytes.subarray(2, length)], length };
}

/** The username/password request (RFC 1929 §2), or undefined while incomplete. */
export function parseCredentials(bytes: Uint8Array): Credentials | undefined {
  if (bytes.length < 2) return undefined;
  if (bytes[0] !== 0x01) {
    throw new SocksError(REPLY.generalFailure, `username/password version ${bytes[0]}, expected 1`);
  }
  const userEnd = 2 + bytes[1];
  if (bytes.length < userEnd + 1) return undefined;
  const length = userEnd + 1 + bytes[userEnd];
  if (bytes.length < length) return undefined;
  const text = new TextDecoder();
  return {
    user: text.decode(bytes.subarray(2, userEnd)),
    password: text.decode(bytes.subarray(userEnd + 1, length)),
    length,
  };
}

/** The request (RFC 1928 §4), or undefined while incomplete; a SocksError to refuse it. */
export function parseRequest(bytes: Uint8Array): SocksRequest | undefined {
  if (bytes.length < 4) return undefined;
  if (bytes[0] !== SOCKS5) {
    throw new SocksError(REPLY.generalFailure, `SOCKS version ${bytes[0]}, expected 5`);
  }
  const command = bytes[1] === 0x01 ? "connect" : bytes[1] === 0x03 ? "udp-associate" : undefined;
  if (!command) {
    const name = bytes[1] === 0x02 ? "BIND" : `command ${bytes[1]}`;
    throw new SocksError(REPLY.commandNotSupported, `${name} is not supported`);
  }
  const address = parseAddress(bytes, 3);
  if (!address) return undefined;
  return { command, destination: address.destination, length: address.end };
}

/** ATYP, address and port at `offset`, or undefined while incomplete. */
function parseAddress(
  bytes: Uint8Array,
  offset: number,
): { destination: Destination; end: number } | undefined {
  if (bytes.length <= offset) return undefined;
  const type = bytes[offset];
  let host: string;
  let at = offset + 1;
  if (type === ATYP.ipv4) {
    if (bytes.length < at + 4) return undefined;
    host = formatIPv4(bytes.subarray(at, at + 4));
    at += 4;
  } else if (type === ATYP.ipv6) {
    if (bytes.length < at + 16) return undefined;
    host = formatIPv6(bytes.subarray(at, at + 16));
    at += 16;
  } else if (type === ATYP.domain) {
    if (bytes.length < at + 1) return undefined;
    const end = at + 1 + bytes[at];
    if (bytes.length < end) return undefined;
    host = new TextDecoder().decode(bytes.subarray(at + 1, end));
    at = end;
    if (!isHostname(host) && !isIP(host)) {
      throw new SocksError(REPLY.hostUnreachable, `${JSON.stringify(host)} is not a hostname`);
    }
  } else {
    throw new SocksError(REPLY.addressTypeNotSupported, `address type ${type} is not supported`);
  }
  if (bytes.length < at + 2) return undefined;
  const port = (bytes[at] << 8) | bytes[at + 1];
  return { destination: { host, port }, end: at + 2 };
}

/** ATYP, address and port for `destination`: an IP literal as one, anything else a name. */
function encodeAddress({ host, port }: Destination): Uint8Array {
  const v4 = parseIPv4(host);
  const v6 = v4 ? null : parseIPv6(host);
  const name = v4 || v6 ? null : new TextEncoder().encode(host).subarray(0, 255);
  const address = v4
    ? [ATYP.ipv4, ...v4]
    : v6
    ? [ATYP.ipv6, ...v6]
    : [ATYP.domain, name!.length, ...name!];
  return Uint8Array.of(...address, port >> 8, port & 0xff);
}

/** A reply: `code`, and the address bound for the client (0.0.0.0:0 when none matters). */
export function encodeReply(
  code: ReplyCode,
  bound: Destination = { host: "0.0.0.0", port: 0 },
): Uint8Array {
  return Uint8Array.of(SOCKS5, code, 0x00, ...encodeAddress(bound));
}

/** A UDP datagram of an association: its header's fragment number, destination and data. */
export interface UdpDatagram {
  /** Non-zero: a fragment, which relay drops (fragmentation is optional, RFC 1928 §7). */
  fragment: number;
  destination: Destination;
  payload: Uint8Array;
}

/** A client's datagram split into header and data, or undefined when it is malformed. */
export function parseDatagram(bytes: Uint8Array): UdpDatagram | undefined {
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) return undefined;
  try {
    const address = parseAddress(bytes, 3);
    if (!address) return undefined;
    return {
      fragment: bytes[2],
      destination: address.destination,
      payload: bytes.subarray(address.end),
    };
  } catch {
    return undefined;
  }
}

/** A reply datagram for the client: the header naming where it came from, then the data. */
export function encodeDatagram(from: Destination, payload: Uint8Array): Uint8Array {
  const address = encodeAddress(from);
  const out = new Uint8Array(3 + address.length + payload.length);
  out.set(address, 3);
  out.set(payload, 3 + address.length);
  return out;
}

/** The reply for an open the agent refused (its OPEN_RESULT code); undefined: not an open's. */
export function replyForFailure(code: OpenFailure | undefined): ReplyCode {
  switch (code) {
    case "no-such-host":
    case "timeout":
      return REPLY.hostUnreachable;
    case "unreachable":
      return REPLY.networkUnreachable;
    case "refused":
      return REPLY.refused;
    case "forbidden":
    case "denied":
      return REPLY.notAllowed;
    default:
      return REPLY.generalFailure;
  }
}

/**
 * Runs the handshake up to the request: agrees on a method (username/password when `auth` is
 * set; without it, none, or any credentials for a client that offers only those), checks the
 * credentials and reads the request. Resolves with it, or null when the client hung up first;
 * throws ProxyRefusal after writing the refusal.
 */
export async function socksHandshake(
  reader: HandshakeReader,
  write: (bytes: Uint8Array) => Promise<void>,
  auth: ProxyCredentials | undefined,
): Promise<SocksRequest | null> {
  const refuse = async (reply: Uint8Array, message: string): Promise<never> => {
    await write(reply).catch(() => {});
    throw new ProxyRefusal(`SOCKS5: ${message}`);
  };
  let greeting: Greeting | null;
  try {
    greeting = await reader.next(parseGreeting);
  } catch (error) {
    if (!(error instanceof SocksError)) throw error;
    return refuse(Uint8Array.of(SOCKS5, METHOD.noneAcceptable), error.message);
  }
  if (!greeting) return null;
  const offers = (method: number) => greeting.methods.includes(method);
  const method = auth
    ? (offers(METHOD.userPassword) ? METHOD.userPassword : METHOD.noneAcceptable)
    : offers(METHOD.none)
    ? METHOD.none
    : offers(METHOD.userPassword)
    ? METHOD.userPassword
    : METHOD.noneAcceptable;
  if (method === METHOD.noneAcceptable) {
    const wanted = auth ? "username/password (--proxy-auth is set)" : "no authentication";
    return refuse(
      Uint8Array.of(SOCKS5, method),
      `no acceptable authentication method: the client offers ${
        greeting.methods.join(", ") || "none"
      }, relay wants ${wanted}`,
    );
  }
  await write(Uint8Array.of(SOCKS5, method));
  if (method === METHOD.userPassword) {
    let credentials: Credentials | null;
    try {
      credentials = await reader.next(parseCredentials);
    } catch (error) {
      if (!(error instanceof SocksError)) throw error;
      return refuse(Uint8Array.of(0x01, 0x01), error.message);
    }
    if (!credentials) return null;
    if (auth && !credentialsMatch(auth, credentials.user, credentials.password)) {
      return refuse(
        Uint8Array.of(0x01, 0x01),
        `wrong username or password (user ${JSON.stringify(credentials.user)})`,
      );
    }
    await write(Uint8Array.of(0x01, 0x00));
  }
  try {
    return await reader.next(parseRequest);
  } catch (error) {
    if (!(error instanceof SocksError)) throw error;
    return refuse(encodeReply(error.reply), error.message);
  }
}
