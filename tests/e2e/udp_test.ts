/**
 * UDP forwarding end to end: relay as a user runs it, against the local cluster, whose pod
 * and Service addresses exist only inside it — every datagram that comes back crossed
 * relay's tunnel, the API server, kwok and the agent pod, and came back to its own source.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import {
  applyYaml,
  createTestNamespace,
  ensureCluster,
  execInPod,
  kubectl,
  RUN_DIR,
  runCommand,
  waitFor,
  waitForReadyPod,
  waitForServiceRules,
} from "./harness.ts";
import { agentPodNames } from "./agents.ts";
import { startRelay } from "./relay_process.ts";

const KUBE_DNS_IP = "198.19.0.10";
const KUBERNETES_SVC_IP = "198.19.0.1";

/**
 * A local UDP client: one socket (one source address, so one relay session) whose replies
 * are read by a single loop and handed to whoever waits for the next one.
 */
class UdpClient {
  readonly socket = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  readonly #waiting: ((d: Uint8Array) => void)[] = [];
  readonly #early: Uint8Array[] = [];
  /** Called for every datagram received, before anyone waiting gets it. */
  onDatagram?: (datagram: Uint8Array) => boolean | void;
  readonly #loop: Promise<void>;

  constructor() {
    this.#loop = (async () => {
      const buffer = new Uint8Array(65_536);
      for (;;) {
        let datagram: Uint8Array;
        try {
          [datagram] = await this.socket.receive(buffer);
        } catch {
          return; // closed
        }
        const copy = datagram.slice();
        if (this.onDatagram?.(copy)) continue;
        const waiter = this.#waiting.shift();
        if (waiter) waiter(copy);
        else this.#early.push(copy);
      }
    })();
  }

  get port(): number {
    return (this.socket.addr as Deno.NetAddr).port;
  }

  async send(port: number, datagram: Uint8Array): Promise<void> {
    await this.socket.send(datagram, { transport: "udp", hostname: "127.0.0.1", port });
  }

  /** The next datagram, or null after `timeoutMs`. */
  next(timeoutMs: number): Promise<Uint8Array | null> {
    const early = this.#early.shift();
    if (early) return Promise.resolve(early);
    return new Promise((resolve) => {
      const waiter = (d: Uint8Array) => {
        clearTimeout(timer);
        resolve(d);
      };
      const timer = setTimeout(() => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        resolve(null);
      }, timeoutMs);
      this.#waiting.push(waiter);
    });
  }

  /** Sends and waits for one reply. */
  async request(port: number, datagram: Uint8Array, timeoutMs = 5_000): Promise<Uint8Array | null> {
    await this.send(port, datagram);
    return await this.next(timeoutMs);
  }

  async close(): Promise<void> {
    this.socket.close();
    await this.#loop;
  }
}

function pattern(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One A query for `name` with id `id`, as dig would send it. */
function dnsQuery(id: number, name: string): Uint8Array {
  return dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name }],
  });
}

/** The id and A records of a DNS answer. */
function dnsAnswer(datagram: Uint8Array): { id: number; addresses: string[] } {
  const packet = dnsPacket.decode(Buffer.from(datagram));
  const addresses = (packet.answers ?? []).flatMap((a) => a.type === "A" ? [a.data] : []);
  return { id: packet.id ?? -1, addresses };
}

/** UDP sockets open in a pod's network namespace (`ss -u` there), listening or not. */
async function udpSockets(namespace: string, pod: string): Promise<number> {
  const result = await execInPod(namespace, pod, ["ss", "-u", "-a", "-n", "-H"]);
  if (result.code !== 0) throw new Error(`ss failed: ${result.stderr}`);
  return result.stdout.split("\n").filter((line) => line.trim()).length;
}

/** The agent container's log, as the kubelet shim keeps it. */
async function agentLog(namespace: string, pod: string): Promise<string> {
  const uid =
    (await kubectl(["get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}"]))
      .trim();
  return await Deno.readTextFile(`${RUN_DIR}/pods/${uid}/agent.log`).catch(() => "");
}

/** A UDP echo pod (9000 echo, 9003 flood) and two Services over it. */
async function createUdpEcho(namespace: string): Promise<{ pod: string; podIP: string }> {
  await applyYaml(
    `
apiVersion: v1
kind: Pod
metadata: { name: udp-echo, labels: { app: udp-echo } }
spec:
  containers:
    - name: echo
      image: relay-test/echo:latest
      ports:
        - { name: echo-tcp, containerPort: 9000 }
        - { name: echo-udp, containerPort: 9000, protocol: UDP }
        - { name: flood, containerPort: 9003, protocol: UDP }
---
apiVersion: v1
kind: Service
metadata: { name: echo-udp-only }
spec:
  selector: { app: udp-echo }
  ports: [{ name: echo, port: 9000, protocol: UDP }]
---
apiVersion: v1
kind: Service
metadata: { name: echo-both }
spec:
  selector: { app: udp-echo }
  ports:
    - { name: tcp, port: 9000, protocol: TCP }
    - { name: udp, port: 9000, protocol: UDP }
`,
    namespace,
  );
  const pod = await waitForReadyPod(namespace, "app=udp-echo");
  // relay starts fast enough to send before kube-proxy has written the Services' rules.
  for (const service of ["echo-udp-only", "echo-both"]) {
    await waitForServiceRules(namespace, service);
  }
  const podIP =
    (await kubectl(["get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.podIP}"]))
      .trim();
  return { pod, podIP };
}

/** A local port free for both TCP and UDP right now. */
function freePortForBoth(): number {
  for (;;) {
    const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (tcp.addr as Deno.NetAddr).port;
    try {
      Deno.listenDatagram({ hostname: "127.0.0.1", port, transport: "udp" }).close();
      return port;
    } catch {
      // busy for UDP: try another
    } finally {
      tcp.close();
    }
  }
}

Deno.test({
  name:
    "story: DNS through svc/kube-dns …@udp and through -L …@udp resolves Service names; 1,000 queries from 20 concurrent sources are all answered, each to its own source",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("udp-dns");
    const relay = await startRelay([
      "-n",
      "kube-system",
      "--agent-namespace",
      ns.name,
      "svc/kube-dns",
      ":53@udp",
      "-L",
      ":kube-dns.kube-system:53@udp",
    ], { readyLines: 2 });
    try {
      assertMatch(relay.readyLines[0], /-> svc\/kube-dns:53\/udp$/, relay.readyLines[0]);
      assertMatch(relay.readyLines[1], /kube-dns\.kube-system.*:53\/udp$/, relay.readyLines[1]);
      // The user's tool: dig, over UDP, through both forms.
      for (const port of relay.ports) {
        const dig = await runCommand([
          "dig",
          "@127.0.0.1",
          "-p",
          String(port),
          "+notcp",
          "+short",
          "+time=5",
          "+tries=1",
          "kubernetes.default.svc.cluster.local",
        ]);
        assertEquals(dig.stdout.trim(), KUBERNETES_SVC_IP, `dig via ${port}: ${dig.stderr}`);
      }

      // 20 sources, 50 queries each, a few in flight per source at a time; every answer must
      // come back to the socket that asked, with that query's id and the right address.
      const port = relay.ports[0];
      const names: Array<[string, string]> = [
        ["kubernetes.default.svc.cluster.local", KUBERNETES_SVC_IP],
        ["kube-dns.kube-system.svc.cluster.local", KUBE_DNS_IP],
      ];
      const sources = 20, perSource = 50, inFlight = 4;
      const started = performance.now();
      const results = await Promise.all(Array.from({ length: sources }, async (_, s) => {
        const client = new UdpClient();
        const pending = new Map<number, string>();
        let answered = 0, wrong = 0;
        const waiters: (() => void)[] = [];
        client.onDatagram = (datagram) => {
          const { id, addresses } = dnsAnswer(datagram);
          const want = pending.get(id);
          if (want === undefined) wrong++;
          else {
            pending.delete(id);
            if (addresses.length === 1 && addresses[0] === want) answered++;
            else wrong++;
          }
          waiters.shift()?.();
          return true;
        };
        try {
          for (let q = 0; q < perSource; q++) {
            while (pending.size >= inFlight) {
              const freed = new Promise<boolean>((resolve) => {
                waiters.push(() => resolve(true));
                setTimeout(() => resolve(false), 5_000);
              });
              if (!await freed) break;
            }
            const id = s * 1000 + q; // unique across sources: a misrouted answer is caught
            const [name, address] = names[q % names.length];
            pending.set(id, address);
            await client.send(port, dnsQuery(id, name));
          }
          await waitFor("the last answers", () => pending.size === 0, {
            timeoutMs: 5_000,
            intervalMs: 20,
          }).catch(() => {});
          return { answered, wrong, lost: pending.size };
        } finally {
          await client.close();
        }
      }));
      const seconds = (performance.now() - started) / 1000;
      const answered = results.reduce((n, r) => n + r.answered, 0);
      console.log(
        `udp dns: ${answered}/${sources * perSource} answered in ${seconds.toFixed(2)} s ` +
          `(${Math.round(answered / seconds)} queries/s, ${inFlight * sources} in flight)`,
      );
      assertEquals(
        results.map((r) => r.wrong),
        Array(sources).fill(0),
        "misrouted or wrong answers",
      );
      assertEquals(results.map((r) => r.lost), Array(sources).fill(0), "unanswered queries");
      assertEquals(answered, sources * perSource);
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
    await waitFor(
      "the agent pod to be gone",
      async () => (await agentPodNames(ns.name)).length === 0,
      {
        timeoutMs: 20_000,
      },
    );
  },
});

Deno.test({
  name:
    "story: datagrams of 1, 1,400 and 60,000 bytes return intact from a pod's UDP echo; a UDP-only Service port needs no @udp; one local port carries TCP and UDP at once",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("udp-echo");
    const { podIP } = await createUdpEcho(ns.name);
    const both = freePortForBoth();
    const relay = await startRelay([
      "-n",
      ns.name,
      "svc/echo-udp-only",
      ":9000",
      `ip/${podIP}`,
      `${both}:9000@udp`,
      `${both}:9000@tcp`,
    ], { readyLines: 3 });
    try {
      // No @udp was written: the Service port is UDP only, so relay forwards UDP.
      assertMatch(relay.readyLines[0], /-> svc\/echo-udp-only:9000\/udp$/, relay.readyLines[0]);
      assertEquals(relay.ports.slice(1), [both, both]);
      const udpPorts = [relay.ports[0], both];
      for (const port of udpPorts) {
        const client = new UdpClient();
        try {
          for (const [i, size] of [1, 1_400, 60_000].entries()) {
            const sent = pattern(size, i + port);
            const reply = await client.request(port, sent);
            assert(reply, `no echo of ${size} bytes via ${port}`);
            assertEquals(reply.length, size, `datagram of ${size} bytes came back split or merged`);
            assertEquals(reply, sent);
          }
        } finally {
          await client.close();
        }
      }
      // The same local port's TCP listener reaches the pod's TCP echo meanwhile.
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: both });
      try {
        await conn.write(new TextEncoder().encode("over tcp\n"));
        const buffer = new Uint8Array(64);
        let got = "";
        while (!got.endsWith("\n")) {
          const n = await conn.read(buffer);
          if (n === null) break;
          got += new TextDecoder().decode(buffer.subarray(0, n));
        }
        assertEquals(got, "over tcp\n");
      } finally {
        conn.close();
      }
    } finally {
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: a port a Service declares for both TCP and UDP without @tcp/@udp is a usage error naming both choices, and creates nothing",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("udp-ambig");
    await createUdpEcho(ns.name);
    const relay = startRelay(["-n", ns.name, "svc/echo-both", ":9000"]);
    const error = await relay.then(() => null, (e: Error) => e);
    assert(error, "relay started although the protocol is ambiguous");
    assertMatch(error.message, /exited with 2 /);
    assertMatch(error.message, /svc\/echo-both port 9000 is ambiguous/);
    assertMatch(error.message, /9000@tcp or 9000@udp/);
    assertEquals(await agentPodNames(ns.name), []);
  },
});

Deno.test({
  name:
    "story: a pod flooding one UDP session does not starve another on the same tunnel; the flood's drops are counted and reported",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("udp-flood");
    await createUdpEcho(ns.name);
    // The echo answering the other session runs in a pod of its own: the flooding server's
    // process is busy, and its delays are not relay's.
    await applyYaml(
      `
apiVersion: v1
kind: Pod
metadata: { name: udp-echo-b, labels: { app: udp-echo-b } }
spec:
  containers:
    - name: echo
      image: relay-test/echo:latest
      ports: [{ name: echo-udp, containerPort: 9000, protocol: UDP }]
`,
      ns.name,
    );
    await waitForReadyPod(ns.name, "app=udp-echo-b");
    // One tunnel, so both sessions share it: the worst case for head-of-line blocking.
    const relay = await startRelay([
      "-v",
      "--tunnels",
      "1",
      "--udp-idle-timeout",
      "3s",
      "-n",
      ns.name,
      "pod/udp-echo",
      ":9003@udp",
      "pod/udp-echo-b",
      ":9000@udp",
    ], { readyLines: 2 });
    const [floodPort, echoPort] = relay.ports;
    const flooded = new UdpClient();
    const pinger = new UdpClient();
    try {
      /** Echo pings, one at a time, until `more()` says stop; the round trips answered. */
      const ping = async (more: (sent: number) => boolean) => {
        const rtts: number[] = [];
        let sent = 0;
        while (more(sent)) {
          const datagram = pattern(64, sent++);
          const start = performance.now();
          const reply = await pinger.request(echoPort, datagram, 1_000);
          if (reply && reply.length === 64 && reply[0] === datagram[0]) {
            rtts.push(performance.now() - start);
          }
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
        return { sent, rtts };
      };
      assert(await pinger.request(echoPort, pattern(64, 0)), "no echo before the flood");
      const calm = await ping((sent) => sent < 200);

      let received = 0;
      let firstArrival = 0;
      let lastArrival = 0;
      flooded.onDatagram = () => {
        if (received++ === 0) firstArrival = performance.now();
        lastArrival = performance.now();
        return true;
      };
      // Far more than one tunnel can carry: 1,400-byte datagrams as fast as the pod can send.
      const count = 150_000;
      await flooded.send(floodPort, new TextEncoder().encode(`flood ${count} 1400`));
      await waitFor("the flood to arrive", () => received > 0, {
        timeoutMs: 10_000,
        intervalMs: 10,
      });
      // Ping for as long as the flood lasts (at most 3,000 pings).
      const stormy = await ping((sent) => sent < 3_000 && performance.now() - lastArrival < 300);
      await waitFor("the flood to end", () => performance.now() - lastArrival > 1_000, {
        timeoutMs: 60_000,
        intervalMs: 100,
      });
      const floodSeconds = (lastArrival - firstArrival) / 1000;
      const ms = (rtts: number[], p: number) => percentile(rtts, p).toFixed(2);
      console.log(
        `udp flood: ${received}/${count} flood datagrams arrived in ${floodSeconds.toFixed(1)} s ` +
          `(${(received * 1400 / floodSeconds / 1e6).toFixed(1)} MB/s); echo session p50/p99 ` +
          `${ms(calm.rtts, 50)}/${ms(calm.rtts, 99)} ms calm (${calm.rtts.length}/${calm.sent}), ` +
          `${ms(stormy.rtts, 50)}/${ms(stormy.rtts, 99)} ms flooded ` +
          `(${stormy.rtts.length}/${stormy.sent} answered)`,
      );
      assert(
        calm.rtts.length >= 195,
        `only ${calm.rtts.length}/200 echoes answered before the flood`,
      );
      // The flooded session loses datagrams; the other keeps being answered.
      assert(stormy.sent >= 20, `the flood lasted for only ${stormy.sent} pings`);
      assert(
        stormy.rtts.length >= stormy.sent * 0.9,
        `only ${stormy.rtts.length}/${stormy.sent} echoes answered during the flood`,
      );
      assert(received < count, "the whole flood arrived: it did not overload the tunnel");

      // Once the flood's session idles out, relay and its agent report what they dropped.
      const [agent] = await agentPodNames(ns.name);
      const sessionEnd = new RegExp(
        `udp session 127\\.0\\.0\\.1:${flooded.port} -> pod/udp-echo:9003 ended; (\\d+) dropped`,
      );
      await waitFor("the flood session to end", () => sessionEnd.test(relay.stderr()), {
        timeoutMs: 15_000,
      });
      const agentDrops = await waitFor("the agent to report its drops", async () => {
        const lines = [
          ...(await agentLog(ns.name, agent)).matchAll(
            /udp [\d.]+:9003 session ended; (\d+) datagrams dropped/g,
          ),
        ];
        return lines.length ? lines.reduce((n, m) => n + Number(m[1]), 0) : undefined;
      }, { timeoutMs: 15_000 });
      const clientDrops = Number(relay.stderr().match(sessionEnd)![1]);
      console.log(`udp flood: dropped ${agentDrops} at the agent, ${clientDrops} at relay`);
      assert(agentDrops + clientDrops > 0, "datagrams were lost but no drop was counted");
      assert(agentDrops + clientDrops <= count - received, "more drops counted than were lost");
    } finally {
      await flooded.close();
      await pinger.close();
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});

Deno.test({
  name:
    "story: idle UDP sessions end at both ends after --udp-idle-timeout, freeing the agent's sockets; the same source then starts afresh",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("udp-idle");
    await createUdpEcho(ns.name);
    const relay = await startRelay([
      "-v",
      "--udp-idle-timeout",
      "2s",
      "-n",
      ns.name,
      "pod/udp-echo",
      ":9000@udp",
    ]);
    const clients = Array.from({ length: 5 }, () => new UdpClient());
    try {
      const [agent] = await agentPodNames(ns.name);
      assert(agent, "no agent pod");
      // The agent is told relay's timeout, so a session ends at both ends at the same time.
      const args = await kubectl([
        "get",
        "pod",
        agent,
        "-n",
        ns.name,
        "-o",
        "jsonpath={.spec.containers[0].args}",
      ]);
      assertMatch(args, /"--udp-idle-timeout","2000ms"/);
      const baseline = await udpSockets(ns.name, agent);
      for (const [i, client] of clients.entries()) {
        const reply = await client.request(relay.ports[0], pattern(100, i));
        assertEquals(reply, pattern(100, i));
      }
      // One connected socket per session at the agent...
      assertEquals(await udpSockets(ns.name, agent), baseline + clients.length);
      // ...all gone once the sessions have been silent for the timeout.
      await waitFor(
        "the agent's UDP sockets to close",
        async () => (await udpSockets(ns.name, agent)) === baseline,
        { timeoutMs: 10_000, intervalMs: 200 },
      );
      const ended = relay.stderr().match(/udp session 127\.0\.0\.1:\d+ -> \S+ ended/g) ?? [];
      assertEquals(ended.length, clients.length, relay.stderr());
      // A source that comes back gets a new session, and a new socket.
      const again = await clients[0].request(relay.ports[0], pattern(10, 7));
      assertEquals(again, pattern(10, 7));
      assertEquals(await udpSockets(ns.name, agent), baseline + 1);
    } finally {
      for (const client of clients) await client.close();
      assertEquals(await relay.stop("SIGTERM"), 0, relay.stderr());
    }
  },
});
