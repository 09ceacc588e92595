/** Words a failed bind as the one-line usage error the user acts on. */
import { UsageError } from "../errors.ts";
import { formatHostPort } from "../net/address.ts";
import type { Protocol } from "../net/types.ts";

/** Turns the error from binding `hostname:port/protocol` into a {@link UsageError}. */
export function bindError(
  error: unknown,
  hostname: string,
  port: number,
  protocol: Protocol,
): UsageError {
  const where = `${formatHostPort(hostname, port)}/${protocol}`;
  const reason = error instanceof Deno.errors.AddrInUse
    ? "the address is already in use (choose another local port, or :PORT for a free one)"
    : error instanceof Deno.errors.AddrNotAvailable
    ? "no such address on this machine (see --address)"
    : error instanceof Deno.errors.PermissionDenied
    ? "permission denied (ports below 1024 need privileges)"
    : error instanceof Error
    ? error.message
    : String(error);
  return new UsageError(`cannot listen on ${where}: ${reason}`, { cause: error });
}
