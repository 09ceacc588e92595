/**
 * Resilience end to end (issue 4): relay against the local cluster while things fail under
 * it — the agent dies, a Deployment rolls, the client is signalled or killed, a proxy cuts
 * idle connections, the API server restarts. Every assertion is about bytes that came back
 * (greetings name the pod that served them), not just about relay staying up.
 *
 * The API server restart disturbs everything else on the cluster, so it runs last and always
 * brings the API server back before it ends.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import {
  createTestNamespace,
  ensureCluster,
  KUBECONFIG,
  KUBECTL,
  kubectl,
  kubectlJson,
  type PodLike,
  podPid,
  readLine,
  RUN_DIR,
  waitFor,
} from "./harness.ts";
import { startDaemonOnce } from "../../scripts/cluster/control_plane.ts";
import { startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

const encoder = new TextEncoder();
const AGENT_SELECTOR = "app.kubernetes.io/name=relay-agent";

/** Resolves with what `promise` gave, or rejects once `ms` have passed. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Opens a connection to the echo server's greet port and returns the greeting's pod name. */
async function greet(port: number, timeoutMs = 12_000): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const line = await within(timeoutMs, "greeting", readLine(conn));
    const pod = line.match(/^pod=(\S+) /)?.[1];
    if (!pod) throw new Error(`no greeting (got ${JSON.stringify(line)})`);
    return pod;
  } finally {
    conn.close();
  }
}

/** Sends a line on an open greet connection and returns what is echoed. */
async function echoLine(conn: Deno.Conn, text: string): Promise<string> {
  await conn.write(encoder.encode(`${text}\n`));
  return await within(5_000, "echo", readLine(conn));
}

/**
 * What the peer does with an open connection: "closed" once it ends it (EOF or reset), or
 * "open" if still open after `ms`.
 */
async function closedWithin(conn: Deno.Conn, ms: number): Promise<"closed" | "open"> {
  const buf = new Uint8Array(1024);
  const ended = (async () => {
    try {
      while ((await conn.read(buf)) !== null) { /* discard */ }
    } catch {
      // a reset is a clean close too: the client is told, it does not hang
    }
    return "closed" as const;
  })();
  return await Promise.race([
    ended,
    new Promise<"open">((resolve) => setTimeout(() => resolve("open"), ms)),
  ]);
}

/** Keeps trying new connections until one is greeted; returns the pod and when. */
async function firstGreeting(port: number, deadlineMs: number): Promise<string> {
  return await waitFor("a new connection through relay", () => greet(port).catch(() => false), {
    timeoutMs: deadlineMs,
    intervalMs: 200,
  });
}

/** Agent pods in a namespace, with their phases; Terminating ones included. */
async function agentPods(namespace: string): Promise<PodLike[]> {
  const list = await kubectlJson<{ items: PodLike[] }>([
    "get",
    "pods",
    "-n",
    namespace,
    "-l",
    AGENT_SELECTOR,
  ]);
  return list.items;
}

async function onlyAgentPod(namespace: string): Promise<string> {
  const pods = (await agentPods(namespace)).filter((p) => !p.metadata.deletionTimestamp);
  assertEquals(pods.length, 1, `agent pods: ${pods.map((p) => p.metadata.name)}`);
  return pods[0].metadata.name;
}

Deno.test({
  name: "story: the agent process is killed mid-forward — the open connection is closed, " +
    "a new one is served by a new agent within 10 s",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-kill");
    await createEchoWorkloads(ns.name, ["pod"]);
    await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    const port = relay.ports[0];
    const agent = await onlyAgentPod(ns.name);

    const inFlight = await Deno.connect({ hostname: "127.0.0.1", port });
    assertMatch(await readLine(inFlight), /^pod=echo-pod /);
    assertEquals(await echoLine(inFlight, "before"), "before");

    const pid = await podPid(ns.name, agent, "agent");
    const killedAt = Date.now();
    Deno.kill(pid, "SIGKILL");

    assertEquals(await firstGreeting(port, 10_000), "echo-pod");
    const recoveredMs = Date.now() - killedAt;
    assert(recoveredMs < 10_000, `recovered after ${recoveredMs} ms`);
    console.log(`new connection served ${recoveredMs} ms after the agent was killed`);
    assertEquals(await closedWithin(inFlight, 10_000), "closed", "the in-flight connection hung");
    inFlight.close();

    const now = await onlyAgentPod(ns.name);
    assert(now !== agent, "the agent pod was not replaced");
    assertMatch(
      relay.stderr(),
      new RegExp(`agent pod \\S+/${agent} exited .*starting a new agent`),
    );
    assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
  },
});

Deno.test({
  name: "story: the agent pod is deleted mid-forward — relay starts a new agent and carries on",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-del");
    await createEchoWorkloads(ns.name, ["pod"]);
    await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    const port = relay.ports[0];
    const agent = await onlyAgentPod(ns.name);
    const inFlight = await Deno.connect({ hostname: "127.0.0.1", port });
    assertMatch(await readLine(inFlight), /^pod=echo-pod /);

    const deletedAt = Date.now();
    await kubectl(["delete", "pod", "-n", ns.name, agent, "--wait=false"]);
    assertEquals(await firstGreeting(port, 10_000), "echo-pod");
    console.log(`new connection served ${Date.now() - deletedAt} ms after the agent was deleted`);
    assertEquals(await closedWithin(inFlight, 10_000), "closed", "the in-flight connection hung");
    inFlight.close();
    const now = await onlyAgentPod(ns.name);
    assert(now !== agent, "the agent pod was not replaced");
    assertMatch(relay.stderr(), new RegExp(`agent pod \\S+/${agent} .*starting a new agent`));
    assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
  },
});

Deno.test({
  name: "story: a rolling update of the target Deployment — with a connection every 100 ms, " +
    "every one opened after the new pod is Ready succeeds, on the new pod",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-roll");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const oldPod = echo.pods.deploy;
    await using relay = await startRelay(["-v", "-n", ns.name, "deploy/echo", ":8080"]);
    const port = relay.ports[0];
    assertEquals(await greet(port), oldPod);

    const results: { at: number; pod?: string; error?: string }[] = [];
    let clienting = true;
    const client = (async () => {
      const pending: Promise<void>[] = [];
      while (clienting) {
        const at = Date.now();
        pending.push(
          greet(port, 5_000).then(
            (pod) => void results.push({ at, pod }),
            (e) => void results.push({ at, error: String(e) }),
          ),
        );
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await Promise.all(pending);
    })();

    try {
      await kubectl(["rollout", "restart", "-n", ns.name, "deploy/echo"]);
      // When a pod other than the old one is Ready, as the API server tells anyone.
      const { newPod, readyAt } = await waitFor("the new pod to be Ready", async () => {
        const pods = await kubectlJson<{ items: PodLike[] }>([
          "get",
          "pods",
          "-n",
          ns.name,
          "-l",
          "app=echo",
        ]);
        const ready = pods.items.find((p) =>
          p.metadata.name !== oldPod && !p.metadata.deletionTimestamp &&
          p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")
        );
        return ready ? { newPod: ready.metadata.name, readyAt: Date.now() } : undefined;
      }, { timeoutMs: 90_000, intervalMs: 100 });
      await kubectl(["rollout", "status", "-n", ns.name, "deploy/echo", "--timeout=90s"]);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      clienting = false;
      await client;

      const after = results.filter((r) => r.at > readyAt);
      assert(after.length >= 20, `only ${after.length} connections after the new pod was Ready`);
      const failed = after.filter((r) => r.error);
      assertEquals(
        failed,
        [],
        `connections failed after ${newPod} was Ready; relay said:\n${relay.stderr()}`,
      );
      assertEquals([...new Set(after.map((r) => r.pod))], [newPod]);
      console.log(
        `${results.length} connections, ${results.filter((r) => r.error).length} failed ` +
          `(all before the new pod was Ready), ${after.length} after it: all on ${newPod}`,
      );
    } finally {
      clienting = false;
      await client;
    }
    assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
  },
});

Deno.test({
  name: "story: SIGTERM stops relay with exit 0, it reports deleting the agent, and no agent " +
    "pod remains 5 s later",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-term");
    await createEchoWorkloads(ns.name, ["pod"]);
    const relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"]);
    assertEquals(await greet(relay.ports[0]), "echo-pod");
    const agent = await onlyAgentPod(ns.name);
    assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    const stoppedAt = Date.now();
    assertMatch(relay.stderr(), new RegExp(`deleted agent pod ${ns.name}/${agent}`));
    await waitFor("the agent pod to be gone", async () => (await agentPods(ns.name)).length === 0, {
      timeoutMs: 5_000,
    });
    console.log(`agent pod gone ${Date.now() - stoppedAt} ms after relay exited`);
  },
});

Deno.test({
  name: "story: a client killed with SIGKILL leaves an agent that exits by itself after its " +
    "idle timeout",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-kill9");
    await createEchoWorkloads(ns.name, ["pod"]);
    const relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"], {
      env: { RELAY_AGENT_IDLE_EXIT: "5s" },
    });
    assertEquals(await greet(relay.ports[0]), "echo-pod");
    const agent = await onlyAgentPod(ns.name);
    await relay.stop("SIGKILL");
    const killedAt = Date.now();
    // Nothing deleted it: the agent noticed it had no tunnel for 5 s and exited 0, so its
    // Job finished (and its TTL removes it later).
    const phase = await waitFor("the agent to exit by itself", async () => {
      const pod = (await agentPods(ns.name)).find((p) => p.metadata.name === agent);
      const phase = pod?.status?.phase;
      return phase === "Succeeded" || phase === "Failed" ? phase : undefined;
    }, { timeoutMs: 60_000 });
    assertEquals(phase, "Succeeded");
    const seconds = (Date.now() - killedAt) / 1000;
    assert(seconds >= 4, `the agent exited after ${seconds} s, before its idle timeout`);
    console.log(`agent exited ${seconds.toFixed(1)} s after its client was SIGKILLed`);
    // A finished Job: its ttlSecondsAfterFinished removes it (and the pod) without relay.
    const jobs = await kubectlJson<{ items: { status?: { succeeded?: number } }[] }>([
      "get",
      "jobs",
      "-n",
      ns.name,
      "-l",
      AGENT_SELECTOR,
    ]);
    await waitFor("the agent Job to be complete", async () => {
      const list = await kubectlJson<{ items: { status?: { succeeded?: number } }[] }>([
        "get",
        "jobs",
        "-n",
        ns.name,
        "-l",
        AGENT_SELECTOR,
      ]);
      return list.items.length === 1 && list.items[0].status?.succeeded === 1;
    }, { timeoutMs: 15_000 });
    assertEquals(jobs.items.length, 1);
  },
});

// ----- an idle-cutting proxy between the client and the API server ----------------------

/** A haproxy in TCP mode (TLS passes through) that cuts connections idle for 5 s. */
async function startIdleCuttingProxy(): Promise<
  { port: number; pid: number; stop(): Promise<void> }
> {
  const server = new URL(
    (JSON.parse(await Deno.readTextFile(KUBECONFIG)) as {
      clusters: { cluster: { server: string } }[];
    }).clusters[0].cluster.server,
  );
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const dir = await Deno.makeTempDir({ prefix: "relay-haproxy-" });
  const config = `${dir}/haproxy.cfg`;
  await Deno.writeTextFile(
    config,
    [
      "global",
      "  maxconn 256",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 5s",
      "  timeout server 5s",
      "  timeout tunnel 5s",
      "frontend api",
      `  bind 127.0.0.1:${port}`,
      "  default_backend apiserver",
      "backend apiserver",
      `  server api ${server.hostname}:${server.port || 443}`,
      "",
    ].join("\n"),
  );
  const child = new Deno.Command("haproxy", {
    args: ["-db", "-f", config],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitFor("haproxy to listen", async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  }, { timeoutMs: 10_000, intervalMs: 100 });
  return {
    port,
    pid: child.pid,
    async stop() {
      try {
        // A stopped proxy ignores SIGTERM until it runs again.
        child.kill("SIGCONT");
        child.kill("SIGTERM");
      } catch {
        // exited already
      }
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A copy of the admin kubeconfig whose server is the proxy (the cert names 127.0.0.1). */
async function proxiedKubeconfig(port: number): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(KUBECONFIG));
  for (const entry of config.clusters) entry.cluster.server = `https://127.0.0.1:${port}`;
  const path = await Deno.makeTempFile({ prefix: "relay-proxied-", suffix: ".kubeconfig" });
  await Deno.writeTextFile(path, JSON.stringify(config));
  return path;
}

/** `kubectl port-forward` through `kubeconfig`; resolves with its local port once ready. */
async function kubectlForward(
  kubeconfig: string,
  namespace: string,
  target: string,
  remote: number,
): Promise<{ port: number; stop(): Promise<void> }> {
  const child = new Deno.Command(KUBECTL, {
    args: [
      `--kubeconfig=${kubeconfig}`,
      "port-forward",
      "-n",
      namespace,
      "--address=127.0.0.1",
      target,
      `:${remote}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port: number | undefined;
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // exited already (as it does when its connection is cut)
    }
    await child.status;
    await lines.cancel().catch(() => {});
  };
  while (port === undefined) {
    const { value, done } = await within(30_000, "kubectl port-forward", lines.read());
    if (done) throw new Error(`kubectl port-forward exited: ${text}`);
    text += value;
    port = Number(text.match(/Forwarding from 127\.0\.0\.1:(\d+)/)?.[1]) || undefined;
  }
  (async () => {
    while (!(await lines.read().catch(() => ({ done: true }))).done) { /* drain */ }
  })();
  return { port, stop };
}

/** Whether an idle connection still echoes: "ok", or what went wrong. */
async function stillEchoes(conn: Deno.Conn): Promise<string> {
  try {
    const got = await echoLine(conn, "still there?");
    return got === "still there?" ? "ok" : `got ${JSON.stringify(got)}`;
  } catch (error) {
    return `failed: ${error instanceof Error ? error.message : error}`;
  }
}

Deno.test({
  name: "story: behind a proxy that cuts idle connections after 5 s, kubectl port-forward's " +
    "idle connection is cut within 10 s while relay's still works after 30 s",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-idle");
    await createEchoWorkloads(ns.name, ["pod"]);
    const proxy = await startIdleCuttingProxy();
    const kubeconfig = await proxiedKubeconfig(proxy.port);
    try {
      const plain = await kubectlForward(kubeconfig, ns.name, "pod/echo-pod", 8080);
      await using relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"], {
        env: { KUBECONFIG: kubeconfig },
      });
      try {
        const viaKubectl = await Deno.connect({ hostname: "127.0.0.1", port: plain.port });
        const viaRelay = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[0] });
        assertMatch(await readLine(viaKubectl), /^pod=echo-pod /);
        assertMatch(await readLine(viaRelay), /^pod=echo-pod /);

        await new Promise((resolve) => setTimeout(resolve, 10_000));
        assert(
          (await stillEchoes(viaKubectl)) !== "ok",
          "kubectl's idle connection survived the proxy: the proxy cuts nothing, the test shows nothing",
        );
        await new Promise((resolve) => setTimeout(resolve, 20_000));
        assertEquals(await stillEchoes(viaRelay), "ok", relay.stderr());
        viaKubectl.close();
        viaRelay.close();
        assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
      } finally {
        await plain.stop();
      }
    } finally {
      await proxy.stop();
      await Deno.remove(kubeconfig);
    }
  },
});

Deno.test({
  name: "story: a second Ctrl-C while deleting the agent hangs exits at once with 130",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-int2");
    await createEchoWorkloads(ns.name, ["pod"]);
    const proxy = await startIdleCuttingProxy();
    const kubeconfig = await proxiedKubeconfig(proxy.port);
    let relay: Awaited<ReturnType<typeof startRelay>> | undefined;
    try {
      relay = await startRelay(["-n", ns.name, "pod/echo-pod", ":8080"], {
        env: { KUBECONFIG: kubeconfig },
      });
      assertEquals(await greet(relay.ports[0]), "echo-pod");
      await onlyAgentPod(ns.name);
      // relay's only way to the API server is frozen: deleting the agent cannot finish.
      Deno.kill(proxy.pid, "SIGSTOP");
      const exit = relay.exited.then((code) => ({ code, at: Date.now() }));
      Deno.kill(relay.pid, "SIGINT");
      const stillCleaning = await Promise.race([
        exit.then(() => false),
        new Promise<true>((resolve) => setTimeout(() => resolve(true), 3_000)),
      ]);
      assert(
        stillCleaning,
        `relay exited on the first SIGINT, the test shows nothing:\n${relay.stderr()}`,
      );
      const secondAt = Date.now();
      Deno.kill(relay.pid, "SIGINT");
      const { code, at } = await within(2_000, "relay to exit on the second SIGINT", exit);
      assertEquals(code, 130, relay.stderr());
      console.log(`exited ${at - secondAt} ms after the second SIGINT`);
    } finally {
      // The proxy runs again before anything else, so no cleanup below can hang on it.
      Deno.kill(proxy.pid, "SIGCONT");
      await relay?.stop("SIGKILL");
      await proxy.stop();
      await Deno.remove(kubeconfig);
      // relay gave up on it: the admin removes the agent, as a user would.
      await kubectl(["delete", "jobs,pods", "-n", ns.name, "-l", AGENT_SELECTOR, "--wait=false"]);
    }
  },
});

// ----- last: the API server restarts --------------------------------------------------------

/**
 * Kills kube-apiserver (by its pid file), waits until it is gone, and returns its command
 * line so it can be started again exactly as it was. SIGKILL: a graceful stop waits for every
 * long-running request (each port-forward, each watch) and may take a minute; a crash is the
 * harder case for relay anyway.
 */
async function killApiServer(): Promise<string[]> {
  const pid = Number((await Deno.readTextFile(`${RUN_DIR}/pids/kube-apiserver.pid`)).trim());
  const argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0").filter((a) => a);
  Deno.kill(pid, "SIGKILL");
  await waitFor("kube-apiserver to exit", async () => {
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      return /^\d+ \(.*\) Z/.test(stat);
    } catch {
      return true;
    }
  }, { timeoutMs: 30_000, intervalMs: 100 });
  return argv;
}

/**
 * Starts kube-apiserver again with the same command line, log and pid file, and waits for
 * /readyz. Not `cluster up`: that would restart it too (keeping etcd), but the test wants
 * the exact command line back and no other daemon touched.
 */
async function restartApiServer(argv: string[]): Promise<void> {
  startDaemonOnce({ name: "kube-apiserver", argv });
  await waitFor("the API server to be ready", async () => {
    await kubectl(["get", "--raw", "/readyz"]);
    return true;
  }, { timeoutMs: 90_000 });
}

Deno.test({
  name: "story: kube-apiserver restarts mid-forward — the listener stays open and new " +
    "connections work again once it is back",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("res-api");
    await createEchoWorkloads(ns.name, ["pod"]);
    await using relay = await startRelay(["-v", "-n", ns.name, "pod/echo-pod", ":8080"]);
    const port = relay.ports[0];
    const agent = await onlyAgentPod(ns.name);
    const inFlight = await Deno.connect({ hostname: "127.0.0.1", port });
    assertMatch(await readLine(inFlight), /^pod=echo-pod /);

    let backAt = 0;
    const argv = await killApiServer();
    try {
      // The tunnel went through the API server: the open connection ends, it does not hang.
      assertEquals(await closedWithin(inFlight, 15_000), "closed", "the in-flight connection hung");
      inFlight.close();
      // The listener is still there while the API server is away.
      const probe = await Deno.connect({ hostname: "127.0.0.1", port });
      probe.close();
    } finally {
      await restartApiServer(argv);
      backAt = Date.now();
    }
    const served = await firstGreeting(port, 30_000).catch((error) => {
      throw new Error(`${error}\nrelay's stderr:\n${relay.stderr()}`);
    });
    assertEquals(served, "echo-pod");
    console.log(`new connection served ${Date.now() - backAt} ms after the API server was ready`);
    // Same agent: an unreachable API server is not a dead agent.
    assertEquals(await onlyAgentPod(ns.name), agent);
    assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
  },
});
