/**
 * --target and -R on the real cluster: the agent joins the target pod as an ephemeral
 * container, -L connections leave from that pod, and -R brings connections that reach a port
 * of that pod to a port on this machine; stopping relay frees the port.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  createTestNamespace,
  ensureCluster,
  execInPod,
  KUBECONFIG,
  kubectl,
  kubectlJson,
  podIP,
  podNetns,
  readLine,
  runCommand,
  waitFor,
} from "./harness.ts";
import { grant, permissionsOf, shippedRules, without } from "./rbac.ts";
import { relayCommand, startRelay } from "./relay_process.ts";
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

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: unknown;
}

/** The environment of each ephemeral container in `pod`. */
async function ephemeralEnv(namespace: string, pod: string): Promise<EnvVar[][]> {
  const json = await kubectlJson<{ spec: { ephemeralContainers?: { env?: EnvVar[] }[] } }>(
    ["get", "pod", pod, "-n", namespace],
  );
  return (json.spec.ephemeralContainers ?? []).map((c) => c.env ?? []);
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
    "story: relay --target pod/P -R brings connections to a port of P here, several -R and an -L at once; the -L leaves from P; Ctrl-C frees the port in P within 5 s; P's spec holds only the token's digest",
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
        "-L",
        ":echo:80",
      ], { readyLines: 4 });
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
      // A short Service name resolves with the target pod's resolver (its namespace).
      const viaName = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[1] });
      assertMatch(await readLine(viaName), new RegExp(`^pod=${echo.pods.deploy} `));
      viaName.close();

      assertEquals(await relay.stop("SIGINT"), 0, relay.stderr());
      assertMatch(relay.stderr(), /stopped the agent in pod/);
      await waitFor(
        "port 9500 free again in the target pod",
        async () => !await listensIn(ns.name, "echo-pod", 9500),
        { timeoutMs: 5_000 },
      );
      // The container was added in one request, with nothing beside it to clean up.
      const [env] = await ephemeralEnv(ns.name, "echo-pod");
      assertEquals(env.map((e) => e.name), ["RELAY_AGENT_TOKEN_SHA256"]);
      assertMatch(env[0].value ?? "", /^[0-9a-f]{64}$/);
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
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: the target pod deleted while relay runs ends relay with exit 1 and one line naming it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-gone");
    await createEchoWorkloads(ns.name, ["pod"]);
    const local = localServer("unused");
    try {
      await using relay = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `9506:${local.port}`],
      );
      await kubectl(["-n", ns.name, "delete", "pod", "echo-pod", "--wait=false"]);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const code = await Promise.race([
        relay.exited,
        new Promise<string>((resolve) =>
          timer = setTimeout(() => resolve("still running"), 60_000)
        ),
      ]).finally(() => clearTimeout(timer));
      assertEquals(code, 1, relay.stderr());
      const errors = relay.stderr().split("\n").filter((l) => l.startsWith("error:"));
      assertEquals(errors.length, 1, relay.stderr());
      assertMatch(errors[0], /--target pod\/echo-pod went away while relay ran/);
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
    const user = "relay-targeted-user";
    await grant(ns.name, user, await shippedRules("relay-targeted"));
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

/** A local server for -R bulk: `get N` sends N zero bytes; anything else is counted and hashed. */
function bulkServer(): { port: number; close(): void } {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of server) {
      (async () => {
        const buf = new Uint8Array(256 * 1024);
        const first = await conn.read(buf);
        if (first === null) return;
        const head = new TextDecoder().decode(buf.subarray(0, Math.min(first, 32)));
        const get = head.match(/^get (\d+)\n/);
        if (get) {
          const zeros = new Uint8Array(256 * 1024);
          for (let left = Number(get[1]); left > 0;) {
            const n = await conn.write(zeros.subarray(0, Math.min(left, zeros.length)));
            left -= n;
          }
          await conn.closeWrite();
          return;
        }
        const hash = createHash("sha256").update(buf.subarray(0, first));
        let count = first;
        for (let n; (n = await conn.read(buf)) !== null;) {
          hash.update(buf.subarray(0, n));
          count += n;
        }
        await conn.write(new TextEncoder().encode(`${count} ${hash.digest("hex")}\n`));
        await conn.closeWrite();
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // already closed
        }
      });
    }
  })().catch(() => {});
  return { port: server.addr.port, close: () => server.close() };
}

/** sha256 of `bytes` zero bytes. */
function zerosHash(bytes: number): string {
  const hash = createHash("sha256");
  const block = new Uint8Array(1 << 20);
  for (let left = bytes; left > 0; left -= block.length) {
    hash.update(block.subarray(0, Math.min(left, block.length)));
  }
  return hash.digest("hex");
}

Deno.test({
  name:
    "story: through -R, 1 GiB up from a caller in the cluster and 1 GiB down to it arrive intact",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-bulk");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const local = bulkServer();
    const GiB = 1 << 30;
    try {
      await using relay = await startRelay([
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `9510:${local.port}`,
      ]);
      const netns = await podNetns(ns.name, echo.pods.deploy);
      let started = performance.now();
      const up = await runCommand([
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        `head -c ${GiB} /dev/zero | socat -t120 -T30 - TCP:${targetIP}:9510`,
      ]);
      const upSeconds = (performance.now() - started) / 1000;
      assertEquals(up.stdout.trim(), `${GiB} ${zerosHash(GiB)}`, up.stderr);
      started = performance.now();
      const down = await runCommand([
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        `printf 'get ${GiB}\\n' | socat -t120 -T30 - TCP:${targetIP}:9510 | sha256sum`,
      ]);
      const downSeconds = (performance.now() - started) / 1000;
      assertEquals(down.stdout.split(" ")[0], zerosHash(GiB), down.stderr);
      console.log(
        `-R 1 GiB: up ${(1024 / upSeconds).toFixed(0)} MiB/s, down ${
          (1024 / downSeconds).toFixed(0)
        } MiB/s`,
      );
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: after a rollout, a new relay --target deploy/NAME joins a Ready pod of the new ReplicaSet",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-rollout");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const local = localServer("unused");
    try {
      await kubectl(["rollout", "restart", "-n", ns.name, "deploy/echo"]);
      await kubectl(["rollout", "status", "-n", ns.name, "deploy/echo", "--timeout=90s"]);
      const pods = await kubectlJson<{
        items: { metadata: { name: string; deletionTimestamp?: string } }[];
      }>(["get", "pods", "-n", ns.name, "-l", "app=echo"]);
      const current = pods.items.filter((p) => !p.metadata.deletionTimestamp)
        .map((p) => p.metadata.name);
      await using relay = await startRelay(
        ["-n", ns.name, "--target", "deploy/echo", "-R", `9511:${local.port}`],
      );
      const joined = relay.readyLines[0].match(/^Listening on pod\/([^:]+):9511 /)?.[1];
      assert(joined && joined !== echo.pods.deploy, `joined ${joined}, the pod before the rollout`);
      assert(current.includes(joined), `joined ${joined}, not one of ${current.join(", ")}`);
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: a rollout of the --target workload under a running relay moves -R to a new pod: announced there once, callers there reach the local server, no error",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-moves");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const local = localServer("moved with it");
    try {
      await using relay = await startRelay(
        ["-n", ns.name, "--target", "deploy/echo", "-R", `9512:${local.port}`],
      );
      await kubectl(["rollout", "restart", "-n", ns.name, "deploy/echo"]);
      const moved = await waitFor("a ready line naming a pod of the new ReplicaSet", () => {
        const pods = relay.readyLines.map((l) => l.match(/^Listening on pod\/([^:]+):9512 /)?.[1]);
        return pods.length > 1 ? pods : undefined;
      }, { timeoutMs: 90_000 });
      assertEquals(moved.length, 2, relay.readyLines.join("\n"));
      assert(moved[1] && moved[1] !== echo.pods.deploy, `moved to ${moved[1]}`);
      const through = await firstLineFrom(
        ns.name,
        "echo-pod",
        `${await podIP(ns.name, moved[1])}:9512`,
      );
      assertEquals(through.line, "moved with it", through.stderr);
      const errors = relay.stderr().split("\n").filter((l) => l.startsWith("error:"));
      assertEquals(errors, [], relay.stderr());
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: without any one permission of the relay-targeted Role, relay --target fails naming it and adds nothing to the pod",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-perms");
    await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const rules = await shippedRules("relay-targeted");
    const scenario: Record<string, string[]> = {
      "get pods": ["--target", "pod/echo-pod"],
      "list pods": ["--target", "deploy/echo"],
      "watch pods": ["--target", "pod/echo-pod"],
      "patch pods/ephemeralcontainers": ["--target", "pod/echo-pod"],
      "get pods/portforward": ["--target", "pod/echo-pod"],
      "create pods/portforward": ["--target", "pod/echo-pod"],
      "get services": ["--target", "svc/echo"],
      "get deployments": ["--target", "deploy/echo"],
      "get statefulsets": ["--target", "sts/echo-sts"],
      "get daemonsets": ["--target", "ds/echo-ds"],
      "get replicasets": ["--target", "rs/echo-rs"],
    };
    const permissions = permissionsOf(rules);
    for (const { verb, resource } of permissions) {
      assert(`${verb} ${resource}` in scenario, `no scenario for ${verb} ${resource}`);
    }
    for (const [i, { verb, resource }] of permissions.entries()) {
      const permission = `${verb} ${resource}`;
      const user = `relay-targeted-${i}`;
      await grant(ns.name, user, without(rules, resource, verb));
      const result = await runCommand(
        relayCommand(["--as", user, "-n", ns.name, ...scenario[permission], "-R", "9520:1"]),
        { env: { KUBECONFIG } },
      );
      assert(result.code !== 0, `relay succeeded without ${permission}:\n${result.stderr}`);
      const error = result.stderr.trim().split("\n").find((l) => l.includes("forbidden"));
      assert(error?.includes(permission), `without ${permission}:\n${result.stderr}`);
    }
    // Nothing was added to the target pods.
    const pods = await kubectlJson<{ items: { spec: { ephemeralContainers?: unknown[] } }[] }>(
      ["get", "pods", "-n", ns.name],
    );
    assert(pods.items.every((p) => (p.spec.ephemeralContainers ?? []).length === 0));
  },
});

Deno.test({
  name:
    "story: through -R, a local server that stops reading stalls only its own connection; another -R connection still answers",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("target-stall");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    // Accepts and never reads.
    const stalled = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    (async () => {
      for await (const conn of stalled) held.push(conn);
    })().catch(() => {});
    const lively = localServer("still answering");
    let flood: Deno.ChildProcess | undefined;
    try {
      await using relay = await startRelay([
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `9530:${stalled.addr.port}`,
        "-R",
        `9531:${lively.port}`,
      ], { readyLines: 2 });
      const netns = await podNetns(ns.name, echo.pods.deploy);
      flood = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          netns,
          "sh",
          "-c",
          `head -c ${256 << 20} /dev/zero | socat -T60 - TCP:${targetIP}:9530`,
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      await waitFor("the stalled connection", () => Promise.resolve(held.length > 0 || undefined), {
        timeoutMs: 20_000,
      });
      // Give the flood time to fill every window and buffer on its way.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      for (let i = 0; i < 3; i++) {
        const reply = await firstLineFrom(ns.name, "echo-pod", `${targetIP}:9531`);
        assertEquals(reply.line, "still answering", reply.stderr);
      }
      const floodEnded = await Promise.race([
        flood.status.then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 100)),
      ]);
      assert(!floodEnded, "the flood's connection ended: nothing was stalled");
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      try {
        flood?.kill("SIGKILL");
      } catch {
        // it ended by itself
      }
      await flood?.status;
      stalled.close();
      held.forEach((c) => c.close());
      lively.close();
    }
  },
});
