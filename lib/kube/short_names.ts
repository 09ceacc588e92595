/**
 * A one-label name (`web`) given for one namespace, as the agent must ask its resolver for it
 * when the agent runs in another.
 */
import { isIP } from "../net/address.ts";

/**
 * Short names are relative to `namespace` (`-n`): the agent's resolver searches its own
 * namespace first, so when the agent runs in another one (`--agent-namespace`, or a targets
 * file line's `-n`) a one-label name gets `.NAMESPACE.svc`, which the cluster's search
 * domains complete.
 */
export function qualifier(namespace: string, agentNamespace: string): (host: string) => string {
  if (namespace === agentNamespace) return (host) => host;
  return (host) =>
    host.includes(".") || isIP(host) || host.toLowerCase() === "localhost"
      ? host
      : `${host}.${namespace}.svc`;
}
