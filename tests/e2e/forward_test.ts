/**
 * TCP forwarding end to end: relay as a user runs it, against the local cluster, where pod
 * and Service addresses exist only inside the cluster — every byte that comes back went
 * through relay's tunnel, the API server, kwok and the agent pod.
 */
import { createHash } from "node:crypto";
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import {
  createTestNamespace,
  ensureCluster,
  execInPod,
  kubectl,
  portForwardRequests,
  readAll,
  readLine,
  waitFor,
} from "./harness.ts";
import { agentPodNames } from "./agents.ts";
import { startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

const encoder = new TextEncoder();

async function greetAndEcho(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const greeting = await readLine(conn);
    await conn.write(encoder.encode("ping\n"));
    assertEquals(await readLine(conn), "ping");
    return greeting;
  } finally {
    conn.close();
  }
}

/** Writes `total` bytes of a pattern and reads the same count back, hashing both sides. */
async function echoThrough(port: number, total: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const sent = createHash("sha256");
  const received = createHash("sha256");
  const chunk = new Uint8Array(256 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 7) & 0xff;
  const writing = (async () => {
    for (let at = 0; at < total; at += chunk.length) {
      const piece = chunk.subarray(0, Math.min(chunk.length, total - at));
      sent.update(piece);
      for (let off = 0; off < piece.length;) off += await conn.write(piece.subarray(off));
    }
    await conn.closeWrite();
  })();
  let got = 0;
  const buf = new Uint8Array(256 * 1024);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    received.update(buf.subarray(0, n));
    got += n;
  }
  await writing;
  conn.close();
  assertEquals(got, total);
  assertEquals(received.digest("hex"), sent.digest("hex"));
}

Deno.test({
  name:
    "story: one relay forwards to a pod, Service, headless and ExternalName Service, every workload kind, a host name and an IP at once; each reply names the pod that served it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-kinds");
    const echo = await createEchoWorkloads(ns.name);
    const targets: Array<[string, string, string]> = [
      // [target, port spec, pod the reply must come from]
      ["pod/echo-pod", ":8080", echo.pods.pod],
      ["svc/echo", ":greet", echo.pods.deploy],
      ["service/echo", ":80", echo.pods.deploy],
      ["svc/echo-headless", ":8080", echo.pods.deploy],
      ["svc/echo-ext", ":80", echo.pods.deploy],
      ["deploy/echo", ":greet", echo.pods.deploy],
      ["deployment.apps/echo", ":8080", echo.pods.deploy],
      ["sts/echo-sts", ":8080", echo.pods.sts],
      ["ds/echo-ds", ":8080", echo.pods.ds],
      ["rs/echo-rs", ":8080", echo.pods.rs],
      ["host/echo", ":80", echo.pods.deploy],
      [`host/echo.${ns.name}.svc.cluster.local`, ":80", echo.pods.deploy],
      [`ip/${echo.deployPodIP}`, ":8080", echo.pods.deploy],
      [`ip/${echo.serviceIP}`, ":80", echo.pods.deploy],
    ];
    const relay = await startRelay(
      ["-n", ns.name, ...targets.flatMap(([t, p]) => [t, p])],
      { readyLines: targets.length },
    );
    try {
      for (const [i, [target, , pod]] of targets.entries()) {
        const line = relay.readyLines[i];
        assertMatch(line, /^Forwarding from 127\.0\.0\.1:\d+ -> /, line);
        const greeting = await greetAndEcho(relay.ports[i]);
        assertMatch(greeting, new RegExp(`^pod=${pod} addr=198\\.18\\.`), `${target}: ${greeting}`);
      }
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
    // A clean stop deletes the agent.
    await waitFor(
      "the agent pod to be gone",
      async () => (await agentPodNames(ns.name)).length === 0,
      {
        timeoutMs: 15_000,
      },
    );
  },
});

Deno.test({
  name:
    "story: bulk data, many connections and half-close go through one multiplexed tunnel pool intact, with no port-forward request per connection",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-bulk");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const relay = await startRelay(
      ["-n", ns.name, "--tunnels", "2", `ip/${echo.deployPodIP}`, ":9000", ":9001"],
      { readyLines: 2 },
    );
    try {
      const [echoPort, hashPort] = relay.ports;
      const [agent] = await agentPodNames(ns.name);
      const before = await portForwardRequests(agent);
      assert(before >= 1 && before <= 2 + 20, `port-forward requests at start: ${before}`);

      // 1 GiB through one connection, both ways.
      await echoThrough(echoPort, 1 << 30);

      // 200 concurrent connections, each echoing 1 MiB.
      await Promise.all(Array.from({ length: 200 }, () => echoThrough(echoPort, 1 << 20)));

      // Half-close: the client shuts its write side and still receives the full reply.
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: hashPort });
      const payload = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => i % 253);
      for (let off = 0; off < payload.length;) off += await conn.write(payload.subarray(off));
      await conn.closeWrite();
      const reply = new TextDecoder().decode(await readAll(conn)).trim();
      conn.close();
      assertEquals(
        reply,
        `${payload.length} ${createHash("sha256").update(payload).digest("hex")}`,
      );

      // None of those 200+ connections cost a port-forward request: they were streams.
      const after = await portForwardRequests(agent);
      assertEquals(after, before, "port-forward requests made while connections were opened");
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: a connection whose reader stalls does not stop another connection on the same tunnel, and relay's memory stays bounded",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-hol");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const relay = await startRelay(
      ["-n", ns.name, "--tunnels", "1", `ip/${echo.deployPodIP}`, ":9000"],
    );
    try {
      const port = relay.ports[0];
      // A: offers 512 MiB to the echo server but never reads the echo back.
      const stalled = await Deno.connect({ hostname: "127.0.0.1", port });
      let offered = 0;
      const chunk = new Uint8Array(1 << 20);
      const stalling = (async () => {
        try {
          while (offered < 512 * (1 << 20)) offered += await stalled.write(chunk);
        } catch {
          // closed at the end of the test
        }
      })();
      await waitFor("the stalled connection to fill its buffers", () => offered >= 4 << 20);
      // B: moves 64 MiB both ways and finishes while A is stalled.
      await echoThrough(port, 64 << 20);
      assert(offered < 512 * (1 << 20), `the stalled connection took all ${offered} bytes`);
      const status = await Deno.readTextFile(`/proc/${relay.pid}/status`);
      const rssKiB = Number(status.match(/VmRSS:\s+(\d+)/)?.[1]);
      assert(rssKiB < 400 * 1024, `relay's RSS grew to ${rssKiB} KiB`);
      stalled.close();
      await stalling;
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: a destination that does not resolve or refuses fails that connection with a clear line, and the forward keeps serving",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-fail");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const relay = await startRelay(
      [
        "-n",
        ns.name,
        "host/no-such-service.invalid",
        ":80",
        `ip/${echo.deployPodIP}`,
        ":1",
        ":8080",
      ],
      { readyLines: 3 },
    );
    try {
      const [nxPort, refusedPort, goodPort] = relay.ports;
      for (const port of [nxPort, refusedPort]) {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        const got = await readAll(conn).catch(() => new Uint8Array());
        conn.close();
        assertEquals(got.length, 0);
      }
      await waitFor(
        "both failures to be logged",
        () =>
          /no-such-service\.invalid.*no-such-host/.test(relay.stderr()) &&
          /refused/.test(relay.stderr()),
      );
      assertMatch(await greetAndEcho(goodPort), /^pod=echo-/);
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: a targets file (with per-line namespaces and comments), -L host:port forwards and a --patch on the agent pod work together in one run",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-file");
    await using other = await createTestNamespace("fwd-file-other");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    const elsewhere = await createEchoWorkloads(other.name, ["pod"]);
    const dir = await Deno.makeTempDir({ prefix: "relay-file-" });
    const file = `${dir}/targets.txt`;
    await Deno.writeTextFile(
      file,
      [
        "# the deployment in the run's namespace",
        "deploy/echo :8080",
        "",
        "// a pod in another namespace",
        `-n ${other.name} pod/echo-pod :8080`,
      ].join("\n"),
    );
    // The -L target is a Service name, which the agent resolves through cluster DNS: wait, as
    // a user of a fresh Service would, until cluster DNS knows it.
    const service = `echo.${ns.name}.svc.cluster.local`;
    await waitFor(`cluster DNS to know ${service}`, async () => {
      const dig = ["dig", "+short", "+time=1", "+tries=1", service];
      return (await execInPod(ns.name, echo.pods.deploy, dig)).stdout.trim() !== "";
    }, { timeoutMs: 30_000 });
    const relay = await startRelay(
      [
        "-n",
        ns.name,
        "-f",
        file,
        "-L",
        `:echo.${ns.name}.svc.cluster.local:80`,
        "--patch",
        '{"metadata":{"labels":{"relay-test":"patched"}}}',
      ],
      { readyLines: 3 },
    );
    try {
      const [deployPort, podPort, lPort] = relay.ports;
      assertMatch(await greetAndEcho(deployPort), new RegExp(`^pod=${echo.pods.deploy} `));
      assertMatch(await greetAndEcho(podPort), new RegExp(`^pod=${elsewhere.pods.pod} `));
      assertMatch(await greetAndEcho(lPort), new RegExp(`^pod=${echo.pods.deploy} `));
      const patched = await kubectl([
        "get",
        "pods",
        "-n",
        ns.name,
        "-l",
        "relay-test=patched,app.kubernetes.io/name=relay-agent",
        "-o",
        "name",
      ]);
      assertMatch(patched, /relay-agent/);
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
      await Deno.remove(dir, { recursive: true });
    }
  },
});
