/**
 * Small SOCKS5 and HTTP proxy clients for the proxy's tests (unit and end to end): what curl
 * does, plus what curl cannot (UDP ASSOCIATE), byte by byte so each reply can be checked.
 */

const encoder = new TextEncoder();

/** Reads exactly `n` bytes; fails naming `what` if the connection ends first. */
export async function readExactly(conn: Deno.Conn, n: number, what: string): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await conn.read(out.subarray(at));
    if (got === null) throw new Error(`${what}: the connection ended after ${at} of ${n} bytes`);
    at += got;
  }
  return out;
}

/** Reads until the peer finishes sending. */
export async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** Writes all of `bytes`. */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** A SOCKS5 address: ATYP 3 with the name, or ATYP 1 for a dotted quad. */
export function socksAddress(host: string, port: number): number[] {
  const v4 = /^\d+\.\d+\.\d+\.\d+$/.test(host) ? host.split(".").map(Number) : undefined;
  const address = v4 ? [1, ...v4] : [3, host.length, ...encoder.encode(host)];
  return [...address, port >> 8, port & 0xff];
}

/** What a SOCKS5 handshake ended with. */
export interface SocksResult {
  conn: Deno.TcpConn;
  /** The method the proxy chose (0xff: none acceptable). */
  method: number;
  /** RFC 1929 status when a username was sent (0 is success). */
  authStatus?: number;
  /** The request's reply code, when the handshake got that far. */
  reply?: number;
  /** BND.ADDR/BND.PORT of the reply (IPv4 replies only). */
  bound?: { host: string; port: number };
}

/**
 * Connects to the proxy at 127.0.0.1:`port` and sends a SOCKS5 `command` (1 CONNECT,
 * 3 UDP ASSOCIATE) for host:port, with credentials when given; the connection stays open.
 */
export async function socksRequest(
  port: number,
  command: number,
  host: string,
  targetPort: number,
  credentials?: { user: string; password: string },
): Promise<SocksResult> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await writeAll(conn, Uint8Array.of(5, 1, credentials ? 2 : 0));
  const [, method] = await readExactly(conn, 2, "SOCKS5 method");
  const result: SocksResult = { conn, method };
  if (method === 0xff) return result;
  if (method === 2) {
    const user = encoder.encode(credentials?.user ?? "");
    const password = encoder.encode(credentials?.password ?? "");
    await writeAll(conn, Uint8Array.of(1, user.length, ...user, password.length, ...password));
    result.authStatus = (await readExactly(conn, 2, "SOCKS5 auth status"))[1];
    if (result.authStatus !== 0) return result;
  }
  await writeAll(conn, Uint8Array.of(5, command, 0, ...socksAddress(host, targetPort)));
  const reply = await readExactly(conn, 4, "SOCKS5 reply");
  result.reply = reply[1];
  const rest = await readExactly(conn, reply[3] === 1 ? 6 : reply[3] === 4 ? 18 : 0, "BND");
  if (reply[3] === 1) {
    result.bound = { host: [...rest.subarray(0, 4)].join("."), port: (rest[4] << 8) | rest[5] };
  }
  return result;
}

/** A UDP datagram for an association: the RFC 1928 header, then `payload`. */
export function socksDatagram(host: string, port: number, payload: Uint8Array): Uint8Array {
  return Uint8Array.of(0, 0, 0, ...socksAddress(host, port), ...payload);
}

/** The header of a reply datagram split off: where it came from, and its data. */
export function parseSocksDatagram(datagram: Uint8Array): { from: string; payload: Uint8Array } {
  const type = datagram[3];
  let at = 4;
  let host: string;
  if (type === 1) {
    host = [...datagram.subarray(4, 8)].join(".");
    at = 8;
  } else if (type === 3) {
    host = new TextDecoder().decode(datagram.subarray(5, 5 + datagram[4]));
    at = 5 + datagram[4];
  } else {
    throw new Error(`reply datagram with address type ${type}`);
  }
  const port = (datagram[at] << 8) | datagram[at + 1];
  return { from: `${host}:${port}`, payload: datagram.subarray(at + 2) };
}

/** Sends `text` to the HTTP proxy at 127.0.0.1:`port` and reads the whole answer as text. */
export async function httpExchange(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(conn, encoder.encode(text));
    return new TextDecoder().decode(await readToEnd(conn));
  } finally {
    conn.close();
  }
}

/** Rejects with `what` unless `promise` settles within `ms`: a hang fails with a reason. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
