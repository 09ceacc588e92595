/**
 * Target spellings: krelay's (`svc/x`, `host/x`, `ip/x`), kubectl's (`service/x`,
 * `deployments.apps/x`, …) and a bare name, which means a pod.
 */
import { UsageError } from "../errors.ts";
import type { TargetKind, TargetRef } from "../plan.ts";
import { isHostname, isIP, stripBrackets } from "../net/address.ts";

// Every resource spelling kubectl accepts for the kinds relay forwards to.
const KIND_SPELLINGS: Record<string, TargetKind> = {
  pod: "pod",
  pods: "pod",
  po: "pod",
  svc: "svc",
  service: "svc",
  services: "svc",
  deploy: "deploy",
  deployment: "deploy",
  deployments: "deploy",
  sts: "sts",
  statefulset: "sts",
  statefulsets: "sts",
  ds: "ds",
  daemonset: "ds",
  daemonsets: "ds",
  rs: "rs",
  replicaset: "rs",
  replicasets: "rs",
  host: "host",
  ip: "ip",
};

// The API group each kind lives in, for `kind.group` and `kind.version.group` spellings.
const KIND_GROUPS: Partial<Record<TargetKind, string[]>> = {
  pod: [""],
  svc: [""],
  deploy: ["apps", "extensions"],
  sts: ["apps"],
  ds: ["apps", "extensions"],
  rs: ["apps", "extensions"],
};

const KNOWN_KINDS = "pod/, svc/, deploy/, sts/, ds/, rs/, host/ or ip/";

// A DNS-1123 subdomain: what Kubernetes allows as a pod or workload name.
const OBJECT_NAME = /^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$/;

/** Maps `deployments.v1.apps` and friends to a kind, or undefined when unknown. */
export function parseKind(spelling: string): TargetKind | undefined {
  const [resource, ...rest] = spelling.toLowerCase().split(".");
  const kind = KIND_SPELLINGS[resource];
  if (!kind || rest.length === 0) return kind;
  const groups = KIND_GROUPS[kind];
  if (!groups) return undefined;
  // kubectl writes the core group as an empty suffix (`service.`) or `v1.` (`pods.v1.`).
  const group = rest[rest.length - 1];
  const version = rest.length === 2 ? rest[0] : undefined;
  if (rest.length > 2 || (version !== undefined && !/^v\d+(?:(?:alpha|beta)\d+)?$/.test(version))) {
    return undefined;
  }
  if (groups.includes(group)) return kind;
  if (rest.length === 1 && groups.includes("") && /^v\d+$/.test(group)) return kind;
  return undefined;
}

/**
 * Parses a target as written on the command line or in a targets file.
 * `namespace` is attached unless the kind is host/ or ip/, which live outside namespaces.
 */
export function parseTargetRef(text: string, namespace?: string): TargetRef {
  const slash = text.indexOf("/");
  let kind: TargetKind;
  let name: string;
  if (slash < 0) {
    kind = "pod";
    name = text;
  } else {
    const spelling = text.slice(0, slash);
    const parsed = parseKind(spelling);
    if (!parsed) {
      throw new UsageError(
        `invalid target "${text}": unknown kind "${spelling}", expected ${KNOWN_KINDS}`,
      );
    }
    kind = parsed;
    name = text.slice(slash + 1);
  }
  if (name === "") {
    throw new UsageError(`invalid target "${text}": the name after "/" is missing`);
  }
  validateName(kind, name, text);
  if (kind === "ip") name = stripBrackets(name);
  const ref: TargetRef = { kind, name };
  // A host/ short name is a Service's in that namespace, as `web` is from a pod there.
  if (namespace !== undefined && kind !== "ip") ref.namespace = namespace;
  return ref;
}

function validateName(kind: TargetKind, name: string, text: string): void {
  if (kind === "ip") {
    if (!isIP(stripBrackets(name))) {
      throw new UsageError(
        `invalid target "${text}": "${name}" is not an IP address, expected an IPv4 or IPv6 ` +
          `literal (use host/ for names)`,
      );
    }
  } else if (kind === "host") {
    if (!isHostname(name) && !isIP(stripBrackets(name))) {
      throw new UsageError(`invalid target "${text}": "${name}" is not a valid hostname`);
    }
  } else if (name.length > 253 || !OBJECT_NAME.test(name)) {
    throw new UsageError(
      `invalid target "${text}": "${name}" is not a valid ${kind} name ` +
        `(lowercase letters, digits, "-" and ".")`,
    );
  }
}

// A DNS-1123 label: what Kubernetes allows as a namespace name.
const NAMESPACE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** Checks a namespace given to `flag` (`-n`, `--agent-namespace`) and returns it. */
export function parseNamespace(text: string, flag: string): string {
  if (!NAMESPACE.test(text)) {
    throw new UsageError(
      `invalid ${flag} ${JSON.stringify(text)}: expected a namespace name ` +
        `(lowercase letters, digits and "-", at most 63)`,
    );
  }
  return text;
}
