/**
 * From the flags and words commander parsed to a validated {@link Plan}: every value checked,
 * files read, defaults filled in.
 */
import { UsageError } from "../errors.ts";
import { formatTarget } from "../log.ts";
import type {
  ForwardSpec,
  KubeOverrides,
  Plan,
  PortSpec,
  ProxySpec,
  ReverseSpec,
  RunOptions,
  TargetRef,
} from "../plan.ts";
import { DEFAULT_AGENT_IMAGE } from "../version.ts";
import { parseAddresses } from "./addresses.ts";
import { parseDuration } from "./duration.ts";
import { parseForwardArgs } from "./forward_args.ts";
import { parseLocalForward, parseReverseForward } from "./mirrord_flags.ts";
import { parsePatch } from "./patch.ts";
import { parseNamespace, parseTargetRef } from "./target.ts";
import { parseTargetsFile } from "./targets_file.ts";
import { type MirrordConfig, readMirrordConfig } from "./mirrord_config.ts";
import type { HttpFilter, IncomingRequest } from "../contract.ts";

/** How the parser reads `-f`, `--patch-file` and `-f -`; tests substitute their own. */
export interface CliIo {
  readTextFile(path: string): Promise<string>;
  readStdin(): Promise<string>;
}

/**
 * Hidden knob: how long an agent with no tunnel waits before exiting (its `--idle-exit`), as
 * a duration (`20s`). Tests set it short to show a SIGKILLed client leaves nothing behind;
 * users keep the agent's default.
 */
export const AGENT_IDLE_EXIT_ENV = "RELAY_AGENT_IDLE_EXIT";

/** Flag defaults, shown in --help and applied here. */
export const DEFAULTS = {
  tunnels: 2,
  podRunningTimeout: "1m",
  udpIdleTimeout: "60s",
  requestTimeout: "0",
} as const;

/**
 * The flags as commander hands them over, before validation; kubectl's flags over the
 * kubeconfig already carry the plan's names.
 */
export type CommandOptions = {
  namespace?: string;
  address?: string[];
  file?: string[];
  portForward?: string[];
  reversePortForward?: string[];
  target?: string[];
  steal?: true;
  mirror?: true;
  httpHeaderFilter?: string;
  httpPathFilter?: string;
  patch?: string;
  patchFile?: string;
  agentImage?: string;
  "server.image"?: string;
  agentNamespace?: string;
  "server.namespace"?: string;
  tunnels?: string;
  udpIdleTimeout?: string;
  kubeconfig?: string;
  context?: string;
  insecureSkipTlsVerify?: true;
  tlsServerName?: string;
  as?: string;
  asUid?: string;
  asGroup?: string[];
  requestTimeout?: string;
  podRunningTimeout?: string;
  verbose?: true;
  quiet?: true;
  output?: string;
} & KubeOverrides;

/**
 * Validates parsed flags and words and assembles the plan; with `proxy` (relay proxy), the
 * words may name no forward at all.
 */
export async function toPlan(
  words: string[],
  opts: CommandOptions,
  io: CliIo,
  proxy?: ProxySpec,
): Promise<Plan> {
  const namespace = opts.namespace === undefined
    ? undefined
    : parseNamespace(opts.namespace, "--namespace");
  const forwards: ForwardSpec[] = [];
  if (words.length > 0) forwards.push(...parseForwardArgs(words, { namespace, source: "argv" }));
  let mirrord: MirrordConfig | undefined;
  let mirrordFile: string | undefined;
  // Targets files add up, as kubectl's -f files do; a mirrord config is the run's whole config.
  for (const file of opts.file ?? []) {
    const text = await readNamed(file, "-f", io);
    const name = file === "-" ? "stdin" : file;
    const config = readMirrordConfig(text, name);
    if (config && opts.file!.length > 1) {
      throw new UsageError(
        `-f ${file} is a mirrord config, which must be the only -f (given: ${
          opts.file!.join(", ")
        })`,
      );
    }
    if (config) [mirrord, mirrordFile] = [config, file];
    else forwards.push(...parseTargetsFile(text, { name, namespace }));
  }
  forwards.push(...(opts.portForward ?? []).map(parseLocalForward));
  const reverses = (opts.reversePortForward ?? []).map(parseReverseForward);
  if ((opts.target?.length ?? 0) > 1) {
    throw new UsageError(
      `--target given ${opts.target!.length} times (${
        opts.target!.join(", ")
      }): relay joins one pod`,
    );
  }
  // The flags win over the config file, as with mirrord.
  const targetText = opts.target?.[0] ?? mirrord?.target;
  const agentTarget = targetText === undefined ? undefined : parseAgentTarget(
    targetText,
    opts.target === undefined ? namespace ?? mirrord?.namespace : namespace,
  );
  const filter = pickHttpFilter(opts, mirrord);
  const { incoming, incomingSource } = pickIncoming(opts, mirrord, mirrordFile, reverses, filter);
  if (forwards.length === 0 && reverses.length === 0 && !proxy) {
    throw new UsageError(
      "nothing to forward: give TARGET PORT..., -f FILE, -L or -R (see relay --help)",
    );
  }
  if (reverses.length > 0 && !agentTarget) {
    throw new UsageError(
      `${reverses[0].source} needs --target: the pod or workload whose port to take over`,
    );
  }
  checkLocalPortsDistinct(forwards);
  checkRemotePortsDistinct(reverses);

  const options: RunOptions = {
    addresses: parseAddresses(opts.address ?? []),
    asGroups: opts.asGroup ?? [],
    requestTimeoutMs: parseDuration(
      opts.requestTimeout ?? DEFAULTS.requestTimeout,
      "--request-timeout",
    ),
    agentImage: pickAgentImage(opts.agentImage, opts["server.image"]),
    podRunningTimeoutMs: parsePositiveDuration(
      opts.podRunningTimeout ?? DEFAULTS.podRunningTimeout,
      "--pod-running-timeout",
    ),
    tunnels: parseTunnels(opts.tunnels ?? String(DEFAULTS.tunnels)),
    verbose: opts.verbose ?? false,
    quiet: opts.quiet ?? false,
    output: parseOutput(opts.output),
  };
  const agentIdleExit = Deno.env.get(AGENT_IDLE_EXIT_ENV);
  if (agentIdleExit) {
    parseDuration(agentIdleExit, AGENT_IDLE_EXIT_ENV);
    options.agentIdleExit = agentIdleExit;
  }
  if (opts.kubeconfig !== undefined) options.kubeconfig = nonEmpty(opts.kubeconfig, "--kubeconfig");
  if (opts.context !== undefined) options.context = nonEmpty(opts.context, "--context");
  const overrides = await kubeOverrides(opts, io);
  if (overrides) options.kubeOverrides = overrides;
  if (namespace !== undefined) options.namespace = namespace;
  if (opts.as !== undefined) options.as = nonEmpty(opts.as, "--as");
  if (opts.asUid !== undefined) options.asUid = nonEmpty(opts.asUid, "--as-uid");
  const agentNamespace = pickAgreed(
    ["--agent-namespace", opts.agentNamespace],
    ["--server.namespace", opts["server.namespace"]],
  );
  if (agentNamespace !== undefined) {
    options.agentNamespace = parseNamespace(agentNamespace, "--agent-namespace");
  }
  const patch = await readPatch(opts.patch, opts.patchFile, io);
  if (patch) options.patch = patch;

  const udpIdleTimeoutMs = parsePositiveDuration(
    opts.udpIdleTimeout ?? DEFAULTS.udpIdleTimeout,
    "--udp-idle-timeout",
  );
  const plan: Plan = { options, forwards, reverses, udpIdleTimeoutMs, incoming };
  if (incomingSource) plan.incomingSource = incomingSource;
  if (mirrord) plan.warnings = mirrord.warnings;
  if (filter) {
    plan.httpFilter = filter;
    if (mirrord?.httpFilterPorts && !opts.httpHeaderFilter && !opts.httpPathFilter) {
      plan.httpFilterPorts = mirrord.httpFilterPorts;
    }
  }
  if (agentTarget) plan.agentTarget = agentTarget;
  if (proxy) plan.proxy = proxy;
  return plan;
}

/** How -R takes a served port: --steal or --mirror, else the mirrord config's, else auto. */
function pickIncoming(
  opts: CommandOptions,
  mirrord: MirrordConfig | undefined,
  file: string | undefined,
  reverses: readonly ReverseSpec[],
  filter: HttpFilter | undefined,
): { incoming: IncomingRequest; incomingSource?: string } {
  if (opts.steal && opts.mirror) {
    throw new UsageError("--steal and --mirror both given: a port is either stolen or mirrored");
  }
  const flag = opts.steal ? "--steal" : opts.mirror ? "--mirror" : undefined;
  const needsR = flag ??
    (opts.httpHeaderFilter !== undefined
      ? "--http-header-filter"
      : opts.httpPathFilter !== undefined
      ? "--http-path-filter"
      : undefined);
  if (needsR && reverses.length === 0) {
    throw new UsageError(`${needsR} needs -R: it says how -R takes a port the app serves`);
  }
  let chosen: { incoming: IncomingRequest; incomingSource?: string } = { incoming: "auto" };
  if (flag) chosen = { incoming: flag === "--steal" ? "steal" : "mirror", incomingSource: flag };
  else if (mirrord?.incoming) {
    chosen = { incoming: mirrord.incoming, incomingSource: `feature.network.incoming in ${file}` };
  }
  if (!filter) return chosen;
  // A filter picks which requests to steal: it implies steal, and goes with nothing else.
  if (chosen.incoming === "auto") return { incoming: "steal", incomingSource: "the HTTP filter" };
  if (chosen.incoming !== "steal") {
    const mode = chosen.incoming === "listen" ? "off" : chosen.incoming;
    throw new UsageError(
      `an HTTP filter steals matching requests, but incoming is ${mode} ` +
        `(${chosen.incomingSource}): use --steal or drop the filter`,
    );
  }
  return chosen;
}

/** The HTTP filter from --http-header-filter/--http-path-filter, else the mirrord config's. */
function pickHttpFilter(
  opts: CommandOptions,
  mirrord: MirrordConfig | undefined,
): HttpFilter | undefined {
  const fromFlags = opts.httpHeaderFilter !== undefined || opts.httpPathFilter !== undefined;
  const filter: HttpFilter | undefined = fromFlags
    ? {
      ...(opts.httpHeaderFilter !== undefined ? { header: opts.httpHeaderFilter } : {}),
      ...(opts.httpPathFilter !== undefined ? { path: opts.httpPathFilter } : {}),
    }
    : mirrord?.httpFilter;
  if (!filter) return undefined;
  for (const [kind, pattern] of Object.entries(filter)) {
    const where = fromFlags ? `--http-${kind}-filter` : `http_filter.${kind}_filter`;
    if (pattern === "") throw new UsageError(`${where} is empty: expected a regular expression`);
    try {
      new RegExp(pattern);
    } catch (error) {
      throw new UsageError(
        `invalid ${where} ${JSON.stringify(pattern)}: ${(error as Error).message}`,
      );
    }
  }
  return filter;
}

/** A duration that must be above 0: a zero timeout could never be met. */
function parsePositiveDuration(text: string, flag: string): number {
  const ms = parseDuration(text, flag);
  if (ms <= 0) {
    throw new UsageError(`invalid ${flag} "${text}": expected a duration above 0, like 60s`);
  }
  return ms;
}

async function readNamed(path: string, flag: string, io: CliIo): Promise<string> {
  if (path === "-") return await io.readStdin();
  try {
    return await io.readTextFile(path);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : error instanceof Deno.errors.IsADirectory
      ? "is a directory"
      : (error as Error).message?.split("\n")[0] ?? String(error);
    throw new UsageError(`cannot read ${flag} ${JSON.stringify(path)}: ${reason}`);
  }
}

async function readPatch(
  inline: string | undefined,
  file: string | undefined,
  io: CliIo,
): Promise<Record<string, unknown> | undefined> {
  if (inline !== undefined && file !== undefined) {
    throw new UsageError("--patch and --patch-file both given: use one of them");
  }
  if (inline !== undefined) return parsePatch(inline, "--patch");
  if (file !== undefined) {
    const text = await readNamed(file, "--patch-file", io);
    return parsePatch(text, `--patch-file ${JSON.stringify(file)}`);
  }
  return undefined;
}

function parseAgentTarget(text: string, namespace: string | undefined): TargetRef {
  const refuse = () =>
    new UsageError(
      `invalid --target "${text}": expected a pod or workload (pod/, deploy/, sts/, ds/, rs/, svc/)`,
    );
  let target: TargetRef;
  try {
    target = parseTargetRef(text, namespace);
  } catch (error) {
    // The forward's list of kinds names host/ and ip/, which --target cannot take.
    if (error instanceof UsageError && /unknown kind/.test(error.message)) throw refuse();
    throw error;
  }
  if (target.kind === "host" || target.kind === "ip") throw refuse();
  return target;
}

/** A port as written: `8080:80`, `:9000`, `53@udp`. */
function formatPortSpec(port: PortSpec): string {
  const local = port.localPort === undefined ? "" : `${port.localPort || ""}:`;
  return `${local}${port.remote}${port.protocol ? `@${port.protocol}` : ""}`;
}

/** The value of a flag given under either of its two names (relay's and krelay's), if any. */
function pickAgreed(
  [name, value]: [string, string | undefined],
  [aliasName, aliasValue]: [string, string | undefined],
): string | undefined {
  if (value !== undefined && aliasValue !== undefined && value !== aliasValue) {
    throw new UsageError(
      `${name} ${JSON.stringify(value)} and ${aliasName} ${
        JSON.stringify(aliasValue)
      } disagree: give one`,
    );
  }
  return value ?? aliasValue;
}

/** kubectl's flags over the kubeconfig, each checked for a value; undefined when none is given. */
async function kubeOverrides(opts: CommandOptions, io: CliIo): Promise<KubeOverrides | undefined> {
  if (opts.insecureSkipTlsVerify) {
    throw new UsageError(
      "--insecure-skip-tls-verify is not supported: relay always checks the API server's " +
        "certificate; give its CA with --certificate-authority",
    );
  }
  if (opts.tlsServerName !== undefined) {
    // Deno's HTTP client, which makes relay's API calls, checks the URL's host only.
    throw new UsageError(
      `--tls-server-name ${JSON.stringify(opts.tlsServerName)} is not supported: relay checks ` +
        "the API server's certificate for the --server URL's host; give --server with a name " +
        "the certificate has",
    );
  }
  const flags: [keyof KubeOverrides, string | undefined, string][] = [
    ["cluster", opts.cluster, "--cluster"],
    ["user", opts.user, "--user"],
    ["server", opts.server, "--server"],
    ["token", opts.token, "--token"],
    ["certificateAuthority", opts.certificateAuthority, "--certificate-authority"],
    ["clientCertificate", opts.clientCertificate, "--client-certificate"],
    ["clientKey", opts.clientKey, "--client-key"],
  ];
  const overrides: KubeOverrides = {};
  for (const [field, value, flag] of flags) {
    if (value !== undefined) overrides[field] = nonEmpty(value, flag);
  }
  if (overrides.server !== undefined && !/^https?:\/\/[^/]/.test(overrides.server)) {
    throw new UsageError(
      `invalid --server ${JSON.stringify(overrides.server)}: expected https://HOST[:PORT]`,
    );
  }
  if ((overrides.clientCertificate === undefined) !== (overrides.clientKey === undefined)) {
    throw new UsageError("--client-certificate and --client-key go together: give both");
  }
  // A file that is not there or not PEM is said now, naming the flag, not at the first call.
  const files: [string | undefined, string][] = [
    [overrides.certificateAuthority, "--certificate-authority"],
    [overrides.clientCertificate, "--client-certificate"],
    [overrides.clientKey, "--client-key"],
  ];
  for (const [path, flag] of files) {
    if (path === undefined || path === "-") continue;
    if (!(await readNamed(path, flag, io)).includes("-----BEGIN ")) {
      throw new UsageError(`invalid ${flag} ${JSON.stringify(path)}: not a PEM file`);
    }
  }
  return Object.keys(overrides).length > 0 ? overrides : undefined;
}

function pickAgentImage(agentImage?: string, serverImage?: string): string {
  const image = pickAgreed(["--agent-image", agentImage], ["--server.image", serverImage]);
  if (image === undefined) return DEFAULT_AGENT_IMAGE;
  if (image.trim() === "" || /\s/.test(image)) {
    throw new UsageError(
      `invalid --agent-image ${JSON.stringify(image)}: expected an image reference`,
    );
  }
  return image;
}

function parseTunnels(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 64) {
    throw new UsageError(`invalid --tunnels ${JSON.stringify(text)}: expected a number 1–64`);
  }
  return n;
}

function nonEmpty(value: string, flag: string): string {
  if (value.trim() === "") throw new UsageError(`${flag} is empty: expected a value`);
  return value;
}

/** Two forwards on one local port and protocol could never both bind. */
function checkLocalPortsDistinct(forwards: readonly ForwardSpec[]): void {
  const owners = new Map<string, { forward: ForwardSpec; port: PortSpec }>();
  const name = ({ forward, port }: { forward: ForwardSpec; port: PortSpec }) =>
    `${formatTarget(forward.target)} ${formatPortSpec(port)} (${forward.source})`;
  for (const forward of forwards) {
    for (const port of forward.ports) {
      const local = port.localPort ?? (typeof port.remote === "number" ? port.remote : undefined);
      if (!local) continue; // random, or decided by a named port later
      // A named port without @proto may turn out to be either protocol, so it claims both.
      const protocols = port.protocol
        ? [port.protocol]
        : typeof port.remote === "string"
        ? ["tcp", "udp"]
        : ["tcp"];
      for (const protocol of protocols) {
        const key = `${local}/${protocol}`;
        const owner = owners.get(key);
        if (owner) {
          throw new UsageError(
            `local port ${key} is used twice: by ${name(owner)} and ${name({ forward, port })}`,
          );
        }
        owners.set(key, { forward, port });
      }
    }
  }
}

function checkRemotePortsDistinct(reverses: readonly ReverseSpec[]): void {
  const seen = new Map<string, ReverseSpec>();
  for (const reverse of reverses) {
    const key = `${reverse.remotePort}/${reverse.protocol}`;
    const earlier = seen.get(key);
    if (earlier) {
      throw new UsageError(
        `remote port ${key} is reversed twice: ${earlier.source} and ${reverse.source}`,
      );
    }
    seen.set(key, reverse);
  }
}

/** `-o text` (the default) or `-o json`. */
function parseOutput(value: string | undefined): "text" | "json" {
  if (value === undefined || value === "text") return "text";
  if (value === "json") return "json";
  throw new UsageError(`-o/--output: unknown format "${value}" (text or json)`);
}
