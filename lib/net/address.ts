/**
 * IP literals and hostnames: checks, and the byte forms the wire protocol carries. Nothing
 * here consults a resolver.
 */

/**
 * kubectl's `localhost` as a listen address: 127.0.0.1 and ::1. 127.0.0.1 must bind; ::1 is
 * left out when it cannot (a machine without IPv6, or the port taken there), so `localhost`
 * works wherever kubectl's does, and a port taken on 127.0.0.1 is still an error.
 */
export const LOCALHOST = "localhost";

/** The 4 bytes of a dotted-quad IPv4 literal (no leading zeros), or null if `s` is not one. */
export function parseIPv4(s: string): Uint8Array | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return null;
    const n = Number(parts[i]);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

/**
 * The 16 bytes of an IPv6 literal (with `::` and an optional trailing IPv4, brackets allowed,
 * no zone), or null.
 */
export function parseIPv6(input: string): Uint8Array | null {
  const s = stripBrackets(input);
  if (!s.includes(":") || s.includes("%")) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string): number[] | null => {
    if (part === "") return [];
    const out: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      if (i === pieces.length - 1 && p.includes(".")) {
        const v4 = parseIPv4(p);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) out.push(parseInt(p, 16));
      else return null;
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...new Array(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/** Dotted-quad text for 4 address bytes. */
export function formatIPv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** RFC 5952 text for 16 address bytes (longest zero run of ≥2 groups becomes `::`). */
export function formatIPv6(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[2 * i] << 8) | b[2 * i + 1]);
  let bestAt = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (bestAt < 0) return hex(g);
  return `${hex(g.slice(0, bestAt))}::${hex(g.slice(bestAt + bestLen))}`;
}

/**
 * Any IP literal as 16 bytes (IPv4 as `::ffff:a.b.c.d`), so `::ffff:1.2.3.4` and `1.2.3.4`
 * compare equal; null for anything else.
 */
export function addressBytes(address: string): Uint8Array | null {
  const v4 = parseIPv4(address);
  if (v4) return Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4);
  return parseIPv6(address);
}

/** Whether `address` (an IP literal) is loopback: 127.0.0.0/8, ::1, or IPv4-mapped 127/8. */
export function isLoopback(address: string): boolean {
  const b = addressBytes(stripBrackets(address));
  if (!b) return false;
  const zeros = (to: number) => b.subarray(0, to).every((x) => x === 0);
  if (zeros(10) && b[10] === 0xff && b[11] === 0xff) return b[12] === 127;
  return zeros(15) && b[15] === 1;
}

/** Whether `text` is a dotted-quad IPv4 address (no leading zeros, each part ≤ 255). */
export function isIPv4(text: string): boolean {
  return parseIPv4(text) !== null;
}

/** Whether `text` is an IPv6 address, without brackets or zone. */
export function isIPv6(text: string): boolean {
  return !text.startsWith("[") && parseIPv6(text) !== null;
}

/** Whether `text` is an IPv4 or IPv6 literal. */
export function isIP(text: string): boolean {
  return isIPv4(text) || isIPv6(text);
}

/** `[::1]` → `::1`; anything else unchanged. */
export function stripBrackets(text: string): string {
  return text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
}

// RFC 1123 hostnames; "_" is tolerated because in-cluster names (SRV-style) use it.
const LABEL = /^[a-zA-Z0-9_](?:[a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?$/;

/** Whether `text` is a syntactically valid hostname (a trailing dot allowed). */
export function isHostname(text: string): boolean {
  const name = text.endsWith(".") ? text.slice(0, -1) : text;
  if (name.length === 0 || name.length > 253) return false;
  return name.split(".").every((label) => LABEL.test(label));
}

/** `host:port`, bracketing an IPv6 literal. */
export function formatHostPort(host: string, port: number | string): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
