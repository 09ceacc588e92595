/** `-l/--address`: the local addresses to listen on. */
import { UsageError } from "../errors.ts";
import { isIP, LOCALHOST, stripBrackets } from "../net/address.ts";

/** Used when no `--address` is given: kubectl's default. */
export const DEFAULT_ADDRESSES: readonly string[] = [LOCALHOST];

/**
 * Parses every `--address` value (each may be a comma list) into distinct IP literals, in
 * order, and `localhost`, kept as it is: 127.0.0.1 and ::1 as in kubectl, where ::1 is bound
 * when it can be (see {@link LOCALHOST}). Other names are refused, because resolving them
 * would consult the host's resolver.
 */
export function parseAddresses(values: readonly string[]): string[] {
  if (values.length === 0) return [...DEFAULT_ADDRESSES];
  const addresses = new Set<string>();
  for (const value of values) {
    for (const item of value.split(",")) {
      const text = item.trim();
      if (text === LOCALHOST) {
        addresses.add(LOCALHOST);
        continue;
      }
      const ip = stripBrackets(text);
      if (text === "") {
        throw new UsageError(
          `invalid --address ${JSON.stringify(value)}: an empty address in the list`,
        );
      }
      if (!isIP(ip)) {
        throw new UsageError(
          `invalid --address ${JSON.stringify(text)}: expected an IP address or localhost`,
        );
      }
      addresses.add(ip);
    }
  }
  return [...addresses];
}
