/**
 * What shell completion asks the cluster for, as kubectl's does: namespaces after `-n`, and
 * the names of a kind's objects after `pod/`, `svc/`, `deploy/`… (a target, or `--target`). The
 * words already typed say which kubeconfig, context, cluster flags and namespace to ask.
 */
import type { Kube } from "./kube/config.ts";
import type { KubeOverrides } from "./plan.ts";

/** Target kinds offered as the start of a target word, in the order shown. */
export const TARGET_KINDS = ["pod/", "svc/", "deploy/", "sts/", "ds/", "rs/", "host/", "ip/"];

/** The kinds `--target` takes. */
const TARGET_FLAG_KINDS = ["pod/", "deploy/", "sts/", "ds/", "rs/", "svc/"];

/** Each spelling of a kind relay lists, with its collection's path under a namespace. */
const COLLECTIONS: Record<string, string> = {
  ...spellings(["pod", "pods", "po"], "/api/v1", "pods"),
  ...spellings(["svc", "service", "services"], "/api/v1", "services"),
  ...spellings(["deploy", "deployment", "deployments"], "/apis/apps/v1", "deployments"),
  ...spellings(["sts", "statefulset", "statefulsets"], "/apis/apps/v1", "statefulsets"),
  ...spellings(["ds", "daemonset", "daemonsets"], "/apis/apps/v1", "daemonsets"),
  ...spellings(["rs", "replicaset", "replicasets"], "/apis/apps/v1", "replicasets"),
};

function spellings(names: string[], base: string, plural: string): Record<string, string> {
  return Object.fromEntries(names.map((name) => [name, `${base}/namespaces/NS/${plural}`]));
}

/** What the word being completed is, and where to ask. */
export interface CompletionQuery {
  /** `namespaces`; `names` of `kind`'s objects (`kind/NAME` values); `kinds` to start a target. */
  wants: "namespaces" | "names" | "kinds";
  /** As the user spelled it, without the slash: `pod`, `deployment`. */
  kind?: string;
  /** For `kinds`: which are offered. */
  kinds?: string[];
  kubeconfig?: string;
  context?: string;
  namespace?: string;
  /** kubectl's flags over the kubeconfig among the typed words (`--cluster`, `-s`, …). */
  overrides?: KubeOverrides;
}

/** The typed flags that say which cluster to ask, and where each goes in the query. */
const CLUSTER_FLAGS: Record<string, keyof KubeOverrides> = {
  "--cluster": "cluster",
  "--user": "user",
  "-s": "server",
  "--server": "server",
  "--token": "token",
  "--certificate-authority": "certificateAuthority",
  "--client-certificate": "clientCertificate",
  "--client-key": "clientKey",
};

/**
 * What `words` (the command line after `relay`, the last being the word under the cursor, maybe
 * empty) completes, or undefined when the cluster has nothing to say about it (a port, a flag).
 */
export function completionQuery(words: readonly string[]): CompletionQuery | undefined {
  const flags: Record<string, string> = {};
  for (let i = 0; i < words.length - 1; i++) {
    const match = /^(-[ns]|--[a-z-]+)(?:=(.*))?$/.exec(words[i]);
    const known = match &&
      (/^(-n|--namespace|--context|--kubeconfig)$/.test(match[1]) || match[1] in CLUSTER_FLAGS);
    if (!known) continue;
    const value = match[2] ?? words[++i];
    if (value !== undefined && i < words.length - 1) flags[match[1]] = value;
  }
  const where: Pick<CompletionQuery, "kubeconfig" | "context" | "namespace" | "overrides"> = {};
  if (flags["--kubeconfig"] !== undefined) where.kubeconfig = flags["--kubeconfig"];
  if (flags["--context"] !== undefined) where.context = flags["--context"];
  const namespace = flags["-n"] ?? flags["--namespace"];
  if (namespace !== undefined) where.namespace = namespace;
  for (const [flag, field] of Object.entries(CLUSTER_FLAGS)) {
    if (flags[flag] !== undefined) (where.overrides ??= {})[field] = flags[flag];
  }
  const current = words.at(-1) ?? "";
  const previous = words.at(-2);
  const valueOf = (names: string[]) =>
    names.includes(previous ?? "")
      ? current
      : names.map((n) => current.startsWith(`${n}=`) ? current.slice(n.length + 1) : undefined)
        .find((v) => v !== undefined);
  if (valueOf(["-n", "--namespace"]) !== undefined) return { wants: "namespaces", ...where };
  const target = valueOf(["--target"]);
  const word = target ?? (current.startsWith("-") || isFlagValue(previous) ? undefined : current);
  if (word === undefined) return undefined;
  const slash = word.indexOf("/");
  if (slash < 0) {
    return /^[a-z]*$/.test(word)
      ? { wants: "kinds", kinds: target !== undefined ? TARGET_FLAG_KINDS : TARGET_KINDS, ...where }
      : undefined;
  }
  const kind = word.slice(0, slash);
  return COLLECTIONS[kind] ? { wants: "names", kind, ...where } : undefined;
}

/** Whether the word after `flag` is its value rather than a target (flags relay takes a value for). */
function isFlagValue(flag: string | undefined): boolean {
  return flag !== undefined && /^-[a-zA-Z]$|^--[a-z][a-z.-]+$/.test(flag) &&
    !BOOLEAN_FLAGS.has(flag);
}

const BOOLEAN_FLAGS = new Set([
  "--steal",
  "--mirror",
  "-v",
  "--verbose",
  "-q",
  "--quiet",
  "-h",
  "--help",
  "--insecure-skip-tls-verify",
]);

/**
 * The values the cluster offers for `query`: namespace names, or `kind/NAME` for the objects in
 * the namespace. Completion stays quiet: an unreachable cluster or a refusal offers nothing.
 */
export async function clusterCandidates(
  query: CompletionQuery,
  connect: (query: CompletionQuery) => Promise<Kube>,
): Promise<string[]> {
  if (query.wants === "kinds") return query.kinds ?? [];
  let kube: Kube | undefined;
  try {
    kube = await connect(query);
    const path = query.wants === "namespaces"
      ? "/api/v1/namespaces"
      : COLLECTIONS[query.kind!].replace("/NS/", `/${encodeURIComponent(kube.namespace)}/`);
    const list = await kube.api.request<{ items?: { metadata?: { name?: string } }[] }>(
      "GET",
      path,
      { query: { limit: "500" } },
    );
    const names = (list.items ?? []).map((item) => item.metadata?.name ?? "").filter(Boolean);
    return query.wants === "names" ? names.map((name) => `${query.kind}/${name}`) : names;
  } catch {
    return [];
  } finally {
    kube?.close();
  }
}
