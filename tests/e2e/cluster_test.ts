/**
 * The local cluster is real: pods are processes in their own network namespaces, port-forward
 * goes through the API server and kwok into the pod's localhost, kube-proxy makes Services
 * work between pods, cluster DNS follows Services, and the host cannot reach any of it.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
  rejects,
} from "node:assert/strict";
import {
  applyYaml,
  createTestNamespace,
  ensureCluster,
  execInPod,
  kubectl,
  kubectlJson,
  kubectlPortForward,
  type PodLike,
  podNetns,
  podPid,
  readLine,
  runCommand,
  waitFor,
  waitForReadyPod,
} from "./harness.ts";

/** A Deployment (and Service on port 80 → 8080) of the echo server. */
function echoManifest(name: string): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "List",
    items: [
      {
        apiVersion: "apps/v1",
        kind: "Deployment",
        metadata: { name },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: name } },
          template: {
            metadata: { labels: { app: name } },
            spec: {
              containers: [{
                name: "echo",
                image: "relay-test/echo:latest",
                readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
              }],
            },
          },
        },
      },
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name },
        spec: { selector: { app: name }, ports: [{ name: "greet", port: 80, targetPort: 8080 }] },
      },
    ],
  });
}

async function getPod(namespace: string, name: string): Promise<PodLike> {
  return await kubectlJson<PodLike>(["get", "pod", name, "-n", namespace]);
}

/**
 * Sends `payload` over a fresh connection and reads back as many bytes. (kubectl
 * port-forward does not pass a half-close on, so the reply's end cannot be a FIN.)
 */
async function echoThrough(port: number, payload: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const echoed = new Uint8Array(payload.length);
    const [, received] = await Promise.all([
      (async () => {
        let offset = 0;
        while (offset < payload.length) offset += await conn.write(payload.subarray(offset));
      })(),
      (async () => {
        let offset = 0;
        while (offset < echoed.length) {
          const n = await conn.read(echoed.subarray(offset));
          if (n === null) break;
          offset += n;
        }
        return offset;
      })(),
    ]);
    return echoed.subarray(0, received);
  } finally {
    conn.close();
  }
}

Deno.test({
  name: "story: a Deployment runs as a real process in its own network namespace, " +
    "serves 1 MiB intact through kubectl port-forward, and is restarted when killed",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("e2e-cluster");
    await applyYaml(echoManifest("echo"), ns.name);
    const pod = await waitForReadyPod(ns.name, "app=echo");
    const podIp = (await getPod(ns.name, pod)).status!.podIP!;
    assertMatch(podIp, /^198\.18\.\d+\.\d+$/);

    // The container is a process whose network namespace is the pod's.
    const pid = await podPid(ns.name, pod, "echo");
    const netns = await podNetns(ns.name, pod);
    const processNet = await Deno.stat(`/proc/${pid}/ns/net`);
    const podNet = await Deno.stat(`/run/netns/${netns}`);
    assertEquals(processNet.ino, podNet.ino, "process is not in the pod's network namespace");
    const hostNet = await Deno.stat(`/proc/self/ns/net`);
    assert(hostNet.ino !== podNet.ino);

    // Inside the pod, the server sees the pod's own address.
    const inside = await execInPod(ns.name, pod, ["socat", "-T3", "-", `TCP:${podIp}:8080`], {
      input: "",
    });
    assertEquals(inside.stdout.split("\n")[0], `pod=${pod} addr=${podIp}:8080`);

    // Through the API server and kwok, a port-forward lands on the pod's localhost.
    await using forward = await kubectlPortForward(ns.name, `pod/${pod}`, [8080, 9000]);
    const [greetPort, echoPort] = forward.localPorts;
    const greet = await Deno.connect({ hostname: "127.0.0.1", port: greetPort });
    assertEquals(await readLine(greet), `pod=${pod} addr=127.0.0.1:8080`);
    greet.close();
    const payload = crypto.getRandomValues(new Uint8Array(64 * 1024));
    const mib = new Uint8Array(1024 * 1024);
    for (let i = 0; i < 16; i++) mib.set(payload, i * payload.length);
    mib[12345] ^= 0xff; // not periodic: a misplaced chunk would show
    const echoed = await echoThrough(echoPort, mib);
    assertEquals(echoed.length, mib.length);
    assertEquals(echoed, mib);

    // Killing the process: the kubelet shim restarts it, counts it, and it serves again.
    Deno.kill(pid, "SIGKILL");
    await waitFor("restartCount 1 and Ready again", async () => {
      const status = (await getPod(ns.name, pod)).status!;
      const container = status.containerStatuses!.find((c) => c.name === "echo")!;
      return container.restartCount >= 1 && container.ready;
    }, { timeoutMs: 60_000 });
    const newPid = await podPid(ns.name, pod, "echo");
    assert(newPid !== pid, "a new process was started");
    assertEquals((await Deno.stat(`/proc/${newPid}/ns/net`)).ino, podNet.ino);
    const again = await echoThrough(echoPort, new TextEncoder().encode("still here\n"));
    assertEquals(new TextDecoder().decode(again), "still here\n");
  },
});

Deno.test({
  name: "story: a connection closed through kubectl port-forward is closed in the pod too, " +
    "as a real node's runtime closes it, so idle connections do not pile up in the pod",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("e2e-cluster");
    await applyYaml(echoManifest("echo"), ns.name);
    const pod = await waitForReadyPod(ns.name, "app=echo");
    const netns = await podNetns(ns.name, pod);
    await using forward = await kubectlPortForward(ns.name, `pod/${pod}`, [9000]);
    const established = async () => {
      const ss = await runCommand(
        ["ip", "netns", "exec", netns, "ss", "-tnH", "state", "established", "( sport = :9000 )"],
      );
      return ss.stdout.trim().split("\n").filter(Boolean).length;
    };
    // Each client closes without a half-close first, as most clients do.
    for (let i = 0; i < 20; i++) {
      const echoed = await echoThrough(forward.localPorts[0], new TextEncoder().encode(`${i}\n`));
      assertEquals(new TextDecoder().decode(echoed), `${i}\n`);
    }
    // kwok used to keep the pod's side open until the whole port-forward ended.
    await waitFor("no connection left open in the pod", async () => await established() === 0, {
      timeoutMs: 15_000,
    });
  },
});

Deno.test({
  name: "story: pods reach each other by ClusterIP Service and DNS name, DNS follows " +
    "Services as they come and go, and the host cannot reach pod or Service addresses",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("e2e-net");
    await applyYaml(echoManifest("server"), ns.name);
    await applyYaml(echoManifest("client"), ns.name);
    const server = await waitForReadyPod(ns.name, "app=server");
    const client = await waitForReadyPod(ns.name, "app=client");
    const serverIp = (await getPod(ns.name, server)).status!.podIP!;
    const clusterIp = (await kubectl([
      "get",
      "service",
      "server",
      "-n",
      ns.name,
      "-o",
      "jsonpath={.spec.clusterIP}",
    ])).trim();
    assertMatch(clusterIp, /^198\.19\.\d+\.\d+$/);

    const greetingVia = async (address: string) => {
      const result = await execInPod(ns.name, client, ["socat", "-T3", "-", `TCP:${address}`], {
        input: "",
      });
      return result.stdout.split("\n")[0];
    };
    // ClusterIP (kube-proxy's DNAT), full DNS name, and the search-path short name. kube-proxy
    // programs a newly ready endpoint a sync later, as in any cluster, so the first call waits.
    const greeting = `pod=${server} addr=${serverIp}:8080`;
    await waitFor(`the ClusterIP ${clusterIp}:80 to reach ${server}`, async () => {
      const reply = await greetingVia(`${clusterIp}:80`);
      if (reply !== greeting) throw new Error(`it answered ${JSON.stringify(reply)}`);
      return true;
    }, { timeoutMs: 15_000 });
    assertEquals(await greetingVia(`server.${ns.name}.svc.cluster.local:80`), greeting);
    assertEquals(await greetingVia("server:80"), greeting);
    // Pod to pod, directly.
    assertEquals(await greetingVia(`${serverIp}:8080`), greeting);

    // A Service created now resolves within 10 s, and stops resolving once deleted.
    const dig = async (name: string) =>
      (await execInPod(ns.name, client, ["dig", "+short", "+time=1", "+tries=1", name])).stdout
        .trim();
    const fqdn = `late.${ns.name}.svc.cluster.local`;
    await kubectl(["create", "service", "clusterip", "late", "-n", ns.name, "--tcp=80:8080"]);
    const lateIp = (await kubectl([
      "get",
      "service",
      "late",
      "-n",
      ns.name,
      "-o",
      "jsonpath={.spec.clusterIP}",
    ])).trim();
    await waitFor(`${fqdn} to resolve`, async () => (await dig(fqdn)) === lateIp, {
      timeoutMs: 10_000,
    });
    await kubectl(["delete", "service", "late", "-n", ns.name]);
    await waitFor(`${fqdn} to stop resolving`, async () => (await dig(fqdn)) === "", {
      timeoutMs: 10_000,
    });

    // The host routes 198.18.0.0/15 as `unreachable`: a connect fails at once (EHOSTUNREACH)
    // and no packet leaves the machine.
    for (const [hostname, port] of [[serverIp, 8080], [clusterIp, 80]] as const) {
      await rejects(() => Deno.connect({ hostname, port }), /unreachable|no route to host/i);
    }
  },
});

Deno.test({
  name: "story: an image the node cannot run leaves the pod waiting with ErrImagePull and an " +
    "event; a Job's pod that exits 0 Succeeds",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("e2e-pods");
    await kubectl(["run", "nope", "-n", ns.name, "--image=example.invalid/nope:1"]);
    const reason = await waitFor("ErrImagePull or ImagePullBackOff", async () => {
      const status = (await getPod(ns.name, "nope")).status;
      const waiting = status?.containerStatuses?.[0]?.state.waiting;
      return waiting?.reason && /ImagePull/.test(waiting.reason) ? waiting.reason : undefined;
    });
    assertMatch(reason, /^(ErrImagePull|ImagePullBackOff)$/);
    const events = await kubectl([
      "get",
      "events",
      "-n",
      ns.name,
      "--field-selector",
      "involvedObject.name=nope",
    ]);
    assertMatch(events, /Failed to pull image "example.invalid\/nope:1"/);

    await kubectl([
      "create",
      "job",
      "done",
      "-n",
      ns.name,
      "--image=relay-test/shell",
      "--",
      "sh",
      "-c",
      "exit 0",
    ]);
    await kubectl(["wait", "-n", ns.name, "--for=condition=complete", "job/done", "--timeout=60s"]);
    const pods = await kubectlJson<{ items: PodLike[] }>([
      "get",
      "pods",
      "-n",
      ns.name,
      "-l",
      "job-name=done",
    ]);
    assertEquals(pods.items[0]?.status?.phase, "Succeeded");
  },
});

Deno.test({
  name: "story: a container that outgrows its memory limit is OOMKilled, as a kubelet's would be",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("e2e-limits");
    // tail keeps a line until its end: 300 MB of zeros without a newline is one 300 MB line.
    await applyYaml(
      `
apiVersion: v1
kind: Pod
metadata: { name: hungry }
spec:
  restartPolicy: Never
  containers:
    - name: hungry
      image: relay-test/shell
      command: [sh, -c, "head -c 300000000 /dev/zero | tail >/dev/null"]
      resources: { limits: { memory: 64Mi, cpu: 500m } }
`,
      ns.name,
    );
    const terminated = await waitFor("the container to end", async () => {
      const state = (await getPod(ns.name, "hungry")).status?.containerStatuses?.[0]?.state;
      return state?.terminated;
    }, { timeoutMs: 60_000 });
    assertEquals(terminated.reason, "OOMKilled");
    assertEquals(terminated.exitCode, 137);
    assertEquals((await getPod(ns.name, "hungry")).status?.phase, "Failed");
  },
});
