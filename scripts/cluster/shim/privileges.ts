/**
 * What a container runtime applies of a container's securityContext, as a `setpriv` prefix:
 * its group (`runAsGroup`, container then pod) and its capabilities (the runtime's default
 * set, less `drop`, plus `add`). `runAsUser` is not applied: the shim's images are host
 * commands that read the repository and Deno's cache, which belong to root.
 */
import type { ContainerSpec } from "./types.ts";

/** containerd's and Docker's default capability set for a container. */
const RUNTIME_DEFAULT = [
  "AUDIT_WRITE",
  "CHOWN",
  "DAC_OVERRIDE",
  "FOWNER",
  "FSETID",
  "KILL",
  "MKNOD",
  "NET_BIND_SERVICE",
  "NET_RAW",
  "SETFCAP",
  "SETGID",
  "SETPCAP",
  "SETUID",
  "SYS_CHROOT",
];

/** The pod-level securityContext fields that containers inherit. */
export interface PodSecurity {
  runAsGroup?: number;
}

/** The capabilities a container runs with. */
export function capabilitiesOf(spec: ContainerSpec): string[] {
  const caps = spec.securityContext?.capabilities;
  const drop = new Set((caps?.drop ?? []).map(normalise));
  const kept = drop.has("ALL") ? [] : RUNTIME_DEFAULT.filter((c) => !drop.has(c));
  return [...new Set([...kept, ...(caps?.add ?? []).map(normalise)])].sort();
}

/** argv that runs the rest of a command line with the container's group and capabilities. */
export function privilegesPrefix(spec: ContainerSpec, pod: PodSecurity = {}): string[] {
  const caps = capabilitiesOf(spec).map((c) => `+${c.toLowerCase()}`);
  const prefix = ["setpriv", "--inh-caps=-all", `--bounding-set=${["-all", ...caps].join(",")}`];
  const gid = spec.securityContext?.runAsGroup ?? pod.runAsGroup;
  if (gid !== undefined) prefix.push(`--regid=${gid}`, "--clear-groups");
  return prefix;
}

function normalise(capability: string): string {
  return capability.toUpperCase().replace(/^CAP_/, "");
}
