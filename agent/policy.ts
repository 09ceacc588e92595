/**
 * The agent's destination policy: it opens only what the session named when it created the
 * agent (DestinationRule, lib/contract.ts), so a holder of the token cannot use it to reach
 * anything else. Loopback and link-local addresses (the agent's own port, other processes
 * of its pod, cloud metadata) are refused after resolution too, unless a rule names them.
 */
import type { DestinationRule } from "../lib/contract.ts";
import { addressBytes, formatHostPort, isIP, stripBrackets } from "../lib/net/address.ts";
import { OpenError, type OpenRequest } from "../lib/tunnel/types.ts";

/** Checks opens against the agent's rules; `any` allows every destination but the guarded. */
export class DestinationPolicy {
  constructor(private readonly rules: readonly DestinationRule[] | "any" | undefined) {}

  /**
   * The rule that allows `request` (null under `any`, undefined when unrestricted); throws
   * OpenError `denied` when none does.
   */
  admit(request: OpenRequest): DestinationRule | null | undefined {
    if (this.rules === undefined) return undefined;
    if (this.rules === "any") return null;
    const host = normalise(request.host);
    const rule = this.rules.find((r) =>
      r.protocol === request.protocol && (r.port === 0 || r.port === request.port) &&
      (r.host === "*" || normalise(r.host) === host)
    );
    if (!rule) {
      throw new OpenError(
        "denied",
        `${request.protocol} ${formatHostPort(request.host, request.port)} is not a ` +
          `destination this session named (the agent's destination policy)`,
      );
    }
    return rule;
  }

  /**
   * The addresses `request` may connect to among those its host resolved to: loopback and
   * link-local ones only when `rule` names them. Throws `denied` when none is left.
   */
  screen(
    request: OpenRequest,
    rule: DestinationRule | null | undefined,
    addresses: string[],
  ): string[] {
    if (rule === undefined) return addresses;
    const explicit = rule !== null && rule.host !== "*" &&
      (rule.host === "localhost" || (isIP(stripBrackets(rule.host)) && guarded(rule.host)));
    if (explicit) return addresses;
    const allowed = addresses.filter((address) => !guarded(address));
    if (allowed.length === 0) {
      throw new OpenError(
        "denied",
        `${formatHostPort(request.host, request.port)} is ${
          addresses.join(", ")
        }: a loopback or link-local address, which the agent opens only when named as ` +
          `ip/ADDRESS (its own port, its pod's other processes, cloud metadata)`,
      );
    }
    return allowed;
  }
}

/** Whether `address` is loopback, unspecified or link-local (IPv4, IPv6, IPv4-mapped). */
export function guarded(address: string): boolean {
  const b = addressBytes(stripBrackets(address));
  if (!b) return false;
  const zeros = (from: number, to: number) => b.subarray(from, to).every((x) => x === 0);
  if (zeros(0, 10) && b[10] === 0xff && b[11] === 0xff) {
    return b[12] === 127 || b[12] === 0 || (b[12] === 169 && b[13] === 254);
  }
  if (zeros(0, 15) && b[15] <= 1) return true; // :: and ::1
  if (b[0] === 0xfe && (b[1] & 0xc0) === 0x80) return true; // fe80::/10
  return normalise(address) === EC2_METADATA_V6;
}

/** fd00:ec2::254, the IPv6 address of EC2's metadata service. */
const EC2_METADATA_V6 = normalise("fd00:ec2::254");

/** A host as rules compare it: lower case, IPv6 in one spelling. */
function normalise(host: string): string {
  const bare = stripBrackets(host).toLowerCase();
  const bytes = isIP(bare) ? addressBytes(bare) : null;
  return bytes ? [...bytes].join(".") : bare.replace(/\.$/, "");
}
