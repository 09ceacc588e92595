/**
 * Loading the kubeconfig and everything derived from it: typed API clients and what a raw
 * WebSocket to the API server needs. Authentication itself (client certs, tokens, token
 * files, exec plugins, in-cluster config) is client-node's; this module only chooses the
 * file, the context and the namespace, adds impersonation, and translates the result into
 * Deno's terms (`Deno.HttpClient`, `Headers`).
 */
import {
  AppsV1Api,
  BatchV1Api,
  type Cluster,
  type Context,
  CoreV1Api,
  KubeConfig,
  type User,
  Watch,
} from "@kubernetes/client-node";
import { Agent as UndiciAgent, type Dispatcher } from "undici";
import { parse as parseYaml } from "yaml";
import { KubeError, UsageError } from "./errors.ts";
import { type NoDelayBridge, startNoDelayBridge } from "./nodelay_bridge.ts";

/** How to reach the cluster, as the CLI's flags say (all optional). */
export interface LoadKubeOptions {
  /** `--kubeconfig`: one file; else `$KUBECONFIG` (a path list), else ~/.kube/config, else in-cluster. */
  kubeconfig?: string;
  /** `--context`; else the kubeconfig's current-context. */
  context?: string;
  /** `-n`; else the context's namespace, else "default". */
  namespace?: string;
  /** `--as`: the user to impersonate. */
  as?: string;
  /** `--as-group`: groups to impersonate (needs `as`). */
  asGroups?: string[];
  /** `--request-timeout` for single API calls, in ms; 0 or undefined means none. */
  requestTimeoutMs?: number;
  /** Environment lookups, replaceable for tests; defaults to Deno.env.get. */
  env?: (name: string) => string | undefined;
}

/** What a raw WebSocket (or fetch) to the API server needs, fresh for this moment. */
export interface RawConnection {
  /** The API server's base URL, e.g. `https://10.0.0.1:6443` (may carry a path prefix). */
  server: URL;
  /** Authorization and impersonation headers, with current (refreshed) credentials. */
  headers: Headers;
  /** Trusts the cluster's CA and presents the client certificate, if any. HTTP/1.1 only. */
  client: Deno.HttpClient;
}

/** A loaded kubeconfig with its clients; one per run. */
export interface Kube {
  readonly config: KubeConfig;
  /** The context in use. */
  readonly contextName: string;
  /** The effective namespace: the flag, else the context's, else "default". */
  readonly namespace: string;
  readonly core: CoreV1Api;
  readonly apps: AppsV1Api;
  readonly batch: BatchV1Api;
  /** Watches, with the same credentials, impersonation and timeouts as the API clients. */
  readonly watch: Watch;
  /** Credentials and TLS for a raw request, refreshed (exec plugins, token files) on each call. */
  rawConnection(): Promise<RawConnection>;
  /** Release the HTTP clients made for raw connections. */
  close(): void;
}

/** Impersonation and timeouts applied to every request client-node makes, watches included. */
class RelayKubeConfig extends KubeConfig {
  impersonateGroups: string[] = [];
  requestTimeoutMs = 0;

  // client-node only knows `Impersonate-User` (from the kubeconfig's `as`); groups are added
  // here, on the one hook every API call and watch goes through.
  override async applySecurityAuthentication(
    context: Parameters<KubeConfig["applySecurityAuthentication"]>[0],
  ): Promise<void> {
    await super.applySecurityAuthentication(context);
    for (const group of this.impersonateGroups) context.setHeaderParam("Impersonate-Group", group);
    if (this.requestTimeoutMs > 0 && !context.getSignal()) {
      context.setSignal(AbortSignal.timeout(this.requestTimeoutMs));
    }
  }
}

// client-node's undici dispatcher offers HTTP/2, which under Deno runs on node:http2, whose
// session aborts the whole process when a server's GOAWAY meets a stream being closed (seen
// on API server shutdown). kubectl's API calls are HTTP/2 as well, but nothing relay asks of
// the API needs it, so API calls stay on HTTP/1.1. (createDispatcher is private in the
// typings, hence the prototype assignment; its options come from the public method.)
type DispatcherOptions = ReturnType<KubeConfig["createDispatcherOptions"]>;
Object.assign(RelayKubeConfig.prototype, {
  createDispatcher(
    this: RelayKubeConfig,
    cluster: Cluster | null,
    agentOptions: Parameters<KubeConfig["createDispatcherOptions"]>[1],
  ): Dispatcher | undefined {
    const options: DispatcherOptions = this.createDispatcherOptions(cluster, agentOptions);
    if (options.type === "agent") {
      return new UndiciAgent({ connect: options.connect, allowH2: false });
    }
    // Plain http (no ALPN, so no HTTP/2) and proxies keep client-node's own choice.
    // deno-lint-ignore no-explicit-any
    return (KubeConfig.prototype as any).createDispatcher.call(this, cluster, agentOptions);
  },
});

const SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/**
 * Load the kubeconfig the way kubectl would and make the API clients.
 * Throws UsageError for a missing file, an unknown context or bad impersonation flags.
 */
export function loadKube(opts: LoadKubeOptions = {}): Kube {
  const env = opts.env ?? ((name: string) => Deno.env.get(name));
  const kc = new RelayKubeConfig();
  const source = loadFiles(kc, opts.kubeconfig, env);

  if (opts.context !== undefined) {
    if (!kc.getContextObject(opts.context)) {
      throw new UsageError(`context "${opts.context}" not found in the kubeconfig (${source})`);
    }
    kc.setCurrentContext(opts.context);
  }
  const contextName = kc.getCurrentContext();
  const context = contextName ? kc.getContextObject(contextName) : null;
  if (!context) {
    throw new UsageError(
      contextName
        ? `current-context "${contextName}" is not defined in the kubeconfig (${source})`
        : `the kubeconfig (${source}) has no current-context: pass --context`,
    );
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) {
    throw new UsageError(
      `context "${contextName}" names cluster "${context.cluster}", which the kubeconfig does not define`,
    );
  }
  if (!kc.getCurrentUser() && context.user) {
    throw new UsageError(
      `context "${contextName}" names user "${context.user}", which the kubeconfig does not define`,
    );
  }
  checkServer(cluster);
  applyImpersonation(kc, opts);
  kc.requestTimeoutMs = opts.requestTimeoutMs ?? 0;

  const raw = new RawConnections(kc, cluster);
  return {
    config: kc,
    contextName,
    namespace: opts.namespace || context.namespace || "default",
    core: kc.makeApiClient(CoreV1Api),
    apps: kc.makeApiClient(AppsV1Api),
    batch: kc.makeApiClient(BatchV1Api),
    watch: new Watch(kc),
    rawConnection: () => raw.get(),
    close: () => raw.close(),
  };
}

/**
 * Fill `kc` from --kubeconfig, $KUBECONFIG, ~/.kube/config or the pod's service account;
 * returns which, for messages about what it holds.
 */
function loadFiles(
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

/**
 * Deno's WebSocket always verifies the server's certificate and cannot be told otherwise per
 * connection (only the process-wide `--unsafely-ignore-certificate-errors` can), so a cluster
 * marked insecure-skip-tls-verify over https is refused up front with what to do instead,
 * rather than failing later inside the TLS handshake. Plain http servers need no TLS at all.
 */
function checkServer(cluster: Cluster): void {
  let url: URL;
  try {
    url = new URL(cluster.server);
  } catch {
    throw new UsageError(`cluster "${cluster.name}" has an invalid server URL: ${cluster.server}`);
  }
  if (url.protocol === "https:" && cluster.skipTLSVerify) {
    throw new UsageError(
      `cluster "${cluster.name}" sets insecure-skip-tls-verify, which relay cannot honour: ` +
        `give it certificate-authority(-data) instead (kubectl config set-cluster ${cluster.name} ` +
        `--certificate-authority=CA.pem --embed-certs)`,
    );
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new UsageError(
      `cluster "${cluster.name}" has an unsupported server URL: ${cluster.server}`,
    );
  }
}

/**
 * --as goes where client-node already honours the kubeconfig's `as`; --as-group is added by
 * RelayKubeConfig. Only one group: Deno's fetch and WebSocket join repeated headers into one
 * "a, b" line, which the API server would read as a single group with that odd name.
 */
function applyImpersonation(kc: RelayKubeConfig, opts: LoadKubeOptions): void {
  const groups = opts.asGroups ?? [];
  if (groups.length > 0 && !opts.as) {
    throw new UsageError("--as-group needs --as: the API server impersonates groups of a user");
  }
  if (groups.length > 1) {
    throw new UsageError(
      `--as-group can be given once (got ${groups.join(", ")}): relay's HTTP client would ` +
        "join repeated Impersonate-Group headers into one group",
    );
  }
  if (opts.as) {
    const user = kc.getCurrentUser();
    if (user) {
      // Users are shared objects inside the KubeConfig; replace, don't mutate in place.
      const replaced = { ...user, impersonateUser: opts.as };
      kc.users = kc.users.map((u) => (u === user ? replaced : u));
    } else {
      kc.users = [...kc.users, { name: "relay-impersonation", impersonateUser: opts.as }];
      const ctx = kc.getContextObject(kc.getCurrentContext())!;
      kc.contexts = kc.contexts.map((c) => c === ctx ? { ...c, user: "relay-impersonation" } : c);
    }
  }
  kc.impersonateGroups = groups;
}

/** Builds RawConnection values; keeps one Deno.HttpClient per distinct TLS identity. */
class RawConnections {
  #client?: Deno.HttpClient;
  #bridge?: NoDelayBridge;
  #clientKey = "";

  constructor(readonly kc: RelayKubeConfig, readonly cluster: Cluster) {}

  async get(): Promise<RawConnection> {
    // applyToHTTPSOptions runs client-node's authenticators (exec plugins are re-run when
    // their credential expires, token files re-read) and yields node-style TLS options.
    const opts: {
      headers?: Record<string, string>;
      ca?: Uint8Array | string;
      cert?: Uint8Array | string;
      key?: Uint8Array | string;
      auth?: string;
    } = {};
    try {
      await this.kc.applyToHTTPSOptions(opts as Parameters<KubeConfig["applyToHTTPSOptions"]>[0]);
    } catch (error) {
      throw new KubeError(`cannot get credentials for the cluster: ${firstLine(error)}`, {
        cause: error,
      });
    }
    const headers = new Headers();
    for (const [name, value] of Object.entries(opts.headers ?? {})) headers.set(name, `${value}`);
    if (opts.auth && !headers.has("Authorization")) {
      headers.set("Authorization", `Basic ${btoa(opts.auth)}`);
    }
    for (const group of this.kc.impersonateGroups) headers.set("Impersonate-Group", group);

    const tls = { ca: pem(opts.ca), cert: pem(opts.cert), key: pem(opts.key) };
    const key = JSON.stringify([tls.ca, tls.cert, tls.key]);
    if (!this.#client || key !== this.#clientKey) {
      // An older client may still carry open WebSockets; let it go with them, not close it.
      this.#client = this.#makeClient(tls);
      this.#clientKey = key;
    }
    return { server: new URL(this.cluster.server), headers, client: this.#client };
  }

  #makeClient(tls: { ca?: string; cert?: string; key?: string }): Deno.HttpClient {
    const options: Deno.CreateHttpClientOptions & Partial<Deno.TlsCertifiedKeyPem> = {
      // The API server upgrades port-forward only over HTTP/1.1 (as kubectl connects).
      http2: false,
    };
    if (tls.ca) options.caCerts = [tls.ca];
    if (tls.cert && tls.key) {
      options.cert = tls.cert;
      options.key = tls.key;
    }
    if (this.cluster.proxyUrl) options.proxy = { url: this.cluster.proxyUrl };
    else {
      // Replaced with the client: its TLS material may have changed. Connections already
      // made through the old bridge keep going.
      this.#bridge?.close();
      this.#bridge = startNoDelayBridge({ server: new URL(this.cluster.server), ...tls });
      if (this.#bridge) options.proxy = { transport: "unix", path: this.#bridge.path };
    }
    try {
      return Deno.createHttpClient(options as Deno.CreateHttpClientOptions);
    } catch (error) {
      this.#bridge?.close();
      this.#bridge = undefined;
      throw new UsageError(
        `the kubeconfig's TLS material for cluster "${this.cluster.name}" is unusable: ${
          firstLine(error)
        }`,
        { cause: error },
      );
    }
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
    this.#bridge?.close();
    this.#bridge = undefined;
  }
}

/** client-node hands TLS material as Buffers (files, base64 data) or PEM strings (exec). */
function pem(value: Uint8Array | string | undefined): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === "string" ? value : new TextDecoder().decode(value);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}
