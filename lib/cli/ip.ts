/** IP literal checks, done locally: nothing here may consult a resolver. */

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Whether `text` is a dotted-quad IPv4 address (no leading zeros, each part ≤ 255). */
export function isIPv4(text: string): boolean {
  const match = IPV4.exec(text);
  return match !== null &&
    match.slice(1).every((part) => Number(part) <= 255 && (part === "0" || !part.startsWith("0")));
}

/** Whether `text` is an IPv6 address, without brackets or zone. */
export function isIPv6(text: string): boolean {
  if (!text.includes(":") || !/^[0-9a-fA-F:.]+$/.test(text)) return false;
  // The URL parser implements the full IPv6 grammar (::, embedded IPv4) without any lookup.
  return URL.canParse(`http://[${text}]/`);
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
