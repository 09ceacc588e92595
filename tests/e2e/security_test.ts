/**
 * Security on the real cluster: the agent is no open relay (loopback only, a per-session
 * token, a version check), its pod is hardened, and manifests/rbac.yaml is exactly what relay
 * needs — with it relay forwards TCP and UDP, without any one of its rules relay says which.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import { type DestinationRule, parseDestinationRule, tokenDigest } from "../../lib/contract.ts";
import { startAgentPod } from "../../lib/kube/agent_pod.ts";
import { loadKube } from "../../lib/kube/config.ts";
import { dialPortForward } from "../../lib/kube/portforward.ts";
import { connectTunnel, HandshakeError } from "../../lib/tunnel/handshake.ts";
import { OpenError } from "../../lib/tunnel/types.ts";
import { PROTOCOL_VERSION } from "../../lib/tunnel/frame.ts";
import {
  createTestNamespace,
  ensureCluster,
  execInPod,
  KUBECONFIG,
  KUBECTL,
  kubectl,
  kubectlJson,
  podNetns,
  readLine,
  RUN_DIR,
  runCommand,
  waitFor,
} from "./harness.ts";
import { AGENT_SELECTOR, inBatches } from "./agents.ts";
import { grant, shippedRules, without } from "./rbac.ts";
import { relayCommand, startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

const AGENT_PORT = 4646;

/** The parts of the agent's Pod and Job the hardening checks read. */
interface AgentPodJson {
  metadata: { name: string; uid: string };
  spec: {
    automountServiceAccountToken?: boolean;
    enableServiceLinks?: boolean;
    securityContext?: {
      runAsNonRoot?: boolean;
      runAsUser?: number;
      seccompProfile?: { type: string };
    };
    containers: {
      name: string;
      env?: {
        name: string;
        value?: string;
        valueFrom?: unknown;
      }[];
      resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
      securityContext?: {
        allowPrivilegeEscalation?: boolean;
        readOnlyRootFilesystem?: boolean;
        privileged?: boolean;
        capabilities?: { drop?: string[]; add?: string[] };
      };
      volumeMounts?: { mountPath: string }[];
    }[];
  };
  status: { podIP?: string };
}

async function agentPods(namespace: string): Promise<AgentPodJson[]> {
  return (await kubectlJson<{ items: AgentPodJson[] }>(
    ["get", "pods", "-n", namespace, "-l", AGENT_SELECTOR],
  )).items;
}

async function agentJobs(namespace: string): Promise<string[]> {
  const out = await kubectl(
    [
      "get",
      "jobs",
      "-n",
      namespace,
      "-l",
      AGENT_SELECTOR,
      "-o",
      "jsonpath={.items[*].metadata.name}",
    ],
  );
  return out.split(/\s+/).filter(Boolean);
}

async function theAgentPod(namespace: string): Promise<AgentPodJson> {
  return await waitFor("the agent pod with an IP", async () => {
    const pods = await agentPods(namespace);
    return pods.length === 1 && pods[0].status.podIP ? pods[0] : undefined;
  });
}

/**
 * What the agent's spec holds of the session token: its SHA-256, which every reader of the
 * spec may see, as the only entry of the agent's environment.
 */
function agentTokenDigest(agent: AgentPodJson["spec"]["containers"][number]): string {
  assertEquals(agent.env?.map((e) => e.name), ["RELAY_AGENT_TOKEN_SHA256"]);
  const [env] = agent.env!;
  assertEquals(env.valueFrom, undefined);
  assertMatch(env.value ?? "", /^[0-9a-f]{64}$/, "a SHA-256 in hex");
  return env.value!;
}

/** An agent this test started, with a token it knows. */
interface KnownAgent {
  token: string;
  pod: AgentPodJson;
  /** Its log, stdout and stderr, as the test cluster's shim keeps it. */
  log: string;
}

/**
 * Only relay holds its session's token (the agent's spec has its digest), so what needs the
 * token runs on a second agent that this test starts as relay starts its own (startAgentPod,
 * the same Job) with a token it knows. Resolves once the agent listens.
 */
async function withKnownAgent(
  namespace: string,
  allow: DestinationRule[] | undefined,
  fn: (agent: KnownAgent) => Promise<void>,
): Promise<void> {
  const kube = loadKube({ kubeconfig: KUBECONFIG, asGroups: [] });
  const token = "a-token-this-test-knows-".repeat(3);
  const started = await startAgentPod(kube, {
    namespace,
    token,
    allow,
    podRunningTimeoutMs: 30_000,
  });
  try {
    const pod = await kubectlJson<AgentPodJson>(["get", "pod", started.podName, "-n", namespace]);
    const log = `${RUN_DIR}/pods/${pod.metadata.uid}/agent.log`;
    await waitFor("the second agent to listen", async () => {
      const text = await Deno.readTextFile(log).catch(() => "");
      return text.includes("listening on 127.0.0.1");
    }, { timeoutMs: 10_000 });
    await fn({ token, pod, log });
  } finally {
    await started.stop();
    kube.close();
  }
}

async function greeting(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    return await readLine(conn);
  } finally {
    conn.close();
  }
}

/** Sends one datagram to 127.0.0.1:port and returns the reply (fails after 5 s). */
async function udpRoundTrip(port: number, text: string): Promise<string> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    await socket.send(new TextEncoder().encode(text), {
      transport: "udp",
      hostname: "127.0.0.1",
      port,
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no UDP reply on port ${port}`)), 5_000);
    });
    try {
      const [data] = await Promise.race([socket.receive(), timeout]);
      return new TextDecoder().decode(data);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    socket.close();
  }
}

/**
 * Opens a port-forward to the agent (as the admin, or `as` another user) and tries a handshake
 * with `options`.
 */
async function handshakeWith(
  namespace: string,
  pod: string,
  options: { token: string; protocolVersion?: number },
  as?: string,
): Promise<HandshakeError> {
  const kube = loadKube({ kubeconfig: KUBECONFIG, as, asGroups: [] });
  try {
    const transport = await dialPortForward(kube, { namespace, pod, port: AGENT_PORT });
    try {
      const tunnel = await connectTunnel(transport, { ...options, handshakeTimeoutMs: 10_000 });
      tunnel.close("should not have been accepted");
      throw new Error(`the agent accepted ${JSON.stringify(options)}`);
    } catch (error) {
      if (!(error instanceof HandshakeError)) throw error;
      return error;
    }
  } finally {
    kube.close();
  }
}

Deno.test({
  name:
    "story: the agent is no open relay — loopback only (another pod gets connection refused), a wrong or missing token and a wrong protocol version are refused on both sides and logged, and its pod is hardened",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("sec-agent");
    await createEchoWorkloads(ns.name, ["pod"]);
    await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    const pod = await theAgentPod(ns.name);
    const agentIP = pod.status.podIP!;

    // Hardening, as the spec says (the local cluster runs processes as root, so the spec is
    // what there is to check).
    const agent = pod.spec.containers.find((c) => c.name === "agent")!;
    assertEquals(pod.spec.automountServiceAccountToken, false);
    assertEquals(pod.spec.enableServiceLinks, false);
    assertEquals(pod.spec.securityContext?.runAsNonRoot, true);
    assert((pod.spec.securityContext?.runAsUser ?? 0) > 0, "runs as a non-zero uid");
    assertEquals(pod.spec.securityContext?.seccompProfile?.type, "RuntimeDefault");
    assertEquals(agent.securityContext?.allowPrivilegeEscalation, false);
    assertEquals(agent.securityContext?.readOnlyRootFilesystem, true);
    assertEquals(agent.securityContext?.capabilities?.drop, ["ALL"]);
    assertEquals(agent.securityContext?.capabilities?.add, undefined);
    assert(!agent.securityContext?.privileged);
    assert(agent.resources?.requests?.cpu && agent.resources.requests.memory, "requests");
    assert(agent.resources?.limits?.memory, "a memory limit");
    assert(
      !agent.volumeMounts?.some((m) => m.mountPath.includes("serviceaccount")),
      "no service-account token is mounted",
    );
    const digest = agentTokenDigest(agent);

    // The agent listens on its pod's loopback and nowhere else...
    const listening = await runCommand(
      ["ip", "netns", "exec", await podNetns(ns.name, pod.metadata.name), "ss", "-ltnH"],
    );
    const agentSockets = listening.stdout.split("\n").filter((l) => l.includes(`:${AGENT_PORT} `));
    assert(agentSockets.length > 0, listening.stdout);
    for (const line of agentSockets) assertMatch(line, /\s127\.0\.0\.1:4646\s/);
    // ...so another pod in the cluster, which can reach the agent pod's IP, is refused.
    const fromOtherPod = await execInPod(ns.name, "echo-pod", [
      "socat",
      "-T3",
      "-u",
      "OPEN:/dev/null",
      `TCP:${agentIP}:${AGENT_PORT},connect-timeout=5`,
    ]);
    assert(fromOtherPod.code !== 0, "a second pod could connect to the agent's port");
    assertMatch(fromOtherPod.stderr, /Connection refused/);

    // Through the port-forward (as the admin, who can reach it), a wrong token is refused...
    const wrong = await handshakeWith(ns.name, pod.metadata.name, { token: "not-the-token" });
    assertEquals(wrong.code, "token");
    assertMatch(wrong.message, /refused the session token/);
    // ...also with another protocol version: the token is checked first, and the refusal
    // tells a peer without it nothing of the agent's version...
    const both = await handshakeWith(ns.name, pod.metadata.name, {
      token: "not-the-token",
      protocolVersion: PROTOCOL_VERSION + 41,
    });
    assertEquals(both.code, "token");
    assertEquals(both.peerVersion, "");
    // ...so is none at all, and so is the digest the spec shows...
    const missing = await handshakeWith(ns.name, pod.metadata.name, { token: "" });
    assertEquals(missing.code, "token");
    const shown = await handshakeWith(ns.name, pod.metadata.name, { token: digest });
    assertEquals(shown.code, "token");
    // The agent logged each refusal, and never the digest it checks against.
    const log = `${RUN_DIR}/pods/${pod.metadata.uid}/agent.log`;
    const refusals = await waitFor("four refusals in the agent's log", async () => {
      const lines = (await Deno.readTextFile(log)).split("\n")
        .filter((l) => l.includes("refused a tunnel"));
      return lines.length >= 4 ? lines : undefined;
    }, { timeoutMs: 10_000 });
    assert(refusals.every((l) => /token/.test(l)), refusals.join("\n"));
    assert(!refusals.join("\n").includes(digest), "the agent logs the token's digest");

    // With the token (on a second agent, see withKnownAgent), another protocol version gets an
    // error naming both.
    await withKnownAgent(ns.name, undefined, async (known) => {
      assertEquals(agentTokenDigest(known.pod.spec.containers[0]), await tokenDigest(known.token));
      const version = await handshakeWith(ns.name, known.pod.metadata.name, {
        token: known.token,
        protocolVersion: PROTOCOL_VERSION + 41,
      });
      assertEquals(version.code, "version");
      assertMatch(
        version.message,
        new RegExp(
          `${PROTOCOL_VERSION + 41}.*${PROTOCOL_VERSION}|${PROTOCOL_VERSION}.*${
            PROTOCOL_VERSION + 41
          }`,
        ),
      );
      const logged = await waitFor("the version refusal in its log", async () => {
        const text = await Deno.readTextFile(known.log);
        return text.includes(String(PROTOCOL_VERSION + 41)) ? text : undefined;
      }, { timeoutMs: 10_000 });
      assert(!logged.includes(known.token), "the agent logs the token");
    });

    // relay's own tunnels were not disturbed.
    assertMatch(await greeting(relay.ports[0]), /^pod=echo-pod /);
    assertEquals(await relay.stop(), 0, relay.stderr());
  },
});

Deno.test({
  name:
    "story: relay given an --agent-image of another tunnel protocol stops in seconds with one line naming both versions, and deletes the agent",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("sec-version");
    await createEchoWorkloads(ns.name, ["pod"]);
    const started = Date.now();
    // The test image's agent speaks first, as relay's does, and refuses the HELLO after it:
    // relay has started forwarding by then, so the refusal must end the run, not only a start.
    const result = await runCommand(
      relayCommand([
        "-n",
        ns.name,
        "--agent-image",
        "relay-test/agent-other-protocol:1",
        "--pod-running-timeout",
        "2m",
        "pod/echo-pod",
        ":8080",
      ]),
      { env: { KUBECONFIG }, signal: AbortSignal.timeout(90_000) },
    );
    const seconds = (Date.now() - started) / 1000;
    assertEquals(result.code, 1, `exit ${result.code} after ${seconds} s:\n${result.stderr}`);
    const lines = result.stderr.trimEnd().split("\n");
    const errors = lines.filter((l) => l.startsWith("error:"));
    assertEquals(errors.length, 1, result.stderr);
    assertMatch(
      errors[0],
      new RegExp(
        `\\(tunnel protocol ${PROTOCOL_VERSION}\\) and relay agent 99\\.0\\.0-next \\(tunnel ` +
          `protocol ${PROTOCOL_VERSION + 1}\\) cannot talk to each other`,
      ),
    );
    assert(seconds < 60, `relay waited ${seconds} s for an agent that had answered`);
    assertMatch(result.stderr, /deleted agent pod/);
    await waitFor("no agent Job or pod left", async () => {
      const left = await kubectl([
        "get",
        "jobs,pods",
        "-n",
        ns.name,
        "-l",
        AGENT_SELECTOR,
        "-o",
        "name",
      ]);
      return left.trim() === "" ? true : undefined;
    }, { timeoutMs: 30_000 });
  },
});

Deno.test({
  name: "story: --patch changes the agent's hardening deliberately, and only what it names",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("sec-patch");
    const echo = await createEchoWorkloads(ns.name, ["pod"]);
    const ip = (await kubectl(
      ["get", "pod", echo.pods.pod, "-n", ns.name, "-o", "jsonpath={.status.podIP}"],
    )).trim();
    const patch = {
      spec: {
        securityContext: { runAsUser: 4321, seccompProfile: { type: "Unconfined" } },
        automountServiceAccountToken: true,
      },
    };
    await using relay = await startRelay(
      ["-n", ns.name, "--patch", JSON.stringify(patch), `ip/${ip}`, ":8080"],
    );
    const pod = await theAgentPod(ns.name);
    assertEquals(pod.spec.securityContext?.runAsUser, 4321);
    assertEquals(pod.spec.securityContext?.seccompProfile?.type, "Unconfined");
    assertEquals(pod.spec.automountServiceAccountToken, true);
    // What the patch did not name keeps its hardened value.
    assertEquals(pod.spec.securityContext?.runAsNonRoot, true);
    assertEquals(pod.spec.enableServiceLinks, false);
    assertEquals(pod.spec.containers[0].securityContext?.readOnlyRootFilesystem, true);
    assertEquals(pod.spec.containers[0].securityContext?.capabilities?.drop, ["ALL"]);
    assertMatch(await greeting(relay.ports[0]), /^pod=echo-pod /);
    assertEquals(await relay.stop(), 0, relay.stderr());
  },
});

Deno.test({
  name: "story: the agent pod passes Pod Security 'restricted' and widens its ephemeral port " +
    "range, a safe sysctl the kubelet applies; an agent pod the kubelet refuses fails at once, " +
    "naming why, leaving no Job",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("sec-sysctl");
    await createEchoWorkloads(ns.name, ["pod"]);
    // Agents in a namespace where the API server enforces the strictest Pod Security level.
    await using restricted = await createTestNamespace("sec-restricted");
    await kubectl(
      ["label", "namespace", restricted.name, "pod-security.kubernetes.io/enforce=restricted"],
    );
    const plainPod = await runCommand([
      KUBECTL,
      `--kubeconfig=${KUBECONFIG}`,
      "run",
      "plain",
      "--image=relay-test/echo:latest",
      "-n",
      restricted.name,
    ]);
    assertMatch(plainPod.stderr, /violates PodSecurity "restricted/, "the level is enforced");
    {
      await using relay = await startRelay(
        ["-n", ns.name, "--agent-namespace", restricted.name, "pod/echo-pod", ":8080"],
      );
      const pod = await theAgentPod(restricted.name);
      const range = await runCommand([
        "ip",
        "netns",
        "exec",
        await podNetns(restricted.name, pod.metadata.name),
        "sysctl",
        "-n",
        "net.ipv4.ip_local_port_range",
      ]);
      assertEquals(range.stdout.trim().split(/\s+/), ["1024", "65535"]);
      assertMatch(await greeting(relay.ports[0]), /^pod=echo-pod /);
      assertEquals(await relay.stop(), 0, relay.stderr());
    }
    // A kubelet refuses sysctls outside its safe set; relay says so at once.
    const patch = {
      spec: { securityContext: { sysctls: [{ name: "net.core.somaxconn", value: "1024" }] } },
    };
    const result = await runCommand(
      relayCommand(["-n", ns.name, "--patch", JSON.stringify(patch), "pod/echo-pod", ":8080"]),
      { env: { KUBECONFIG } },
    );
    assertEquals(result.code, 1, result.stderr);
    assertMatch(result.stderr, /is Failed \(SysctlForbidden: .*net\.core\.somaxconn/);
    await waitFor("no agent Job left", async () => (await agentJobs(ns.name)).length === 0);
  },
});

Deno.test({
  name:
    "story: a user bound only to manifests/rbac.yaml forwards TCP and UDP; without any one of its permissions relay fails naming it and leaves no agent behind",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    const rules = await shippedRules();
    await using ns = await createTestNamespace("sec-rbac");
    const echo = await createEchoWorkloads(ns.name);
    const podIP = (await kubectl(
      ["get", "pod", echo.pods.pod, "-n", ns.name, "-o", "jsonpath={.status.podIP}"],
    )).trim();

    // Exactly the shipped Role: every target kind, TCP and UDP.
    await grant(ns.name, "relay-test-user", rules);
    const targets: [string, string, string][] = [
      ["svc/echo", ":80", echo.pods.deploy],
      ["pod/echo-pod", ":8080@tcp", echo.pods.pod],
      ["deploy/echo", ":8080@tcp", echo.pods.deploy],
      ["sts/echo-sts", ":8080@tcp", echo.pods.sts],
      ["ds/echo-ds", ":8080@tcp", echo.pods.ds],
      ["rs/echo-rs", ":8080@tcp", echo.pods.rs],
      [`ip/${podIP}`, ":8080", echo.pods.pod],
    ];
    {
      await using relay = await startRelay(
        [
          "--as",
          "relay-test-user",
          "-n",
          ns.name,
          ...targets.flatMap(([t, p]) => [t, p]),
          "pod/echo-pod",
          ":9000@udp",
        ],
        { readyLines: targets.length + 1 },
      );
      for (const [i, [target, , pod]] of targets.entries()) {
        assertMatch(await greeting(relay.ports[i]), new RegExp(`^pod=${pod} `), target);
      }
      assertEquals(await udpRoundTrip(relay.ports[targets.length], "over udp"), "over udp");
      assertEquals(await relay.stop(), 0, relay.stderr());
      assertMatch(relay.stderr(), /deleted agent pod/);
    }
    await waitFor("no agent Job", async () => (await agentJobs(ns.name)).length === 0, {
      timeoutMs: 15_000,
    });

    // Each permission left out in turn: a command that needs it, and whether it is optional.
    const scenario: Record<string, { args: string[]; optional?: boolean }> = {
      "get services": { args: ["svc/echo", ":80"] },
      "get pods": { args: ["pod/echo-pod", ":8080@tcp"] },
      "list pods": { args: ["deploy/echo", ":8080@tcp"] },
      "watch pods": { args: ["deploy/echo", ":8080@tcp"] },
      "get pods/portforward": { args: [`ip/${podIP}`, ":8080"] },
      "create pods/portforward": { args: [`ip/${podIP}`, ":8080"] },
      "get deployments": { args: ["deploy/echo", ":8080@tcp"] },
      "get statefulsets": { args: ["sts/echo-sts", ":8080@tcp"] },
      "get daemonsets": { args: ["ds/echo-ds", ":8080@tcp"] },
      "get replicasets": { args: ["rs/echo-rs", ":8080@tcp"] },
      "create jobs": { args: [`ip/${podIP}`, ":8080"] },
      "delete jobs": { args: [`ip/${podIP}`, ":8080"] },
      // Only read to explain an agent stuck in Pending.
      "list events": { args: [`ip/${podIP}`, ":8080"], optional: true },
    };
    const permissions = rules.flatMap((rule) =>
      rule.resources.flatMap((resource) => rule.verbs.map((verb) => ({ verb, resource })))
    );
    for (const { verb, resource } of permissions) {
      assert(`${verb} ${resource}` in scenario, `no scenario for ${verb} ${resource}`);
    }
    await inBatches(permissions.map((p, i) => ({ ...p, user: `relay-test-user-${i}` })), 3, async (
      { verb, resource, user },
    ) => {
      const permission = `${verb} ${resource}`;
      const { args, optional } = scenario[permission];
      await grant(ns.name, user, without(rules, resource, verb));
      if (optional) {
        await using relay = await startRelay(["--as", user, "-n", ns.name, ...args]);
        assertMatch(await greeting(relay.ports[0]), /^pod=/, `without ${permission}`);
        assertEquals(await relay.stop(), 0, relay.stderr());
        return;
      }
      const result = await runCommand(relayCommand(["--as", user, "-n", ns.name, ...args]), {
        env: { KUBECONFIG },
      });
      assert(result.code !== 0, `relay succeeded without ${permission}:\n${result.stderr}`);
      const lines = result.stderr.trim().split("\n");
      const error = lines.find((l) => l.includes("forbidden"));
      assert(error?.includes(permission), `without ${permission}:\n${result.stderr}`);
      assert(!/^\s+at /m.test(result.stderr), `a stack trace:\n${result.stderr}`);
    });
    // As the admin: no agent Job or pod survived any of those runs.
    await waitFor(
      "no agent Job or pod",
      async () =>
        (await agentJobs(ns.name)).length === 0 && (await agentPods(ns.name)).length === 0,
      {
        timeoutMs: 15_000,
      },
    );
  },
});

Deno.test({
  name:
    "story: a co-tenant bound to manifests/rbac.yaml reads the agent's pod (and its Job) but finds nothing that opens a tunnel: the spec holds only the token's SHA-256",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    const rules = await shippedRules();
    await using ns = await createTestNamespace("sec-cotenant");
    await createEchoWorkloads(ns.name, ["pod"]);
    await grant(ns.name, "relay-cotenant", rules);
    await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    const pod = await theAgentPod(ns.name);

    // What the co-tenant may read about the session: the agent's pod (the Role lists pods);
    // and its Job, as anyone who may get jobs would read it.
    const asCotenant = ["--as", "relay-cotenant", "-n", ns.name];
    const pods = await kubectl(["get", "pods", "-l", AGENT_SELECTOR, "-o", "json", ...asCotenant]);
    const jobs = await kubectl(["get", "jobs", "-l", AGENT_SELECTOR, "-o", "json", "-n", ns.name]);
    const candidates = new Set<string>();
    const collect = (value: unknown): void => {
      if (typeof value === "string" && value.length > 0 && value.length <= 512) {
        candidates.add(value);
      } else if (Array.isArray(value)) value.forEach(collect);
      else if (value && typeof value === "object") Object.values(value).forEach(collect);
    };
    collect(JSON.parse(pods));
    collect(JSON.parse(jobs));
    assert(candidates.has(pod.metadata.name), "the co-tenant did read the agent's pod");
    const digest = agentTokenDigest(pod.spec.containers.find((c) => c.name === "agent")!);
    assert(candidates.has(digest), "the co-tenant did read the token's digest");

    // Each string found, the digest included, tried as the token through the co-tenant's own
    // port-forward: refused.
    await inBatches([...candidates], 8, async (candidate) => {
      const refused = await handshakeWith(
        ns.name,
        pod.metadata.name,
        { token: candidate },
        "relay-cotenant",
      );
      assertEquals(refused.code, "token", candidate);
    });

    // relay's own tunnels are untouched.
    assertMatch(await greeting(relay.ports[0]), /^pod=echo-pod /);
    assertEquals(await relay.stop(), 0, relay.stderr());
  },
});

Deno.test({
  name:
    "story: even with the session's token, the agent opens only what the session named: not its own port, loopback, cloud metadata, or another pod; its pod spec lists what it may open",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("sec-policy");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    const pod = await theAgentPod(ns.name);
    const agent = pod.spec.containers.find((c) => c.name === "agent")!;
    const echoIP = (await kubectl(
      ["get", "pod", "echo-pod", "-n", ns.name, "-o", "jsonpath={.status.podIP}"],
    )).trim();
    const args = (agent as unknown as { args: string[] }).args;
    assertEquals(args.filter((_, i) => args[i - 1] === "--allow"), [`tcp/${echoIP}/8080`]);

    // The same spec with a token this test knows (withKnownAgent): the agent opens only that.
    const allow = args.filter((_, i) => args[i - 1] === "--allow")
      .map((rule) => parseDestinationRule(rule)!);
    await withKnownAgent(ns.name, allow, async (known) => {
      const kube = loadKube({ kubeconfig: KUBECONFIG, asGroups: [] });
      const transport = await dialPortForward(kube, {
        namespace: ns.name,
        pod: known.pod.metadata.name,
        port: AGENT_PORT,
      });
      const tunnel = await connectTunnel(transport, {
        token: known.token,
        handshakeTimeoutMs: 10_000,
      });
      try {
        // What the session named opens.
        const named = await tunnel.open({ protocol: "tcp", host: echoIP, port: 8080 });
        named.reset();
        const refused: [string, number][] = [
          ["127.0.0.1", AGENT_PORT],
          ["localhost", 8080],
          ["169.254.169.254", 80],
          [echo.deployPodIP, 8080],
          [echoIP, 9000],
        ];
        for (const [host, port] of refused) {
          const error = await tunnel.open({ protocol: "tcp", host, port }).then(
            (stream) => (stream.reset(), undefined),
            (e: unknown) => e,
          );
          assert(
            error instanceof OpenError && error.code === "denied",
            `${host}:${port} was not denied: ${error}`,
          );
        }
      } finally {
        tunnel.close("test over");
        kube.close();
      }
    });
    assertMatch(await greeting(relay.ports[0]), /^pod=echo-pod /);
    assertEquals(await relay.stop(), 0, relay.stderr());
  },
});
