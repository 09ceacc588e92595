/**
 * Loading the kubeconfig and everything derived from it: typed API clients and what a raw
 * WebSocket to the API server needs. Authentication itself (client certs, tokens, token
 * files, exec plugins, in-cluster config) is client-node's; this module only chooses the
 * context and the namespace (the file is found by kubeconfig_files.ts), adds impersonation,
 * and translates the result into Deno's terms (`Deno.HttpClient`, `Headers`).
 */
import {
  AppsV1Api,
  BatchV1Api,
  type Cluster,
  CoreV1Api,
  KubeConfig,
  Watch,
} from "@kubernetes/client-node";
import { Agent as UndiciAgent, type Dispatcher } from "undici";
import { KubeError, UsageError } from "./errors.ts";
import { firstLine, loadFiles } from "./kubeconfig_files.ts";

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
  /** The same TLS material as PEM, for connections made without `client`. */
  tls: { ca?: string; cert?: string; key?: string; serverName?: string };
  /** The cluster's `proxy-url`, if any. */
  proxyUrl?: string;
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

// API calls stay on HTTP/1.1: under Deno, node:http2 aborts the whole process when a GOAWAY
// meets a closing stream (docs/MEASUREMENTS.md). createDispatcher is private in the typings,
// hence the prototype assignment.
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
    return {
      server: new URL(this.cluster.server),
      headers,
      client: this.#client,
      tls: { ...tls, serverName: this.cluster.tlsServerName },
      proxyUrl: this.cluster.proxyUrl,
    };
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
    try {
      return Deno.createHttpClient(options as Deno.CreateHttpClientOptions);
    } catch (error) {
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
  }
}

/** client-node hands TLS material as Buffers (files, base64 data) or PEM strings (exec). */
function pem(value: Uint8Array | string | undefined): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === "string" ? value : new TextDecoder().decode(value);
}
