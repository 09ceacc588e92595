/**
 * relay proxy end to end: curl, socat and a DNS client reach the local cluster through it, by
 * names that exist only in the cluster's DNS, so every answer crossed relay's tunnel and was
 * resolved by the agent inside the cluster.
 */
import { createHash } from "node:crypto";
import { Buffer } from "node:buffer";
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import dnsPacket from "dns-packet";
import {
  applyYaml,
  createTestNamespace,
  ensureCluster,
  execInPod,
  KUBECONFIG,
  portForwardRequests,
  runCommand,
  waitFor,
  waitForServiceRules,
} from "./harness.ts";
import { agentPodNames } from "./agents.ts";
import { relayCommand, startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";
import {
  parseSocksDatagram,
  readExactly,
  readToEnd,
  socksDatagram,
  socksRequest,
  within,
  writeAll,
} from "../proxy_clients.ts";

const KUBE_DNS_IP = "198.19.0.10";
const encoder = new TextEncoder();

/**
 * The echo Deployment with its Services, plus Service `web`: port 80 to the echo image's
 * HTTP listener (9004), which answers `ok`.
 */
async function createProxyTargets(namespace: string) {
  const echo = await createEchoWorkloads(namespace, ["deploy"]);
  await applyYaml(
    JSON.stringify({
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "web" },
      spec: { selector: { app: "echo" }, ports: [{ name: "http", port: 80, targetPort: 9004 }] },
    }),
    namespace,
  );
  // Names resolve through cluster DNS and connect through kube-proxy's rules: wait, as a user
  // of fresh Services would, until both know them.
  await waitForServiceRules(namespace, "web");
  for (const service of ["web", "echo"]) {
    const name = `${service}.${namespace}.svc.cluster.local`;
    await waitFor(`cluster DNS to know ${name}`, async () => {
      const dig = ["dig", "+short", "+time=1", "+tries=1", name];
      return (await execInPod(namespace, echo.pods.deploy, dig)).stdout.trim() !== "";
    }, { timeoutMs: 30_000 });
  }
  return echo;
}

/** curl with a deadline of its own; never throws for a non-zero exit. */
function curl(...args: string[]) {
  return runCommand(["curl", "-sS", "--max-time", "20", ...args]);
}

/** `size` bytes that differ with `seed`. */
function pattern(size: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: size }, (_, i) => (i * 31 + seed) & 0xff);
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** One connection through the proxy to the echo port: `payload` out, the same back. */
async function echoThroughProxy(
  proxyPort: number,
  kind: "socks5" | "http",
  host: string,
  payload: Uint8Array,
): Promise<void> {
  let conn: Deno.TcpConn;
  if (kind === "socks5") {
    const result = await socksRequest(proxyPort, 1, host, 9000);
    conn = result.conn;
    assertEquals(result.reply, 0, `SOCKS5 CONNECT ${host}:9000 replied ${result.reply}`);
  } else {
    conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
    await writeAll(conn, encoder.encode(`CONNECT ${host}:9000 HTTP/1.1\r\n\r\n`));
    const answer = new TextDecoder().decode(await readExactly(conn, 39, "CONNECT answer"));
    assertEquals(answer, "HTTP/1.1 200 Connection established\r\n\r\n");
  }
  try {
    const [, echoed] = await Promise.all([
      writeAll(conn, payload).then(() => conn.closeWrite()),
      readToEnd(conn),
    ]);
    assertEquals(echoed.length, payload.length, `${kind} ${host}: bytes back`);
    assertEquals(sha256(echoed), sha256(payload), `${kind} ${host}: content`);
  } finally {
    conn.close();
  }
}

Deno.test({
  name:
    "story: a developer runs `relay proxy -n NS svc/echo :9000@tcp` and curl reaches cluster-only Services through it — SOCKS5 (--socks5-hostname) by full, NAME.NS and short name, HTTP CONNECT (curl -p -x, socat) and an absolute-URI GET (curl -x) — while the forward beside it works too",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("proxy-curl");
    await createProxyTargets(ns.name);
    const relay = await startRelay(
      ["proxy", "-n", ns.name, "--port", "0", "svc/echo", ":9000@tcp"],
      { readyLines: 2 },
    );
    try {
      const [proxyPort] = relay.proxyPorts;
      const proxy = `127.0.0.1:${proxyPort}`;
      assert(
        relay.readyLines.some((line) =>
          line === `Proxying on ${proxy} (SOCKS5 and HTTP; names resolve in the cluster, ` +
              `short ones in namespace ${ns.name})`
        ),
        relay.readyLines.join("\n"),
      );
      for (const host of [`web.${ns.name}.svc.cluster.local`, `web.${ns.name}`, "web"]) {
        const socks = await curl("--socks5-hostname", proxy, `http://${host}/`);
        assertEquals(
          [socks.code, socks.stdout],
          [0, "ok\n"],
          `SOCKS5 ${host}: ${socks.stderr}\n${relay.stderr()}`,
        );
      }
      const get = await curl("-x", `http://${proxy}`, `http://web.${ns.name}.svc/some/path?q=1`);
      assertEquals([get.code, get.stdout], [0, "ok\n"], `absolute-URI GET: ${get.stderr}`);
      const tunnel = await curl("-p", "-x", `http://${proxy}`, "http://web/");
      assertEquals([tunnel.code, tunnel.stdout], [0, "ok\n"], `CONNECT: ${tunnel.stderr}`);
      // A plain TCP service through HTTP CONNECT: socat half-closes, the echo comes back whole.
      const socat = await runCommand(
        ["socat", "-", `PROXY:127.0.0.1:echo.${ns.name}.svc:9000,proxyport=${proxyPort}`],
        { input: "through CONNECT\n" },
      );
      assertEquals([socat.code, socat.stdout], [0, "through CONNECT\n"], socat.stderr);
      await within(
        echoThroughProxy(proxyPort, "socks5", "echo", pattern(1 << 20, 1)),
        30_000,
        "1 MiB through SOCKS5",
      );
      // The forward beside the proxy, on the same agent.
      const forward = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[0] });
      await writeAll(forward, encoder.encode("forward"));
      await forward.closeWrite();
      assertEquals(new TextDecoder().decode(await readToEnd(forward)), "forward");
      forward.close();
      assertEquals((await agentPodNames(ns.name)).length, 1, "one agent for both");
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: a name that does not resolve in the cluster gets SOCKS5 host unreachable (curl exit 97, reply 4) and HTTP 502 naming no-such-host, one log line each, and the proxy keeps serving",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("proxy-nxdomain");
    await createProxyTargets(ns.name);
    const relay = await startRelay(["proxy", "-n", ns.name, "--port", "0"]);
    try {
      const proxy = `127.0.0.1:${relay.proxyPorts[0]}`;
      const socks = await curl("--socks5-hostname", proxy, "http://no-such-service/");
      assertEquals(socks.code, 97, socks.stderr);
      assertMatch(socks.stderr, /SOCKS5 connection to no-such-service.*\(4\)/);
      const http = await curl("-x", `http://${proxy}`, "-w", "\n%{http_code}", "http://nope.svc/");
      assertEquals(http.code, 0, http.stderr);
      assertMatch(http.stdout, /^relay: cannot reach nope\.svc:80: no-such-host: .*\n\n502$/);
      const connect = await curl("-p", "-x", `http://${proxy}`, "http://nope.svc/");
      assertMatch(connect.stderr, /CONNECT tunnel failed, response 502/);
      const ok = await curl("--socks5-hostname", proxy, "http://web/");
      assertEquals(ok.stdout, "ok\n", `still serving: ${ok.stderr}\n${relay.stderr()}`);
      const lines = relay.stderr().split("\n").filter((line) => line.startsWith("error: proxy: "));
      assertEquals(lines.length, 3, relay.stderr());
      assertMatch(
        lines[0],
        /SOCKS5 CONNECT no-such-service:80: no-such-host: .*\(replied 0x04 host unreachable\)$/,
      );
      assertMatch(lines[1], /HTTP request to nope\.svc:80: no-such-host: .*\(replied 502\)$/);
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

/** One A query for `name`. */
function dnsQuery(id: number, name: string): Uint8Array {
  return dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name }],
  });
}

Deno.test({
  name:
    "story: a DNS client behind SOCKS5 UDP ASSOCIATE asks the cluster DNS, by its IP and as kube-dns.kube-system, for a Service name and gets the Service's cluster IP, each reply wrapped in the header of the server it came from",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("proxy-dns");
    const echo = await createProxyTargets(ns.name);
    const relay = await startRelay(["proxy", "-n", ns.name, "--port", "0"]);
    const client = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
    let control: Deno.TcpConn | undefined;
    try {
      const association = await socksRequest(relay.proxyPorts[0], 3, "0.0.0.0", 0);
      control = association.conn;
      assertEquals(association.reply, 0, "UDP ASSOCIATE");
      const { host, port } = association.bound!;
      const relayAddress = { transport: "udp" as const, hostname: host, port };
      const servers = [KUBE_DNS_IP, "kube-dns.kube-system"];
      for (const [i, server] of [...servers, ...servers].entries()) {
        const name = `echo.${ns.name}.svc.cluster.local`;
        await client.send(socksDatagram(server, 53, dnsQuery(100 + i, name)), relayAddress);
        const [datagram] = await within(client.receive(), 10_000, `DNS answer via ${server}`);
        const reply = parseSocksDatagram(datagram);
        assertEquals(reply.from, `${server}:53`);
        const answer = dnsPacket.decode(Buffer.from(reply.payload));
        assertEquals(answer.id, 100 + i);
        const addresses = (answer.answers ?? []).flatMap((a) => a.type === "A" ? [a.data] : []);
        assertEquals(addresses, [echo.serviceIP], `${name} via ${server}`);
      }
    } finally {
      client.close();
      control?.close();
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: relay proxy will not start an open proxy — -l 0.0.0.0 without --proxy-auth is exit 2 with one line and nothing created — and with --proxy-auth, wrong credentials get the SOCKS5 auth failure and HTTP 407, right ones get through",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("proxy-auth");
    await createProxyTargets(ns.name);
    const open = await runCommand(relayCommand(["proxy", "-n", ns.name, "-l", "0.0.0.0"]), {
      env: { KUBECONFIG },
    });
    assertEquals(open.code, 2, open.stderr);
    assertEquals(open.stderr.trimEnd().split("\n").length, 1, open.stderr);
    assertMatch(open.stderr, /^error: relay proxy -l 0\.0\.0\.0: .*needs --proxy-auth/);
    assertEquals(await agentPodNames(ns.name), [], "nothing created");

    const relay = await startRelay([
      "proxy",
      "-n",
      ns.name,
      "-l",
      "0.0.0.0",
      "--port",
      "0",
      "--proxy-auth",
      "alice:s3cret",
    ]);
    try {
      const proxy = `127.0.0.1:${relay.proxyPorts[0]}`;
      const wrong = await curl("--socks5-hostname", proxy, "-U", "alice:nope", "http://web/");
      assertEquals(wrong.code, 97, wrong.stderr);
      assertMatch(wrong.stderr, /User was rejected by the SOCKS5 server \(1 1\)/);
      const none = await curl("--socks5-hostname", proxy, "http://web/");
      assertMatch(none.stderr, /No authentication method was acceptable/);
      const right = await curl("--socks5-hostname", proxy, "-U", "alice:s3cret", "http://web/");
      assertEquals(right.stdout, "ok\n", right.stderr);
      const denied = await curl("-x", `http://alice:nope@${proxy}`, "-D", "-", "http://web/");
      assertMatch(denied.stdout, /^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
      assertMatch(denied.stdout, /\r\nProxy-Authenticate: Basic realm="relay"\r\n/);
      const tunnel = await curl("-p", "-x", `http://${proxy}`, "http://web/");
      assertMatch(tunnel.stderr, /CONNECT tunnel failed, response 407/);
      const allowed = await curl("-x", `http://alice:s3cret@${proxy}`, "http://web/");
      assertEquals(allowed.stdout, "ok\n", allowed.stderr);
      assert(!relay.stderr().includes("s3cret"), "the password is never logged");
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: 200 concurrent proxied connections, half SOCKS5 and half HTTP CONNECT, each echo 256 KiB intact through one tunnel pool, with no port-forward request per connection",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("proxy-many");
    await createProxyTargets(ns.name);
    const relay = await startRelay(["proxy", "-n", ns.name, "--port", "0", "--tunnels", "2"]);
    try {
      const [agent] = await agentPodNames(ns.name);
      const before = await portForwardRequests(agent);
      await within(
        Promise.all(Array.from({ length: 200 }, (_, i) =>
          echoThroughProxy(
            relay.proxyPorts[0],
            i % 2 === 0 ? "socks5" : "http",
            i % 3 === 0 ? "echo" : `echo.${ns.name}.svc`,
            pattern(256 * 1024, i),
          ))),
        120_000,
        "200 concurrent proxied connections",
      );
      assertEquals(
        await portForwardRequests(agent),
        before,
        "port-forward requests per connection",
      );
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});
