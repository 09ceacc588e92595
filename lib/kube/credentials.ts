/**
 * Who relay is to the API server: the kubeconfig user's TLS material and Authorization header,
 * fresh on each call. Exec plugins, token files and auth-provider plugins are client-node's
 * authenticators (each module loaded only by users who need it); static tokens, basic auth,
 * certificates and impersonation are read here.
 */
import type { Cluster, User } from "@kubernetes/client-node/dist/config_types.js";

/** TLS material as PEM text. */
export interface TlsMaterial {
  ca?: string;
  cert?: string;
  key?: string;
}

/** What one request presents. */
export interface Identity {
  headers: Headers;
  tls: TlsMaterial;
}

/** The part of client-node's authenticators relay calls. */
interface Authenticator {
  isAuthProvider(user: User): boolean;
  applyAuthentication(user: User, opts: AuthOptions): Promise<void>;
}

/** The node-style request options an authenticator fills in. */
interface AuthOptions {
  headers: Record<string, string>;
  cert?: string | Uint8Array;
  key?: string | Uint8Array;
}

/** Impersonation from `--as` / `--as-group` (the kubeconfig's `as` otherwise). */
export interface Impersonation {
  user?: string;
  groups: string[];
  /** `--as-uid`: the impersonated user's UID. */
  uid?: string;
}

/** One cluster and user's credentials; authenticators keep their caches between calls. */
export class Credentials {
  #authenticator?: Promise<Authenticator | undefined>;

  constructor(
    private readonly cluster: Cluster,
    private readonly user: User | undefined,
    private readonly impersonation: Impersonation,
  ) {}

  async get(): Promise<Identity> {
    const user = this.user;
    const opts: AuthOptions = { headers: {} };
    const tls: TlsMaterial = {
      ca: readPem(this.cluster.caFile, this.cluster.caData),
      cert: readPem(user?.certFile, user?.certData),
      key: readPem(user?.keyFile, user?.keyData),
    };
    if (user) {
      const authenticator = await (this.#authenticator ??= authenticatorFor(user));
      await authenticator?.applyAuthentication(user, opts);
      if (user.token) opts.headers.Authorization = `Bearer ${user.token}`;
      else if (user.username && !opts.headers.Authorization) {
        opts.headers.Authorization = `Basic ${btoa(`${user.username}:${user.password ?? ""}`)}`;
      }
    }
    // An exec plugin may hand out a client certificate instead of a token.
    if (opts.cert) tls.cert = text(opts.cert);
    if (opts.key) tls.key = text(opts.key);
    const headers = new Headers(opts.headers);
    const as = this.impersonation.user ?? user?.impersonateUser;
    if (as) headers.set("Impersonate-User", as);
    for (const group of this.impersonation.groups) headers.set("Impersonate-Group", group);
    if (this.impersonation.uid) headers.set("Impersonate-Uid", this.impersonation.uid);
    return { headers, tls };
  }
}

/** The authenticator the user's entry asks for, loading only its module; none for plain users. */
async function authenticatorFor(user: User): Promise<Authenticator | undefined> {
  const provider = user.authProvider as { name?: string; config?: Record<string, unknown> } | null;
  // client-node's authenticators type their options as node's https.RequestOptions, of which
  // they fill in only what AuthOptions names.
  const load = async (module: Promise<Record<string, new () => unknown>>, name: string) =>
    new (await module)[name]() as Authenticator;
  const candidates: (() => Promise<Authenticator>)[] = [];
  if (user.exec || provider?.name === "exec" || provider?.config?.exec) {
    candidates.push(() => load(import("@kubernetes/client-node/dist/exec_auth.js"), "ExecAuth"));
  }
  if (provider?.config?.tokenFile) {
    candidates.push(() => load(import("@kubernetes/client-node/dist/file_auth.js"), "FileAuth"));
  }
  if (provider?.name === "oidc") {
    candidates.push(() =>
      load(import("@kubernetes/client-node/dist/oidc_auth.js"), "OpenIDConnectAuth")
    );
  }
  if (provider?.name === "azure") {
    candidates.push(() => load(import("@kubernetes/client-node/dist/azure_auth.js"), "AzureAuth"));
  }
  if (provider?.name === "gcp") {
    candidates.push(() =>
      load(import("@kubernetes/client-node/dist/gcp_auth.js"), "GoogleCloudPlatformAuth")
    );
  }
  for (const make of candidates) {
    const authenticator = await make();
    if (authenticator.isAuthProvider(user)) return authenticator;
  }
  return undefined;
}

/** A file's text, else base64 data decoded, as the kubeconfig gives either. */
function readPem(file: string | undefined | null, data: string | undefined | null) {
  if (file) return Deno.readTextFileSync(file);
  if (data) return new TextDecoder().decode(Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
  return undefined;
}

function text(value: string | Uint8Array): string {
  return typeof value === "string" ? value : new TextDecoder().decode(value);
}
