/**
 * Finding and reading the kubeconfig the way kubectl does: --kubeconfig, $KUBECONFIG (merged),
 * ~/.kube/config or the pod's service account.
 */
import {
  type Cluster,
  type Context,
  newClusters,
  newContexts,
  newUsers,
  type User,
} from "@kubernetes/client-node/dist/config_types.js";
import { parse as parseYaml } from "yaml";
import { UsageError } from "./errors.ts";

const SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount";

/** The kubeconfig's entries, merged as kubectl merges them, paths made absolute. */
export interface Kubeconfig {
  clusters: Cluster[];
  users: User[];
  contexts: Context[];
  currentContext: string;
  /** Where it came from, for messages about what it holds. */
  source: string;
}

/**
 * Read --kubeconfig, $KUBECONFIG, ~/.kube/config or the pod's service account; with
 * `optional` (the flags alone say where the cluster is), none at all is an empty kubeconfig.
 */
export function loadFiles(
  flag: string | undefined,
  env: (name: string) => string | undefined,
  { optional = false } = {},
): Kubeconfig {
  if (flag) {
    if (!exists(flag)) throw new UsageError(`kubeconfig ${flag} does not exist`);
    return { ...loadFile(flag), source: flag };
  }
  const list = env("KUBECONFIG");
  if (list) {
    const separator = Deno.build.os === "windows" ? ";" : ":";
    // kubectl skips entries that do not exist, as long as one does.
    const files = list.split(separator).filter((f) => f && exists(f));
    if (files.length === 0) {
      throw new UsageError(`none of the files in KUBECONFIG exists (${list})`);
    }
    return { ...mergeFiles(files), source: files.join(separator) };
  }
  const home = env("HOME") ?? env("USERPROFILE");
  const defaultFile = home ? `${home}/.kube/config` : undefined;
  if (defaultFile && exists(defaultFile)) return { ...loadFile(defaultFile), source: defaultFile };
  const host = env("KUBERNETES_SERVICE_HOST");
  if (host && exists(`${SERVICE_ACCOUNT}/token`)) {
    return inCluster(host, env("KUBERNETES_SERVICE_PORT") ?? "443");
  }
  if (optional) {
    return { clusters: [], users: [], contexts: [], currentContext: "", source: "none" };
  }
  throw new UsageError(
    "no kubeconfig found: pass --kubeconfig, set KUBECONFIG or create ~/.kube/config",
  );
}

type Entries = Omit<Kubeconfig, "source">;

function loadFile(file: string): Entries {
  const dir = dirname(file);
  try {
    const raw = (parseYaml(Deno.readTextFileSync(file)) ?? {}) as Record<string, unknown>;
    return {
      clusters: newClusters(raw.clusters).map((c) => ({ ...c, caFile: absolute(dir, c.caFile) })),
      users: withTokenFiles(newUsers(raw.users), raw.users, dir).map((u) => ({
        ...u,
        certFile: absolute(dir, u.certFile),
        keyFile: absolute(dir, u.keyFile),
      })),
      contexts: newContexts(raw.contexts),
      currentContext: typeof raw["current-context"] === "string" ? raw["current-context"] : "",
    };
  } catch (error) {
    throw new UsageError(`kubeconfig ${file} cannot be read: ${firstLine(error)}`, {
      cause: error,
    });
  }
}

/**
 * kubectl's kubeconfig spells a token file `tokenFile`; client-node's parser reads only
 * `token-file`, once. Such users go to client-node's file authenticator instead, which re-reads
 * the file (every minute, like client-go), so rotated tokens keep working.
 */
function withTokenFiles(users: User[], raw: unknown, dir: string): User[] {
  const files = new Map<string, string>();
  for (const entry of Array.isArray(raw) ? raw : []) {
    const path = entry?.user?.tokenFile;
    if (entry?.name && typeof path === "string" && path) {
      files.set(entry.name, absolute(dir, path)!);
    }
  }
  return users.map((user) => {
    const tokenFile = files.get(user.name);
    return tokenFile && !user.token && !user.authProvider
      ? { ...user, authProvider: { name: "tokenFile", config: { tokenFile } } }
      : user;
  });
}

/** The pod's service account, as client-go's in-cluster config reads it. */
function inCluster(host: string, port: string): Kubeconfig {
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  let namespace: string | undefined;
  try {
    namespace = Deno.readTextFileSync(`${SERVICE_ACCOUNT}/namespace`).trim() || undefined;
  } catch {
    // no namespace file: "default", as kubectl
  }
  return {
    clusters: [{
      name: "in-cluster",
      server,
      caFile: `${SERVICE_ACCOUNT}/ca.crt`,
      skipTLSVerify: false,
    }],
    users: [{
      name: "in-cluster",
      authProvider: { name: "tokenFile", config: { tokenFile: `${SERVICE_ACCOUNT}/token` } },
    }],
    contexts: [{ name: "in-cluster", cluster: "in-cluster", user: "in-cluster", namespace }],
    currentContext: "in-cluster",
    source: "the pod's service account",
  };
}

function absolute(dir: string, path: string | undefined | null): string | undefined {
  if (!path) return undefined;
  return path.startsWith("/") ? path : `${dir}/${path}`;
}

function dirname(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? (slash === 0 ? "/" : ".") : path.slice(0, slash);
}

/** kubectl's merge rules: the first file to define a name or a current-context wins. */
function mergeFiles(files: string[]): Entries {
  const clusters = new Map<string, Cluster>();
  const users = new Map<string, User>();
  const contexts = new Map<string, Context>();
  let currentContext = "";
  for (const file of files) {
    const one = loadFile(file);
    for (const c of one.clusters) if (!clusters.has(c.name)) clusters.set(c.name, c);
    for (const u of one.users) if (!users.has(u.name)) users.set(u.name, u);
    for (const c of one.contexts) if (!contexts.has(c.name)) contexts.set(c.name, c);
    currentContext ||= one.currentContext;
  }
  return {
    clusters: [...clusters.values()],
    users: [...users.values()],
    contexts: [...contexts.values()],
    currentContext,
  };
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** An error's message, first line only. */
export function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}
