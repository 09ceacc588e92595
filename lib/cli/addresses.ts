/** `-l/--address`: the local addresses to listen on. */
import { UsageError } from "../errors.ts";
import { isIP, stripBrackets } from "../net/address.ts";

/** Used when no `--address` is given (krelay's and the plan's default). */
export const DEFAULT_ADDRESSES: readonly string[] = ["127.0.0.1"];

/**
 * Parses every `--address` value (each may be a comma list) into distinct IP literals, in
 * order. `localhost` means both 127.0.0.1 and ::1, as in kubectl; other names are refused,
 * because resolving them would consult the host's resolver.
 */
export function parseAddresses(values: readonly string[]): string[] {
  if (values.length === 0) return [...DEFAULT_ADDRESSES];
  const addresses = new Set<string>();
  for (const value of values) {
    for (const item of value.split(",")) {
      const text = item.trim();
      if (text === "localhost") {
        addresses.add("127.0.0.1").add("::1");
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
