/** SHA-256 checksums of release assets, in the format `sha256sum` writes and `sha256sum -c` reads. */

/** The lower-case hex SHA-256 of `data`. */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `SHA256SUMS` text: one `<hex>  <name>` line per file (two spaces: text mode), sorted by name. */
export function formatChecksums(sums: ReadonlyMap<string, string>): string {
  return [...sums.keys()].sort().map((name) => `${sums.get(name)}  ${name}\n`).join("");
}

/** Reads `SHA256SUMS` text back into name → hex; accepts sha256sum's binary-mode `*name` too. */
export function parseChecksums(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line.trimEnd());
    if (m) sums.set(m[2], m[1]);
  }
  return sums;
}
