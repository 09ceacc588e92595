/**
 * The DNS server binary against a fake API server on loopback HTTP: it lists, reports ready, and
 * follows Service, EndpointSlice and ConfigMap changes pushed down its watches.
 */
// @ts-types="@types/dns-packet"
import dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { Buffer } from "node:buffer";

const LOOPBACK = "127.0.0.1";
const SERVER = new URL("./fixtures/dns_server.ts", import.meta.url).pathname;

type WatchEvent = { type: "ADDED" | "MODIFIED" | "DELETED"; object: Record<string, unknown> };

/**
 * One collection of the fake API: its current items, every event so far and its open watch
 * streams.
 */
class FakeCollection {
  items = new Map<string, Record<string, unknown>>();
  watchers = new Set<ReadableStreamDefaultController<Uint8Array>>();
  /** Each pushed event, encoded, with the resourceVersion it created. */
  history: { version: number; line: Uint8Array }[] = [];
  version = 1;

  constructor(readonly kind: string, initial: Record<string, unknown>[] = []) {
    for (const item of initial) this.items.set(FakeCollection.key(item), item);
  }

  static key(item: Record<string, unknown>): string {
    const meta = item.metadata as { namespace?: string; name?: string };
    return `${meta.namespace}/${meta.name}`;
  }

  list(): Response {
    return Response.json({
      kind: `${this.kind}List`,
      apiVersion: "v1",
      metadata: { resourceVersion: String(this.version) },
      items: [...this.items.values()],
    });
  }

  /**
   * Like a real API server, a watch from a resourceVersion first gets every event after it: a
   * client's watch request reaches us some time after its list, and an event pushed in between
   * must not be lost until the client happens to list again.
   */
  watch(resourceVersion: string | null): Response {
    const since = Number(resourceVersion ?? this.version);
    let self: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        self = controller;
        for (const { version, line } of this.history) {
          if (version > since) controller.enqueue(line);
        }
        this.watchers.add(controller);
      },
      cancel: () => {
        this.watchers.delete(self);
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  }

  push({ type, object }: WatchEvent): void {
    this.version++;
    const meta = object.metadata as Record<string, unknown>;
    meta.resourceVersion = String(this.version);
    if (type === "DELETED") this.items.delete(FakeCollection.key(object));
    else this.items.set(FakeCollection.key(object), object);
    const line = new TextEncoder().encode(JSON.stringify({ type, object }) + "\n");
    this.history.push({ version: this.version, line });
    for (const watcher of this.watchers) watcher.enqueue(line);
  }

  closeWatches(): void {
    for (const watcher of this.watchers) watcher.close();
    this.watchers.clear();
  }
}

function service(name: string, namespace: string, clusterIP: string) {
  return { apiVersion: "v1", kind: "Service", metadata: { name, namespace }, spec: { clusterIP } };
}

function startFakeApi(collections: Record<string, FakeCollection>) {
  return Deno.serve({ hostname: LOOPBACK, port: 0, onListen: () => {} }, (request) => {
    const url = new URL(request.url);
    const collection = collections[url.pathname];
    if (!collection) return new Response("not found", { status: 404 });
    return url.searchParams.get("watch") === "true"
      ? collection.watch(url.searchParams.get("resourceVersion"))
      : collection.list();
  });
}

function kubeconfig(port: number): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "fake",
      cluster: { server: `http://${LOOPBACK}:${port}`, "insecure-skip-tls-verify": true },
    }],
    users: [{ name: "fake", user: {} }],
    contexts: [{ name: "fake", context: { cluster: "fake", user: "fake" } }],
    "current-context": "fake",
  });
}

async function askUdp(port: number, name: string): Promise<Packet> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
  try {
    const message = dnsPacket.encode({ id: 7, type: "query", questions: [{ name, type: "A" }] });
    await socket.send(message, { transport: "udp", hostname: LOOPBACK, port });
    return dnsPacket.decode(Buffer.from((await socket.receive())[0]));
  } finally {
    socket.close();
  }
}

/** The first A record's address, or the rcode when there is none. */
async function lookup(port: number, name: string): Promise<string> {
  const reply = await askUdp(port, name);
  const answer = reply.answers?.find((record) => record.type === "A");
  return answer && "data" in answer
    ? String(answer.data)
    : (reply as { rcode?: string }).rcode ?? "";
}

/** Asks until the answer is `expected`; watches are asynchronous, so a few tries are normal. */
async function eventually(port: number, name: string, expected: string): Promise<void> {
  let last = "";
  for (let attempt = 0; attempt < 200; attempt++) {
    last = await lookup(port, name);
    if (last === expected) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assertEquals(last, expected, `answer for ${name}`);
}

Deno.test("dns server: lists, says ready, then follows watch events", async () => {
  const services = new FakeCollection("Service", [service("echo", "default", "198.19.0.20")]);
  const slices = new FakeCollection("EndpointSlice");
  const configMaps = new FakeCollection("ConfigMap");
  const api = startFakeApi({
    "/api/v1/services": services,
    "/apis/discovery.k8s.io/v1/endpointslices": slices,
    "/api/v1/namespaces/kube-system/configmaps": configMaps,
  });
  const dir = await Deno.makeTempDir({ prefix: "relay-dns-test-" });
  const configFile = `${dir}/kubeconfig`;
  await Deno.writeTextFile(configFile, kubeconfig(api.addr.port));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", SERVER, "--port", "0", "--address", LOOPBACK],
    env: { KUBECONFIG: configFile },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let text = "";
    while (!text.includes("dns ready\n")) {
      const { value, done } = await output.read();
      if (done) throw new Error(`dns server exited early: ${text}`);
      text += value;
    }
    const port = Number(/on \S+:(\d+) \(udp\+tcp\)/.exec(text)?.[1]);

    assertEquals(await lookup(port, "echo.default.svc.cluster.local"), "198.19.0.20");
    assertEquals(await lookup(port, "later.default.svc.cluster.local"), "NXDOMAIN");

    services.push({ type: "ADDED", object: service("later", "default", "198.19.0.21") });
    await eventually(port, "later.default.svc.cluster.local", "198.19.0.21");

    services.push({ type: "DELETED", object: service("echo", "default", "198.19.0.20") });
    await eventually(port, "echo.default.svc.cluster.local", "NXDOMAIN");

    services.push({ type: "ADDED", object: service("db", "shop", "None") });
    slices.push({
      type: "ADDED",
      object: {
        apiVersion: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        addressType: "IPv4",
        metadata: {
          name: "db-1",
          namespace: "shop",
          labels: { "kubernetes.io/service-name": "db" },
        },
        endpoints: [{ addresses: ["198.18.3.4"], conditions: { ready: true } }],
      },
    });
    await eventually(port, "db.shop.svc.cluster.local", "198.18.3.4");

    configMaps.push({
      type: "ADDED",
      object: {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "relay-dns-extra", namespace: "kube-system" },
        data: { hosts: "redis.example later.default.svc.cluster.local\n" },
      },
    });
    await eventually(port, "redis.example", "198.19.0.21");

    // A watch that ends makes the server list again, which also catches changes made meanwhile.
    services.items.delete("default/later");
    services.closeWatches();
    await eventually(port, "later.default.svc.cluster.local", "NXDOMAIN");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await output.cancel();
    services.closeWatches();
    slices.closeWatches();
    configMaps.closeWatches();
    await api.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
