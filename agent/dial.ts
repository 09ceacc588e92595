/**
 * Outbound TCP dials for the agent: resolve (with the pod's resolver), connect, and turn
 * every failure into an OpenError with the code the client shows.
 */
import { describeError } from "../lib/errors.ts";
import { formatHostPort, isIP, stripBrackets } from "../lib/net/address.ts";
import type { BufferPool } from "../lib/net/buffer_pool.ts";
import { connDuplex } from "../lib/net/socket.ts";
import type { Duplex } from "../lib/net/types.ts";
import { OpenError, type OpenFailure } from "../lib/tunnel/types.ts";

/** Resolves a hostname to IP literals, in the order to try them. */
export type Resolver = (hostname: string) => Promise<string[]>;

/** Makes one TCP connection to an IP literal. */
export type TcpConnector = (
  options: { hostname: string; port: number; signal: AbortSignal },
) => Promise<Deno.Conn>;

/** How the agent reaches destinations; each part injectable for tests. */
export interface Dialer {
  resolve: Resolver;
  connect: TcpConnector;
  /** Give up on one connect attempt after this long (ms). */
  connectTimeoutMs: number;
}

/**
 * The pod's resolver: getaddrinfo, so /etc/hosts, search domains and ndots apply exactly
 * as for any other program in the pod (a bare Service name resolves). node:dns is imported at
 * the first name to resolve: it brings up Deno's Node compatibility layer, 5–6 MB an agent
 * that only dials addresses does without.
 */
export const systemResolver: Resolver = async (hostname) => {
  const { lookup } = await (nodeDns ??= import("node:dns/promises"));
  const found = await lookup(hostname, { all: true, verbatim: true });
  return found.map((a) => a.address);
};
let nodeDns: Promise<typeof import("node:dns/promises")> | undefined;

/**
 * Deno's TCP connect, with no further name resolution (it is only given IP literals). Nagle
 * off: the tunnel already batches, and a small reply held back for an ACK would add a
 * delayed-ACK wait to every request/response round trip through the agent.
 */
export const denoConnector: TcpConnector = async ({ hostname, port, signal }) => {
  const conn = await Deno.connect({ hostname, port, signal, transport: "tcp" });
  conn.setNoDelay(true);
  return conn;
};

/** The addresses `host` stands for; a resolver failure is `no-such-host`. */
export async function resolveHost(host: string, resolve: Resolver): Promise<string[]> {
  const literal = stripBrackets(host);
  if (isIP(literal)) return [literal];
  let addresses: string[];
  try {
    addresses = await resolve(host);
  } catch (e) {
    throw new OpenError("no-such-host", `cannot resolve ${host}: ${describeError(e)}`);
  }
  if (addresses.length === 0) throw new OpenError("no-such-host", `${host} has no addresses`);
  return addresses;
}

/**
 * Connects to host:port over TCP, trying each address in turn; a Duplex with half-close whose
 * large reads are lent from `buffers`.
 */
export async function dialTcp(
  host: string,
  port: number,
  dialer: Dialer,
  buffers?: BufferPool,
  cancelled?: AbortSignal,
  /** Keeps the addresses the agent may connect to; throws when none is left. */
  screen: (addresses: string[]) => string[] = (a) => a,
): Promise<Duplex> {
  const addresses = screen(await resolveHost(host, dialer.resolve));
  let last: OpenError | null = null;
  for (const address of addresses) {
    // The client reset the stream before the answer: stop dialing for it.
    if (cancelled?.aborted) throw new OpenError("error", "the open was reset");
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), dialer.connectTimeoutMs);
    const onCancel = () => abort.abort();
    cancelled?.addEventListener("abort", onCancel, { once: true });
    try {
      const conn = await dialer.connect({ hostname: address, port, signal: abort.signal });
      return connDuplex(conn, buffers);
    } catch (e) {
      last = cancelled?.aborted
        ? new OpenError("error", "the open was reset")
        : abort.signal.aborted
        ? new OpenError("timeout", `connect to ${where(host, address, port)} timed out`)
        : dialFailure(e, where(host, address, port));
    } finally {
      clearTimeout(timer);
      cancelled?.removeEventListener("abort", onCancel);
    }
  }
  throw last!;
}

/** Maps a connect error to the OpenFailure the client will show. */
export function dialFailure(error: unknown, target: string): OpenError {
  const code = failureCode(error);
  return new OpenError(code, `connect to ${target}: ${describeError(error)}`);
}

function failureCode(error: unknown): OpenFailure {
  const e = Deno.errors;
  if (error instanceof e.ConnectionRefused) return "refused";
  if (error instanceof e.TimedOut) return "timeout";
  if (error instanceof e.NetworkUnreachable || error instanceof e.AddrNotAvailable) {
    return "unreachable";
  }
  if (error instanceof e.NotFound) return "no-such-host";
  if (error instanceof e.PermissionDenied || error instanceof e.NotCapable) return "forbidden";
  const text = describeError(error);
  if (/unreachable|no route to host/i.test(text)) return "unreachable";
  if (/refused/i.test(text)) return "refused";
  if (/timed? ?out/i.test(text)) return "timeout";
  if (/ENOTFOUND|EAI_|name or service not known|lookup/i.test(text)) return "no-such-host";
  return "error";
}

function where(host: string, address: string, port: number): string {
  const hostPort = formatHostPort(address, port);
  return host === address ? hostPort : `${host} (${hostPort})`;
}
