/**
 * -R on a port the app serves, on the real cluster: steal (the app no longer sees the
 * connections; callers from other pods, inside the pod and through a port-forward all come
 * here) and mirror (the app answers; a copy of what callers send comes here and never
 * delays them). Stopping relay, killing it, or a dead session's leftovers: no rule of
 * relay's stays in the pod's netfilter tables, and the app answers again.
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
  kubectlPortForward,
  podIP,
  podNetns,
  readLine,
  runCommand,
  waitFor,
} from "./harness.ts";
import { grant, shippedRules } from "./rbac.ts";
import { relayCommand, startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

/** A local server that greets with `text`, then records what it receives (and echoes it). */
function recordingServer(text: string) {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: string[] = [];
  (async () => {
    for await (const conn of server) {
      (async () => {
        if (text) await conn.write(new TextEncoder().encode(`${text}\n`));
        const buf = new Uint8Array(65536);
        let got = "";
        for (let n; (n = await conn.read(buf)) !== null;) {
          got += new TextDecoder().decode(buf.subarray(0, n));
          if (text) await conn.write(buf.subarray(0, n));
        }
        received.push(got);
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed already
        }
      });
    }
  })().catch(() => {});
  return { port: server.addr.port, received, close: () => server.close() };
}

/** socat from `pod`'s network namespace to `address`, sending `input`; its first line. */
async function ask(
  namespace: string,
  pod: string,
  address: string,
  input: string | Uint8Array = "",
) {
  const result = await execInPod(namespace, pod, [
    "socat",
    "-T5",
    "-",
    `TCP:${address},connect-timeout=5`,
  ], { input });
  return { line: result.stdout.split("\n")[0], stdout: result.stdout, stderr: result.stderr };
}

/** relay's netfilter chains in `pod`'s network namespace (IPv4 and IPv6 nat tables). */
async function relayChains(namespace: string, pod: string): Promise<string[]> {
  const netns = await podNetns(namespace, pod);
  const chains: string[] = [];
  for (const save of ["iptables-save", "ip6tables-save"]) {
    const out = await runCommand(["ip", "netns", "exec", netns, save, "-t", "nat"]);
    chains.push(...out.stdout.split("\n").filter((line) => line.includes("RELAY-")));
  }
  return chains;
}

Deno.test({
  name:
    "story: relay --target pod/P -R 8080:L --steal as a user of the relay-targeted Role: callers from another pod, inside P (over 127.0.0.1 and ::1) and through kubectl port-forward get the local server; after Ctrl-C they get the app again and no rule is left in P",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const user = "relay-steal-user";
    await grant(ns.name, user, await shippedRules("relay-targeted"));
    const targetIP = await podIP(ns.name, "echo-pod");
    const local = recordingServer("stolen by the laptop");
    try {
      await using relay = await startRelay([
        "--as",
        user,
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `8080:${local.port}`,
        "--steal",
      ]);
      assertEquals(
        relay.readyLines[0],
        `Stealing pod/echo-pod:8080 -> 127.0.0.1:${local.port} (the app no longer sees these ` +
          "connections; mirror with --mirror or feature.network.incoming: mirror)",
      );
      const fromOtherPod = await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`);
      assertEquals(fromOtherPod.line, "stolen by the laptop", fromOtherPod.stderr);
      const fromInside = await ask(ns.name, "echo-pod", "127.0.0.1:8080");
      assertEquals(fromInside.line, "stolen by the laptop", fromInside.stderr);
      // localhost may be ::1 inside the pod: that caller is stolen too.
      const overIPv6 = await ask(ns.name, "echo-pod", "[::1]:8080");
      assertEquals(overIPv6.line, "stolen by the laptop", overIPv6.stderr);
      {
        await using pf = await kubectlPortForward(ns.name, "pod/echo-pod", [8080]);
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: pf.localPorts[0] });
        assertEquals(await readLine(conn), "stolen by the laptop");
        conn.close();
      }
      assert((await relayChains(ns.name, "echo-pod")).length > 0, "relay's rules are in the pod");

      assertEquals(await relay.stop("SIGINT"), 0, relay.stderr());
      assertEquals(await relayChains(ns.name, "echo-pod"), []);
      const after = await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`);
      assertMatch(after.line, /^pod=echo-pod /, after.stderr);
      const insideAfter = await ask(ns.name, "echo-pod", "127.0.0.1:8080");
      assertMatch(insideAfter.line, /^pod=echo-pod /, insideAfter.stderr);
      const overIPv6After = await ask(ns.name, "echo-pod", "[::1]:8080");
      assertMatch(overIPv6After.line, /^pod=echo-pod /, overIPv6After.stderr);
    } finally {
      local.close();
    }
  },
});

/** sha256 hex of `text`. */
function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test({
  name:
    "story: -R on a port the app serves mirrors by default: the caller gets the app's answer and the local server the same bytes, and the app sees the agent come from the pod's own address, not loopback; a local server that never reads, or none at all, does not delay the caller, and a dropped copy is told",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("mirror");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const copies = recordingServer("");
    const greetings = recordingServer("");
    // Accepts and never reads: the copy backs up behind it.
    const stuck = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    (async () => {
      for await (const conn of stuck) held.push(conn);
    })().catch(() => {});
    const nobody = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const absentPort = nobody.addr.port;
    nobody.close();
    try {
      await using relay = await startRelay([
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `9000:${copies.port}`,
        "-R",
        `9001:${stuck.addr.port}`,
        "-R",
        `9002:${absentPort}`,
        "-R",
        `8080:${greetings.port}`,
      ], { readyLines: 4 });
      assertEquals(
        relay.readyLines[0],
        `Mirroring pod/echo-pod:9000 -> 127.0.0.1:${copies.port} (the app still answers; steal ` +
          "with --steal or feature.network.incoming: steal)",
      );
      const said = await ask(ns.name, echo.pods.deploy, `${targetIP}:9000`, "mirror me\n");
      assertEquals(said.line, "mirror me", said.stderr);
      // The app on every address is reached at the pod's own address: loopback, which apps
      // may trust, would make every outside caller look local.
      const greeted = await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`, "hi\n");
      assertEquals(greeted.line, `pod=echo-pod addr=${targetIP}:8080`, greeted.stderr);
      // A caller inside the pod is mirrored too.
      const inside = await ask(ns.name, "echo-pod", "127.0.0.1:9000", "from inside\n");
      assertEquals(inside.line, "from inside", inside.stderr);
      await waitFor(
        "the copies at the local server",
        () =>
          (copies.received.includes("mirror me\n") &&
            copies.received.includes("from inside\n")) || undefined,
        {
          timeoutMs: 10_000,
        },
      );

      // 32 MiB to the app's hash port while the local copy is never read: the app's answer.
      const payload = new Uint8Array(32 << 20).map((_, i) => i % 251);
      const hashed = await ask(
        ns.name,
        echo.pods.deploy,
        `${targetIP}:9001`,
        payload as unknown as string,
      );
      assertEquals(hashed.line, `${payload.length} ${sha256(payload)}`, hashed.stderr);
      await waitFor(
        "relay to say the stalled copy was dropped",
        () =>
          /pod\/echo-pod:9001: the copy of a connection from \S+ was dropped/.test(
            relay.stderr(),
          ) || undefined,
        { timeoutMs: 10_000 },
      );
      // No local server at all: the caller still gets the app's pattern.
      const pattern = await ask(ns.name, echo.pods.deploy, `${targetIP}:9002`, "5\n");
      assertEquals(pattern.stdout.length, 5, pattern.stderr);
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
      assertEquals(await relayChains(ns.name, "echo-pod"), []);
    } finally {
      copies.close();
      greetings.close();
      stuck.close();
      for (const conn of held) conn.close();
    }
  },
});

Deno.test({
  name:
    "story: --steal with an HTTP path filter: on one keep-alive connection from another pod, /api requests reach the laptop and the others the app; a connection that is not HTTP reaches the app",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal-filter");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    // The app: an HTTP server on port 8081 of the target pod.
    const app = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        await podNetns(ns.name, "echo-pod"),
        Deno.execPath(),
        "run",
        "--allow-net",
        new URL("../fixtures/http_named.ts", import.meta.url).pathname,
        "app",
        "8081",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const appReady = app.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let laptopConnections = 0;
    const laptop = Deno.serve(
      {
        hostname: "127.0.0.1",
        port: 0,
        onListen: () => {},
      },
      (request) => new Response(`laptop ${request.method} ${new URL(request.url).pathname}\n`),
    );
    const counter = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    // Counts the connections relay delivers, then hands them to the HTTP server.
    (async () => {
      for await (const conn of counter) {
        laptopConnections++;
        const upstream = await Deno.connect({ hostname: "127.0.0.1", port: laptop.addr.port });
        conn.readable.pipeTo(upstream.writable).catch(() => {});
        upstream.readable.pipeTo(conn.writable).catch(() => {});
      }
    })().catch(() => {});
    try {
      assertMatch((await appReady.read()).value ?? "", /app listening/);
      await using relay = await startRelay([
        "-n",
        ns.name,
        "--target",
        "pod/echo-pod",
        "-R",
        `8081:${counter.addr.port}`,
        "--http-path-filter",
        "^/api",
      ]);
      assertMatch(
        relay.readyLines[0],
        /^Stealing pod\/echo-pod:8081 -> .* \(HTTP requests whose path matches \^\/api;/,
      );
      const curl = await execInPod(ns.name, echo.pods.deploy, [
        "curl",
        "-sv",
        "--http1.1",
        `http://${targetIP}:8081/api/orders`,
        `http://${targetIP}:8081/home`,
        `http://${targetIP}:8081/api/users`,
      ]);
      assertEquals(
        curl.stdout,
        "laptop GET /api/orders\napp GET /home\nlaptop GET /api/users\n",
        curl.stderr,
      );
      assertMatch(curl.stderr, /Re-?using existing connection/);
      assertEquals(laptopConnections, 1);
      // Not HTTP: the app's HTTP server answers it (400), and the laptop never sees it.
      const raw = await ask(ns.name, echo.pods.deploy, `${targetIP}:8081`, "hello there\r\n\r\n");
      assertMatch(raw.line, /^HTTP\/1\.1 400/);
      assertEquals(laptopConnections, 1);
      assertEquals(await relay.stop(), 0, relay.stderr());
      assertEquals(await relayChains(ns.name, "echo-pod"), []);
    } finally {
      app.kill("SIGKILL");
      await app.status;
      await appReady.cancel().catch(() => {});
      counter.close();
      await laptop.shutdown();
    }
  },
});

Deno.test({
  name:
    "story: relay killed with SIGKILL while stealing: the agent removes its rules and the app answers again within the idle timeout",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal-kill");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const local = recordingServer("stolen");
    try {
      const relay = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `8080:${local.port}`, "--steal"],
        { env: { RELAY_AGENT_IDLE_EXIT: "5s" } },
      );
      assertEquals((await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`)).line, "stolen");
      await relay.stop("SIGKILL");
      await waitFor(
        "no relay rule left in the pod",
        async () => (await relayChains(ns.name, "echo-pod")).length === 0 || undefined,
        { timeoutMs: 40_000 },
      );
      assertMatch(
        (await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`)).line,
        /^pod=echo-pod /,
      );
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: a dead session's rules left in the pod are removed by the next agent, which then steals as asked",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal-stale");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const netns = await podNetns(ns.name, "echo-pod");
    // A session whose agent (port 29999, not listening) died without cleaning up: it
    // redirects the app's greeting port to a port nobody answers on.
    for (
      const args of [
        ["-N", "RELAY-29999-IN"],
        ["-N", "RELAY-29999-OUT"],
        ["-I", "PREROUTING", "1", "-j", "RELAY-29999-IN"],
        ["-I", "OUTPUT", "1", "-j", "RELAY-29999-OUT"],
        [
          "-A",
          "RELAY-29999-IN",
          "-p",
          "tcp",
          "--dport",
          "8080",
          "-j",
          "REDIRECT",
          "--to-ports",
          "29998",
        ],
      ]
    ) {
      const r = await runCommand([
        "ip",
        "netns",
        "exec",
        netns,
        "iptables",
        "-w",
        "5",
        "-t",
        "nat",
        ...args,
      ]);
      assertEquals(r.code, 0, r.stderr);
    }
    const broken = await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`);
    assertEquals(broken.line, "", "the planted rule sends callers nowhere");
    const local = recordingServer("stolen after the sweep");
    try {
      await using relay = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `9000:${local.port}`, "--steal"],
      );
      const chains = await relayChains(ns.name, "echo-pod");
      assert(!chains.some((line) => line.includes("29999")), chains.join("\n"));
      assertMatch(
        (await ask(ns.name, echo.pods.deploy, `${targetIP}:8080`)).line,
        /^pod=echo-pod /,
      );
      const stolen = await ask(ns.name, echo.pods.deploy, `${targetIP}:9000`);
      assertEquals(stolen.line, "stolen after the sweep", stolen.stderr);
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      local.close();
    }
  },
});

Deno.test({
  name:
    "story: a second relay taking a port another relay has in the same pod (stolen, or listened on as a free port) exits 2 with one line saying so; the first keeps the port",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal-twice");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const targetIP = await podIP(ns.name, "echo-pod");
    const first = recordingServer("the first session");
    try {
      const second = (port: number) =>
        runCommand(
          relayCommand(["-n", ns.name, "--target", "pod/echo-pod", "-R", `${port}:1`, "--steal"]),
          { env: { KUBECONFIG }, signal: AbortSignal.timeout(60_000) },
        );
      const refusedAndKept = async (port: number, run: Awaited<ReturnType<typeof second>>) => {
        assertEquals(run.code, 2, run.stderr);
        const lines = run.stderr.trim().split("\n").filter((l) => !l.startsWith("stopped the"));
        assertEquals(lines.length, 1, run.stderr);
        assertMatch(lines[0], new RegExp(`another relay session already takes port ${port} `));
        const kept = await ask(ns.name, echo.pods.deploy, `${targetIP}:${port}`);
        assertEquals(kept.line, "the first session", `${port}: ${kept.stderr}`);
      };
      // The first session steals 8080.
      await using relay = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `8080:${first.port}`, "--steal"],
      );
      await refusedAndKept(8080, await second(8080));
      // Another listens on 9300, a port nothing in the pod serves: no rule marks it, yet a
      // steal of it is refused too.
      await using listening = await startRelay(
        ["-n", ns.name, "--target", "pod/echo-pod", "-R", `9300:${first.port}`],
      );
      await refusedAndKept(9300, await second(9300));
      assertEquals(await listening.stop(), 0, listening.stderr());
      assertEquals(await relay.stop(), 0, relay.stderr());
    } finally {
      first.close();
    }
  },
});

Deno.test({
  name:
    "story: in a namespace whose Pod Security level forbids NET_ADMIN, --steal fails with one line naming the reason and leaves nothing behind",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("steal-psa");
    await createEchoWorkloads(ns.name, ["pod"]);
    await kubectl(["label", "namespace", ns.name, "pod-security.kubernetes.io/enforce=baseline"]);
    const [cmd, ...args] = relayCommand(
      ["-n", ns.name, "--target", "pod/echo-pod", "-R", "8080:18080", "--steal"],
    );
    const run = await runCommand(["env", `KUBECONFIG=${KUBECONFIG}`, cmd, ...args]);
    const lines = run.stderr.trim().split("\n");
    assertEquals(lines.length, 1, run.stderr);
    assertMatch(lines[0], /NET_ADMIN/);
    assert(run.code !== 0);
    const pod = await kubectlJson<{ spec: { ephemeralContainers?: unknown[] } }>(
      ["get", "pod", "echo-pod", "-n", ns.name],
    );
    assertEquals(pod.spec.ephemeralContainers ?? [], []);
    assertEquals((await kubectl(["get", "secrets", "-n", ns.name, "-o", "name"])).trim(), "");
  },
});
