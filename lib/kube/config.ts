/**
 * Loading the kubeconfig and everything derived from it: the API calls relay makes and what a
 * raw WebSocket to the API server needs. This module chooses the context and the namespace
 * (the file is found by kubeconfig_files.ts, credentials made by credentials.ts), applies
 * kubectl's flags over its cluster and user, adds impersonation, and translates the result
 * into Deno's terms (`Deno.HttpClient`, `Headers`).
 */
import type { Cluster, User } from "@kubernetes/client-node/dist/config_types.js";
import type { KubeOverrides } from "../plan.ts";
import { KubeApi, type Watcher } from "./api.ts";
import { Credentials, type Impersonation, type TlsMaterial } from "./credentials.ts";
import { KubeError, UsageError } from "./errors.ts";
import { firstLine, loadFiles } from "./kubeconfig_files.ts";
import {
  type AppsApi,
  appsApi,
  type AuthorizationApi,
  authorizationApi,
  type BatchApi,
  batchApi,
  type CoreApi,
  coreApi,
} from "./resources.ts";
import { SpareConnections } from "./spare_connection.ts";

/** How to reach the cluster, as the CLI's flags say (all optional). */
export interface LoadKubeOptions {
  /** `--kubeconfig`: one file; else `$KUBECONFIG` (a path list), else ~/.kube/config, else in-cluster. */
  kubeconfig?: string;
  /** `--context`; else the kubeconfig's current-context. */
  context?: string;
  /** kubectl's flags over the context's cluster and user. */
  overrides?: KubeOverrides;
  /** `-n`; else the context's namespace, else "default". */
  namespace?: string;
  /** `--as`: the user to impersonate. */
  as?: string;
  /** `--as-group`: groups to impersonate (needs `as`). */
  asGroups?: string[];
  /** `--as-uid`: the impersonated user's UID (needs `as`). */
  asUid?: string;
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
  /** The context in use. */
  readonly contextName: string;
  /** The effective namespace: the flag, else the context's, else "default". */
  readonly namespace: string;
  readonly core: CoreApi;
  readonly apps: AppsApi;
  readonly batch: BatchApi;
  readonly authorization: AuthorizationApi;
  /** Any other request, for tools beside relay (the test cluster's DNS). */
  readonly api: KubeApi;
  /** Watches, with the same credentials and impersonation as the calls. */
  readonly watch: Watcher;
  /** Credentials and TLS for a raw request, refreshed (exec plugins, token files) on each call. */
  rawConnection(): Promise<RawConnection>;
  /** Connections dialed ahead for port-forwards (none through a kubeconfig's proxy). */
  readonly spares: SpareConnections;
  /** Release the HTTP clients made for raw connections, and any spare connection. */
  close(): void;
}

/**
 * Load the kubeconfig the way kubectl would and make the API clients.
 * Throws UsageError for a missing file, an unknown context or bad impersonation flags.
 */
export function loadKube(opts: LoadKubeOptions = {}): Kube {
  const env = opts.env ?? ((name: string) => Deno.env.get(name));
  const overrides = opts.overrides ?? {};
  // As with kubectl, --server is enough on a machine without a kubeconfig.
  const config = loadFiles(opts.kubeconfig, env, { optional: overrides.server !== undefined });
  const { source } = config;
  const find = <T extends { name: string }>(list: T[], name: string) =>
    list.find((entry) => entry.name === name);

  if (opts.context !== undefined && !find(config.contexts, opts.context)) {
    throw new UsageError(`context "${opts.context}" not found in the kubeconfig (${source})`);
  }
  const contextName = opts.context ?? config.currentContext;
  const context = contextName ? find(config.contexts, contextName) : undefined;
  if (!context && overrides.cluster === undefined && overrides.server === undefined) {
    throw new UsageError(
      contextName
        ? `current-context "${contextName}" is not defined in the kubeconfig (${source})`
        : `the kubeconfig (${source}) has no current-context: pass --context`,
    );
  }
  const named = (kind: "cluster" | "user", flag: string | undefined, ofContext?: string) => {
    const name = flag ?? ofContext;
    if (!name) return undefined;
    const entry = find<{ name: string }>(kind === "cluster" ? config.clusters : config.users, name);
    if (entry) return entry;
    throw new UsageError(
      flag !== undefined
        ? `${kind} "${flag}" not found in the kubeconfig (${source})`
        : `context "${contextName}" names ${kind} "${name}", which the kubeconfig does not define`,
    );
  };
  const cluster = withClusterOverrides(
    named("cluster", overrides.cluster, context?.cluster) as Cluster | undefined,
    overrides,
  );
  const user = withUserOverrides(
    named("user", overrides.user, context?.user) as User | undefined,
    overrides,
  );
  checkServer(cluster);
  const credentials = new Credentials(cluster, user, impersonation(opts));
  const raw = new RawConnections(credentials, cluster);
  const api = new KubeApi(() => raw.get(), opts.requestTimeoutMs ?? 0);
  const spares = new SpareConnections(async () => {
    const conn = await raw.get();
    return conn.proxyUrl ? undefined : conn;
  });
  return {
    contextName: contextName || cluster.name,
    namespace: opts.namespace || context?.namespace || "default",
    core: coreApi(api),
    apps: appsApi(api),
    batch: batchApi(api),
    authorization: authorizationApi(api),
    api,
    watch: api,
    rawConnection: () => raw.get(),
    spares,
    close: () => {
      spares.close();
      raw.close();
    },
  };
}

/** The cluster with kubectl's flags applied; one made of them alone for `--server`. */
function withClusterOverrides(cluster: Cluster | undefined, o: KubeOverrides): Cluster {
  const base: Cluster = cluster ?? { name: "--server", server: o.server!, skipTLSVerify: false };
  return {
    ...base,
    ...(o.server !== undefined && { server: o.server }),
    ...(o.certificateAuthority !== undefined && {
      caFile: o.certificateAuthority,
      caData: undefined,
    }),
  };
}

/**
 * The user with kubectl's flags applied: `--token` takes the place of every other way the user
 * gets a token (a token file, which kubeconfig_files.ts makes an auth provider, an exec or
 * auth-provider plugin, a password); client certificate files take the place of the user's.
 */
function withUserOverrides(user: User | undefined, o: KubeOverrides): User | undefined {
  if (o.token === undefined && o.clientCertificate === undefined) return user;
  return {
    ...(user ?? { name: "flags" }),
    ...(o.token !== undefined && {
      token: o.token,
      exec: undefined,
      authProvider: undefined,
      username: undefined,
      password: undefined,
    }),
    ...(o.clientCertificate !== undefined && {
      certFile: o.clientCertificate,
      keyFile: o.clientKey,
      certData: undefined,
      keyData: undefined,
    }),
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
 * Only one group: Deno's fetch and WebSocket join repeated headers into one "a, b" line, which
 * the API server would read as a single group with that odd name.
 */
function impersonation(opts: LoadKubeOptions): Impersonation {
  const groups = opts.asGroups ?? [];
  if (groups.length > 0 && !opts.as) {
    throw new UsageError("--as-group needs --as: the API server impersonates groups of a user");
  }
  if (opts.asUid !== undefined && !opts.as) {
    throw new UsageError("--as-uid needs --as: the API server impersonates the UID of a user");
  }
  if (groups.length > 1) {
    throw new UsageError(
      `--as-group can be given once (got ${groups.join(", ")}): relay's HTTP client would ` +
        "join repeated Impersonate-Group headers into one group",
    );
  }
  return { user: opts.as, groups, ...(opts.asUid !== undefined && { uid: opts.asUid }) };
}

/** Builds RawConnection values; keeps one Deno.HttpClient per distinct TLS identity. */
class RawConnections {
  #client?: Deno.HttpClient;
  #clientKey = "";

  constructor(readonly credentials: Credentials, readonly cluster: Cluster) {}

  async get(): Promise<RawConnection> {
    let headers: Headers;
    let tls: TlsMaterial;
    try {
      ({ headers, tls } = await this.credentials.get());
    } catch (error) {
      throw new KubeError(`cannot get credentials for the cluster: ${firstLine(error)}`, {
        cause: error,
      });
    }
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

  #makeClient(tls: TlsMaterial): Deno.HttpClient {
    const options: Deno.CreateHttpClientOptions & Partial<Deno.TlsCertifiedKeyPem> = {
      // HTTP/1.1: a port-forward through a kubeconfig proxy upgrades only over it (as kubectl).
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
