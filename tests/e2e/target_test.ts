/**
 * --target and -R on the real cluster: the agent joins the target pod as an ephemeral
 * container, -L connections leave from that pod, and -R brings connections that reach a port
 * of that pod to a port on this machine; stopping relay frees the port and leaves no Secret.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import { parseAllDocuments } from "yaml";
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
  REPO_DIR,
  runCommand,
  waitFor,
} from "./harness.ts";
import { AGENT_SELECTOR } from "./agents.ts";
import { startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

/** A server on this machine's loopback that greets each connection with `text` and echoes. */
function localServer(text: string): { port: number; close(): void } {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of server) {
      (async () => {
        await conn.write(new TextEncoder().encode(`${text}\n`));
        const buf = new Uint8Array(65536);
        for (let n; (n = await conn.read(buf)) !== null;) {
          for (let at = 0; at < n;) at += await conn.write(buf.subarray(at, n));
        }
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed by the peer's reset
        }
      });
    }
  })().catch(() => {});
  return { port: server.addr.port, close: () => server.close() };
}

/** What a caller in `fromPod` reads first from `address` (socat, 5 s at most). */
async function firstLineFrom(namespace: string, fromPod: string, address: string) {
  const result = await execInPod(namespace, fromPod, [
    "socat",
    "-T5",
    "-",
    `TCP:${address},connect-timeout=5`,
  ], { input: "" });
  return { code: result.code, line: result.stdout.split("\n")[0], stderr: result.stderr };
}

async function podIP(namespace: string, pod: string): Promise<string> {
  return (await kubectl(["get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.podIP}"]))
    .trim();
}

/** Whether something listens on TCP `port` inside `pod`'s network namespace. */
async function listensIn(namespace: string, pod: string, port: number): Promise<boolean> {
  const ss = await runCommand([
    "ip",
    "netns",
    "exec",
    await podNetns(namespace, pod),
    "ss",
    "-ltnH",
  ]);
  return ss.stdout.split("\n").some((line) => new RegExp(`[:\\]]${port}\\s`).test(line));
}

/** The session Secrets relay left in `namespace`. */
async function sessionSecrets(namespace: string): Promise<string[]> {
  const out = await kubectl([
    "get",
    "secrets",
    "-n",
    namespace,
    "-l",
    AGENT_SELECTOR,
    "-o",
    "name",
  ]);
  return out.split("\n").filter(Boolean);
}

interface EphemeralStatus {
  name: string;
  state: { running?: unknown; terminated?: { exitCode: number }; waiting?: unknown };
}

async function ephemeralStatuses(namespace: string, pod: string): Promise<EphemeralStatus[]> {
  const json = await kubectlJson<{ status: { ephemeralContainerStatuses?: EphemeralStatus[] } }>(
    ["get", "pod", pod, "-n", namespace],
  );
  return json.status.ephemeralContainerStatuses ?? [];
}

Deno.test({
  name:
    "story: relay --target pod/P -R brings connections to a port of P here, several -R and an -L at once; the -L leaves from P; Ctrl-C frees the port in P within 5 s and leaves no Secret",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-r");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const first = localServer("hello from the laptop");
    const second = localServer("second local server");
    // A destination that says who called it: the -L connection must come from the target pod.
    const whoCalls = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        await podNetns(ns.name, echo.pods.deploy),
        "socat",
        "TCP-LISTEN:7000,fork,reuseaddr",
        "SYSTEM:echo $SOCAT_PEERADDR",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await using relay = await startRelay([
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `9500:${first.port}`,
        "-R",
        `9501:${second.port}`,
        "-L",
        `:${echo.deployPodIP}:7000`,
      ], { readyLines: 3 });
      assert(
        relay.readyLines.includes(`Listening on pod/echo-pod:9500 -> 127.0.0.1:${first.port}`),
        relay.readyLines.join("\n"),
      );
      assertMatch(
        relay.readyLines.join("\n"),
        /Forwarding from 127\.0\.0\.1:\d+ -> .* \(from pod\/echo-pod\)/,
      );

      // A caller in another pod reaches the target pod's IP and gets this machine's answer.
      const viaFirst = await firstLineFrom(ns.name, echo.pods.deploy, `${targetIP}:9500`);
      assertEquals(viaFirst.line, "hello from the laptop", viaFirst.stderr);
      const viaSecond = await firstLineFrom(ns.name, echo.pods.deploy, `${targetIP}:9501`);
      assertEquals(viaSecond.line, "second local server", viaSecond.stderr);

      // The -L connection leaves from the target pod's IP.
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[0] });
      const peer = await readLine(conn);
      conn.close();
      assert(peer === targetIP, `the destination saw ${peer}, not the target pod's ${targetIP}`);

      assertEquals(await relay.stop("SIGINT"), 0, relay.stderr());
      assertMatch(relay.stderr(), /stopped the agent in pod/);
      await waitFor(
        "port 9500 free again in the target pod",
        async () => !await listensIn(ns.name, "echo-pod", 9500),
        { timeoutMs: 5_000 },
      );
      assertEquals(await sessionSecrets(ns.name), []);
      await waitFor("the agent's ephemeral container terminated", async () => {
        const statuses = await ephemeralStatuses(ns.name, "echo-pod");
        return statuses.length === 1 && statuses[0].state.terminated !== undefined;
      }, { timeoutMs: 10_000 });
    } finally {
      whoCalls.kill("SIGKILL");
      await whoCalls.status;
      first.close();
      second.close();
    }
  },
});

Deno.test({
  name:
    "story: with nothing listening locally, a caller to the -R port is closed at once and relay says so once; when a local server starts, the next caller gets through",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-refused");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const localPort = probe.addr.port;
    probe.close();
    await using relay = await startRelay([
      "-n",
      ns.name,
      "--target",
      "deploy/echo",
      "-R",
      `9502:${localPort}`,
    ]);
    assertMatch(relay.readyLines[0], new RegExp(`^Listening on pod/${echo.pods.deploy}:9502 `));
    const started = Date.now();
    for (let i = 0; i < 3; i++) {
      const refused = await firstLineFrom(
        ns.name,
        "echo-pod",
        `${await podIP(ns.name, echo.pods.deploy)}:9502`,
      );
      assertEquals(refused.line, "");
    }
    assert(Date.now() - started < 10_000, "refused callers were held instead of closed");
    const said = relay.stderr().split("\n").filter((l) => l.includes("nothing answers"));
    assertEquals(said.length, 1, relay.stderr());
    const server = Deno.listen({ hostname: "127.0.0.1", port: localPort });
    (async () => {
      for await (const conn of server) {
        await conn.write(new TextEncoder().encode("now listening\n")).catch(() => {});
        conn.close();
      }
    })().catch(() => {});
    try {
      const through = await firstLineFrom(
        ns.name,
        "echo-pod",
        `${await podIP(ns.name, echo.pods.deploy)}:9502`,
      );
      assertEquals(through.line, "now listening", through.stderr);
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      server.close();
    }
  },
});

Deno.test({
  name:
    "story: relay killed with SIGKILL leaves an agent in the target pod that frees the -R port and exits by itself after its idle timeout",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-kill");
    await createEchoWorkloads(ns.name, ["pod"]);
    const local = localServer("unused");
    try {
      const relay = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `9503:${local.port}`],
        { env: { RELAY_AGENT_IDLE_EXIT: "3s" } },
      );
      assert(await listensIn(ns.name, "echo-pod", 9503), "the agent listens on 9503");
      await relay.stop("SIGKILL");
      // The agent notices the silent tunnel (keep-alive, ~9 s), frees the port, then idles out.
      await waitFor(
        "port 9503 free in the target pod",
        async () => !await listensIn(ns.name, "echo-pod", 9503),
        { timeoutMs: 30_000 },
      );
      await waitFor("the agent exited", async () => {
        const statuses = await ephemeralStatuses(ns.name, "echo-pod");
        return statuses.every((s) => s.state.terminated !== undefined) ? true : undefined;
      }, { timeoutMs: 30_000 });
      assertEquals(await sessionSecrets(ns.name), []);
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: a user bound only to manifests/rbac.yaml's relay-targeted Role uses --target and -R",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-rbac");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const docs = parseAllDocuments(await Deno.readTextFile(`${REPO_DIR}/manifests/rbac.yaml`))
      .map((d) => d.toJS());
    const role = docs.find((d) => d?.kind === "Role" && d.metadata.name === "relay-targeted");
    assert(role, "rbac.yaml holds the relay-targeted Role");
    const user = "relay-targeted-user";
    await kubectl(["apply", "-n", ns.name, "-f", "-"], {
      input: JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [
          { ...role, metadata: { name: user } },
          {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "RoleBinding",
            metadata: { name: user },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: user },
            subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: user }],
          },
        ],
      }),
    });
    await waitFor(`${user}'s Role to take effect`, async () => {
      const result = await runCommand([
        KUBECTL,
        `--kubeconfig=${KUBECONFIG}`,
        "auth",
        "can-i",
        "patch",
        "pods",
        "--subresource=ephemeralcontainers",
        "-n",
        ns.name,
        "--as",
        user,
      ]);
      return result.stdout.trim() === "yes";
    }, { timeoutMs: 20_000 });
    const local = localServer("hello as the targeted user");
    try {
      await using relay = await startRelay([
        "--as",
        user,
        "-n",
        ns.name,
        "--target",
        "deploy/echo",
        "-R",
        `9504:${local.port}`,
      ]);
      const targetIP = await podIP(ns.name, echo.pods.deploy);
      const reply = await firstLineFrom(ns.name, "echo-pod", `${targetIP}:9504`);
      assertEquals(reply.line, "hello as the targeted user", reply.stderr);
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      local.close();
    }
  },
});
