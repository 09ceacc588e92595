/**
 * Finding and reading the kubeconfig the way kubectl does: --kubeconfig, $KUBECONFIG (merged),
 * ~/.kube/config or the pod's service account.
 */
import { type Cluster, type Context, KubeConfig, type User } from "@kubernetes/client-node";
import { parse as parseYaml } from "yaml";
import { UsageError } from "./errors.ts";

const SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/**
 * Fill `kc` from --kubeconfig, $KUBECONFIG, ~/.kube/config or the pod's service account;
 * returns which, for messages about what it holds.
 */
export function loadFiles(
  kc: KubeConfig,
  flag: string | undefined,
  env: (name: string) => string | undefined,
): string {
  if (flag) {
    if (!exists(flag)) throw new UsageError(`kubeconfig ${flag} does not exist`);
    loadFile(kc, flag);
    return flag;
  }
  const list = env("KUBECONFIG");
  if (list) {
    // kubectl skips entries that do not exist, as long as one does.
    const files = list.split(Deno.build.os === "windows" ? ";" : ":").filter((f) => f && exists(f));
    if (files.length === 0) {
      throw new UsageError(`none of the files in KUBECONFIG exists (${list})`);
    }
    mergeFiles(kc, files);
    return files.join(Deno.build.os === "windows" ? ";" : ":");
  }
  const home = env("HOME") ?? env("USERPROFILE");
  const defaultFile = home ? `${home}/.kube/config` : undefined;
  if (defaultFile && exists(defaultFile)) {
    loadFile(kc, defaultFile);
    return defaultFile;
  }
  if (env("KUBERNETES_SERVICE_HOST") && exists(SERVICE_ACCOUNT_TOKEN)) {
    kc.loadFromCluster();
    return "the pod's service account";
  }
  throw new UsageError(
    "no kubeconfig found: pass --kubeconfig, set KUBECONFIG or create ~/.kube/config",
  );
}

function loadFile(kc: KubeConfig, file: string): void {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
    kc.loadFromString(text);
    kc.makePathsAbsolute(dirname(file));
  } catch (error) {
    throw new UsageError(`kubeconfig ${file} cannot be read: ${firstLine(error)}`, {
      cause: error,
    });
  }
  honourTokenFiles(kc, text, dirname(file));
}

/**
 * kubectl's kubeconfig spells a token file `tokenFile`; client-node reads only `token-file`,
 * once. Hand such users to client-node's file authenticator instead, which re-reads the file
 * (every minute, like client-go), so rotated tokens keep working.
 */
function honourTokenFiles(kc: KubeConfig, text: string, dir: string): void {
  const raw = parseYaml(text) as { users?: { name?: string; user?: { tokenFile?: unknown } }[] };
  const files = new Map<string, string>();
  for (const entry of raw?.users ?? []) {
    const path = entry?.user?.tokenFile;
    if (entry?.name && typeof path === "string" && path) {
      files.set(entry.name, path.startsWith("/") ? path : `${dir}/${path}`);
    }
  }
  if (files.size === 0) return;
  kc.users = kc.users.map((user) => {
    const tokenFile = files.get(user.name);
    return tokenFile && !user.token && !user.authProvider
      ? { ...user, authProvider: { name: "tokenFile", config: { tokenFile } } }
      : user;
  });
}

function dirname(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? (slash === 0 ? "/" : ".") : path.slice(0, slash);
}

/** kubectl's merge rules: the first file to define a name or a current-context wins. */
function mergeFiles(kc: KubeConfig, files: string[]): void {
  const clusters = new Map<string, Cluster>();
  const users = new Map<string, User>();
  const contexts = new Map<string, Context>();
  let currentContext = "";
  for (const file of files) {
    const one = new KubeConfig();
    loadFile(one, file);
    for (const c of one.getClusters()) if (!clusters.has(c.name)) clusters.set(c.name, c);
    for (const u of one.getUsers()) if (!users.has(u.name)) users.set(u.name, u);
    for (const c of one.getContexts()) if (!contexts.has(c.name)) contexts.set(c.name, c);
    currentContext ||= one.getCurrentContext() ?? "";
  }
  kc.loadFromOptions({
    clusters: [...clusters.values()],
    users: [...users.values()],
    contexts: [...contexts.values()],
    currentContext,
  });
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
