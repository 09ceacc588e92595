/**
 * Pod sysctls, as a kubelet admits them: the safe ones (namespaced, harmless to the node) are
 * allowed and the rest make the kubelet fail the pod with SysctlForbidden. The shim applies them
 * in the pod's network namespace, so it takes only the safe `net.ipv4.*` ones; kernel.* ones
 * would need an IPC namespace the shim does not make, and are refused here too.
 */

/** The kubelet's safe `net.ipv4.*` sysctls (pkg/kubelet/sysctl/safe_sysctls.go, 1.33). */
const SAFE_SYSCTLS: ReadonlySet<string> = new Set([
  "net.ipv4.ip_local_port_range",
  "net.ipv4.ip_local_reserved_ports",
  "net.ipv4.ip_unprivileged_port_start",
  "net.ipv4.ping_group_range",
  "net.ipv4.tcp_fin_timeout",
  "net.ipv4.tcp_keepalive_intvl",
  "net.ipv4.tcp_keepalive_probes",
  "net.ipv4.tcp_keepalive_time",
  "net.ipv4.tcp_rmem",
  "net.ipv4.tcp_syncookies",
  "net.ipv4.tcp_wmem",
]);

/** One `spec.securityContext.sysctls` entry. */
export interface Sysctl {
  name: string;
  value: string;
}

/** The sysctl's dotted name (the API also takes `net/ipv4/…`). */
export function sysctlName(name: string): string {
  return name.replaceAll("/", ".");
}

/** The kubelet's rejection of a pod with these sysctls, or undefined when it admits them. */
export function sysctlRejection(
  sysctls: readonly Sysctl[],
): { reason: string; message: string } | undefined {
  const forbidden = sysctls.find((s) => !SAFE_SYSCTLS.has(sysctlName(s.name)));
  if (forbidden === undefined) return undefined;
  return {
    reason: "SysctlForbidden",
    message: `Pod forbidden sysctl: "${forbidden.name}" not allowlisted`,
  };
}
