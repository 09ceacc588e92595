/** The proxy's credentials check, shared by SOCKS5 (RFC 1929) and HTTP (`Basic`). */
import type { ProxyCredentials } from "../plan.ts";

const encoder = new TextEncoder();

/**
 * Whether `user` and `password` are the expected ones, in time that does not depend on where
 * they first differ (a guess does not learn a prefix from how fast it was refused).
 */
export function credentialsMatch(
  expected: ProxyCredentials,
  user: string,
  password: string,
): boolean {
  // Both compared whatever the first says, for the same reason.
  return (difference(expected.user, user) | difference(expected.password, password)) === 0;
}

/** 0 when `a` and `b` are the same text, after looking at every byte of both. */
function difference(a: string, b: string): number {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff;
}

/**
 * The user and password of a `Basic` credentials header value (RFC 7617: base64 of
 * `user:password`, split at the first colon), or undefined when it is not one.
 */
export function parseBasic(value: string): ProxyCredentials | undefined {
  const match = /^basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i.exec(value);
  if (!match) return undefined;
  let text: string;
  try {
    const binary = atob(match[1]);
    text = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
  } catch {
    return undefined;
  }
  const colon = text.indexOf(":");
  if (colon < 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
