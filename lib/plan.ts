/**
 * What the command line asks for, after parsing and before any API call: the contract
 * between the CLI (lib/cli/) and the parts that talk to the cluster (lib/kube/, lib/forward/).
 */
import type { HttpFilter, IncomingRequest } from "./contract.ts";
import type { Protocol } from "./net/types.ts";

/** The kinds of target relay forwards to, in their canonical (krelay) spelling. */
export type TargetKind = "pod" | "svc" | "deploy" | "sts" | "ds" | "rs" | "host" | "ip";

/** A target as written: `svc/redis`, `host/redis.example`, `ip/198.18.0.7`, `mypod`. */
export interface TargetRef {
  kind: TargetKind;
  /** Object name, hostname or IP literal. */
  name: string;
  /** Namespace for this target (`-n` on its line of a targets file, else the global one). */
  namespace?: string;
}

/** One `[local:]remote[@proto]` port mapping as written. */
export interface PortSpec {
  /** Local port; 0 picks a free one (`:8080`), undefined means the same as remote. */
  localPort?: number;
  /** A port number, or a port name to look up on the Service or container. */
  remote: number | string;
  /** undefined: infer from the Service/container port, else tcp. */
  protocol?: Protocol;
}

/** One forward: a target and its ports (`relay TARGET PORT…`, a line of `-f`, or `-L`). */
export interface ForwardSpec {
  target: TargetRef;
  ports: PortSpec[];
  /** Where this spec came from, for error messages: `argv`, `-L 8080:web:80`, `targets.txt:3`. */
  source: string;
  /** Local addresses for this forward alone (a targets file line's `-l`), else `--address`'s. */
  addresses?: string[];
}

/**
 * kubectl's flags over the kubeconfig: another of its clusters or users than the context's,
 * or single fields of them. File paths as given.
 */
export interface KubeOverrides {
  /** `--cluster`: the kubeconfig cluster to use. */
  cluster?: string;
  /** `--user`: the kubeconfig user to use. */
  user?: string;
  /** `-s, --server`: the API server's URL. */
  server?: string;
  /** `--token`: a bearer token, in place of the user's other ways of getting one. */
  token?: string;
  /** `--certificate-authority`: a CA file for the API server's certificate. */
  certificateAuthority?: string;
  /** `--client-certificate` and `--client-key`: files. */
  clientCertificate?: string;
  clientKey?: string;
}

/** Options that shape every forward in one run. */
export interface RunOptions {
  /** Local addresses to listen on (`--address`): IP literals and `localhost`, the default. */
  addresses: string[];
  kubeconfig?: string;
  context?: string;
  /** kubectl's flags that override the context's cluster and user (`--server`, `--token`, …). */
  kubeOverrides?: KubeOverrides;
  namespace?: string;
  as?: string;
  asGroups: string[];
  /** `--as-uid`. */
  asUid?: string;
  /** `--request-timeout`, in milliseconds; 0 means none. */
  requestTimeoutMs: number;
  agentImage: string;
  agentNamespace?: string;
  /** `--patch` / `--patch-file` merged into the agent pod, already parsed. */
  patch?: Record<string, unknown>;
  /** How long to wait for the agent pod to be Running, in milliseconds. */
  podRunningTimeoutMs: number;
  /** How many tunnels to keep open to the agent. */
  tunnels: number;
  /**
   * The agent's `--idle-exit` (a duration such as `20s`), from the hidden
   * RELAY_AGENT_IDLE_EXIT environment variable; absent: the agent's default.
   */
  agentIdleExit?: string;
  verbose: boolean;
  /** `-q`: no live view and no progress lines; ready lines, errors and notable events. */
  quiet: boolean;
  /** `-o`: human lines (and the live view on a terminal), or one JSON event per line. */
  output: "text" | "json";
}

/**
 * One `-R remote[:local][@proto]` (mirrord's reverse port forward): the agent listens on
 * `remotePort` inside the `--target` pod, and each connection or datagram it accepts is
 * carried back and delivered to `localPort` on this machine's loopback.
 */
export interface ReverseSpec {
  remotePort: number;
  localPort: number;
  protocol: Protocol;
  /** As written, for messages: `-R 8080:3000`. */
  source: string;
}

/** The user and password a proxy client must give (`--proxy-auth USER:PASSWORD`). */
export interface ProxyCredentials {
  user: string;
  password: string;
}

/**
 * `relay proxy`: one local port speaking SOCKS5 and HTTP (CONNECT and absolute-URI requests),
 * whose connections leave from the agent, bound on every `--address`.
 */
export interface ProxySpec {
  /** `--port`; 0 picks a free one (printed). */
  port: number;
  /** Required of every client when set; required itself beyond loopback. */
  auth?: ProxyCredentials;
}

/** Everything one `relay …` run asks for, after parsing and validation. */
export interface Plan {
  options: RunOptions;
  /** Empty only under `relay proxy`, which may run forwards beside it. */
  forwards: ForwardSpec[];
  reverses: ReverseSpec[];
  /** `--target`: the pod or workload whose network namespace the agent joins (always for -R). */
  agentTarget?: TargetRef;
  /**
   * How `-R` takes a port the app serves (--steal, --mirror, or mirrord's
   * `feature.network.incoming` in `-f`): `auto` listens on a free port and mirrors a served one.
   */
  incoming: IncomingRequest;
  /** Steal only the HTTP requests matching this (mirrord's http_filter, --http-*-filter). */
  httpFilter?: HttpFilter;
  /** The -R remote ports the filter applies to; absent: every -R. */
  httpFilterPorts?: number[];
  /** Where `incoming` was chosen, for messages (`--steal`, `mirrord.yaml`); absent: default. */
  incomingSource?: string;
  /** Lines to print once before starting (keys of a config file that relay ignores). */
  warnings?: string[];
  /** `--udp-idle-timeout` in milliseconds: a UDP session with no datagram for this long ends. */
  udpIdleTimeoutMs: number;
  /** `relay proxy`: the proxy's port and credentials. */
  proxy?: ProxySpec;
}
