/**
 * Helpers for end-to-end tests against the local cluster (scripts/cluster.ts): bring it up
 * once, run kubectl, make throw-away namespaces, and look inside pods (their network
 * namespace and processes, as the kubelet shim records them under the run dir).
 */
import { KUBECTL } from "../../scripts/cluster/config.ts";

/** The repository root. */
export const REPO_DIR = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
/** The cluster's run dir (state, logs, kubeconfig). */
export const RUN_DIR = Deno.env.get("RELAY_CLUSTER_DIR") ?? "/tmp/relay-cluster";
/** The admin kubeconfig relay and kubectl use. */
export const KUBECONFIG = `${RUN_DIR}/admin.kubeconfig`;
/** The kubectl that speaks the cluster's version: the one the cluster scripts use. */
export { KUBECTL };

/** What a finished command left behind. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; never throws for a non-zero exit. */
export async function runCommand(
  argv: string[],
  options: {
    input?: string | Uint8Array;
    env?: Record<string, string>;
    /** Kills the command when it aborts (a deadline: AbortSignal.timeout). */
    signal?: AbortSignal;
  } = {},
): Promise<CommandResult> {
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    signal: options.signal,
    stdin: options.input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  if (options.input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(
      typeof options.input === "string" ? new TextEncoder().encode(options.input) : options.input,
    );
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

let clusterUp: Promise<{ kubeconfig: string; kubectl: string }> | undefined;

/**
 * Brings the cluster up unless it is up already (idempotent; once per test process) and
 * returns where to reach it.
 */
export function ensureCluster(): Promise<{ kubeconfig: string; kubectl: string }> {
  clusterUp ??= (async () => {
    const result = await runCommand([
      Deno.execPath(),
      "run",
      "--allow-all",
      "--unstable-net",
      `${REPO_DIR}/scripts/cluster.ts`,
      "up",
    ]);
    if (result.code !== 0) throw new Error(`cluster up failed:\n${result.stderr}`);
    return { kubeconfig: KUBECONFIG, kubectl: KUBECTL };
  })();
  return clusterUp;
}

/** Runs kubectl as the cluster admin; throws with its stderr unless it exits 0. */
export async function kubectl(
  args: string[],
  options: { input?: string } = {},
): Promise<string> {
  const result = await runCommand([KUBECTL, `--kubeconfig=${KUBECONFIG}`, ...args], options);
  if (result.code !== 0) {
    throw new Error(`kubectl ${args.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** kubectl with `-o json`, parsed. */
export async function kubectlJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
  return JSON.parse(await kubectl([...args, "-o", "json"])) as T;
}

/** `kubectl apply` of a manifest (YAML or JSON), optionally into a namespace. */
export async function applyYaml(yaml: string, namespace?: string): Promise<string> {
  return await kubectl(["apply", ...(namespace ? ["-n", namespace] : []), "-f", "-"], {
    input: yaml,
  });
}

/** Polls `check` until it returns something other than undefined/false; throws at the deadline. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let lastError: unknown;
  while (true) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${lastError ? `: ${lastError}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 250));
  }
}

/** A namespace that deletes itself (with everything in it) when disposed. */
export interface TestNamespace extends AsyncDisposable {
  readonly name: string;
}

/**
 * Creates a uniquely named namespace; `await using ns = await createTestNamespace("echo")`
 * removes it at the end of the scope.
 */
export async function createTestNamespace(prefix: string): Promise<TestNamespace> {
  const name = `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
  await kubectl(["create", "namespace", name]);
  // The ServiceAccount controller adds `default` shortly after; pods need it.
  await waitFor(
    `serviceaccount ${name}/default`,
    () => kubectl(["get", "serviceaccount", "default", "-n", name]).then(() => true),
    {
      timeoutMs: 30_000,
    },
  );
  return {
    name,
    [Symbol.asyncDispose]: () => deleteTestNamespace(name),
  };
}

/** Deletes a namespace and waits until it is gone (so its pods' processes are stopped). */
export async function deleteTestNamespace(name: string): Promise<void> {
  await kubectl(["delete", "namespace", name, "--wait=true", "--timeout=60s"]).catch(() => {});
}

/** A pod's UID. */
export async function podUid(namespace: string, pod: string): Promise<string> {
  return (await kubectl(["get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}"]))
    .trim();
}

/** The network namespace the kubelet shim made for a pod (`ip netns` name). */
export async function podNetns(namespace: string, pod: string): Promise<string> {
  const uid = await podUid(namespace, pod);
  return (await Deno.readTextFile(`${RUN_DIR}/pods/${uid}/netns`)).trim();
}

/** A pod's IP, as its status gives it. */
export async function podIP(namespace: string, pod: string): Promise<string> {
  return (await kubectl(["get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.podIP}"]))
    .trim();
}

/** The number of pods/portforward requests the audit log has seen for `pod`. */
export async function portForwardRequests(pod: string): Promise<number> {
  const log = await Deno.readTextFile(`${RUN_DIR}/audit.log`);
  return log.split("\n").filter((line) =>
    line.includes('"subresource":"portforward"') && line.includes(`"name":"${pod}"`) &&
    line.includes('"stage":"ResponseStarted"')
  ).length;
}

/** The current pid of a pod's container process. */
export async function podPid(namespace: string, pod: string, container: string): Promise<number> {
  const uid = await podUid(namespace, pod);
  return Number((await Deno.readTextFile(`${RUN_DIR}/pods/${uid}/${container}.pid`)).trim());
}

/** Runs a command inside a pod's network namespace (`ip netns exec`), e.g. socat or dig. */
export async function execInPod(
  namespace: string,
  pod: string,
  cmd: string[],
  options: { input?: string | Uint8Array } = {},
): Promise<CommandResult> {
  const netns = await podNetns(namespace, pod);
  return await runCommand(["ip", "netns", "exec", netns, ...cmd], options);
}

/** Waits until a pod matching `selector` is Ready; returns its name. */
export async function waitForReadyPod(
  namespace: string,
  selector: string,
  timeoutMs = 90_000,
): Promise<string> {
  return await waitFor(`a Ready pod ${selector} in ${namespace}`, async () => {
    const list = await kubectlJson<{ items: PodLike[] }>([
      "get",
      "pods",
      "-n",
      namespace,
      "-l",
      selector,
    ]);
    const ready = list.items.find((pod) =>
      !pod.metadata.deletionTimestamp &&
      pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")
    );
    return ready?.metadata.name;
  }, { timeoutMs });
}

/** The parts of a Pod the helpers read. */
export interface PodLike {
  metadata: { name: string; uid: string; deletionTimestamp?: string };
  status?: {
    podIP?: string;
    phase?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: {
      name: string;
      restartCount: number;
      ready: boolean;
      state: Record<string, { reason?: string; message?: string; exitCode?: number }>;
    }[];
  };
}

/** A running `kubectl port-forward`. */
export interface PortForward extends AsyncDisposable {
  /** Local port for each remote port, in the order asked. */
  readonly localPorts: number[];
  /** kubectl's process id. */
  readonly pid: number;
  close(): Promise<void>;
}

/** Starts `kubectl port-forward TARGET :PORT…` on 127.0.0.1 and waits until it listens. */
export async function kubectlPortForward(
  namespace: string,
  target: string,
  remotePorts: number[],
  kubeconfig = KUBECONFIG,
): Promise<PortForward> {
  const child = new Deno.Command(KUBECTL, {
    args: [
      `--kubeconfig=${kubeconfig}`,
      "port-forward",
      "-n",
      namespace,
      "--address=127.0.0.1",
      target,
      ...remotePorts.map((p) => `:${p}`),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const localPorts: number[] = [];
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const close = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // exited already
    }
    await child.status;
    await lines.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
  };
  const timer = setTimeout(() => close(), 30_000);
  try {
    while (localPorts.length < remotePorts.length) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`kubectl port-forward ${target} exited before listening`);
      buffered += value;
      for (const m of buffered.matchAll(/Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)/g)) {
        const index = remotePorts.indexOf(Number(m[2]));
        if (index >= 0 && localPorts[index] === undefined) localPorts[index] = Number(m[1]);
      }
    }
  } finally {
    clearTimeout(timer);
  }
  // Keep draining stdout so kubectl never blocks on a full pipe.
  (async () => {
    while (!(await lines.read().catch(() => ({ done: true }))).done) { /* drain */ }
  })();
  return { localPorts, pid: child.pid, close, [Symbol.asyncDispose]: close };
}

/** Reads a TCP connection until the peer closes it. */
export async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

/** Reads one `\n`-terminated line from a TCP connection (without the newline). */
export async function readLine(conn: Deno.Conn): Promise<string> {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  while (true) {
    const n = await conn.read(one);
    if (n === null || one[0] === 0x0a) break;
    bytes.push(one[0]);
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** The test cluster's node network namespace, where kube-proxy writes its rules. */
const NODE_NETNS = "relay-node";

/**
 * Waits until kube-proxy sends the Service's cluster IP to its endpoints. Until then a UDP
 * datagram to it goes nowhere, and the conntrack entry it leaves keeps the next ones from the
 * same socket going nowhere too, for as long as that entry lives.
 */
export async function waitForServiceRules(namespace: string, service: string): Promise<void> {
  const ip = (await kubectl([
    "get",
    "service",
    service,
    "-n",
    namespace,
    "-o",
    "jsonpath={.spec.clusterIP}",
  ])).trim(); // deno-fmt-ignore
  await waitFor(`kube-proxy's rules for service ${namespace}/${service} (${ip})`, async () => {
    const nat = await runCommand(["ip", "netns", "exec", NODE_NETNS, "iptables-save", "-t", "nat"]);
    return nat.stdout.split("\n").some((line) => line.includes(`-d ${ip}/32`) && line.includes("KUBE-SVC-"));
  }, { timeoutMs: 30_000 });
}
