import { assertEquals, assertRejects } from "./assert.ts";
import { pickTargetPod, type ResolveApi, resolveTarget } from "../lib/kube/resolve.ts";
import { selectorString } from "../lib/kube/pods.ts";
import { KubeError } from "../lib/kube/errors.ts";
import { UsageError } from "../lib/errors.ts";
import type { V1Pod, V1Service } from "@kubernetes/client-node";

/** A 404 as client-node throws it. */
function notFound(): Error {
  return Object.assign(new Error("HTTP-Code: 404"), { code: 404, body: "{}" });
}

function pod(name: string, ip: string, opts: {
  ready?: boolean;
  created?: string;
  labels?: Record<string, string>;
  ports?: { name?: string; containerPort: number; protocol?: string }[];
} = {}): V1Pod {
  return {
    metadata: {
      name,
      labels: opts.labels ?? { app: "web" },
      creationTimestamp: new Date(opts.created ?? "2025-01-01T00:00:00Z"),
    },
    spec: {
      containers: [{ name: "c", ports: opts.ports ?? [{ name: "http", containerPort: 8080 }] }],
    },
    status: {
      phase: "Running",
      podIP: ip,
      conditions: [{ type: "Ready", status: opts.ready === false ? "False" : "True" }],
    },
  };
}

/** A stub cluster: objects by "kind/name", pods listed by their `app` label. */
function stubApi(
  objects: Record<string, unknown>,
  pods: V1Pod[] = [],
): ResolveApi & { lists: string[] } {
  const lists: string[] = [];
  const read = (kind: string) => ({ name }: { name: string }) => {
    const found = objects[`${kind}/${name}`];
    return found ? Promise.resolve(found) : Promise.reject(notFound());
  };
  // deno-lint-ignore no-explicit-any
  const api: any = {
    namespace: "default",
    lists,
    core: {
      readNamespacedService: read("svc"),
      readNamespacedPod: read("pod"),
      listNamespacedPod: ({ labelSelector }: { labelSelector: string }) => {
        lists.push(labelSelector);
        const app = /app=([\w-]+)/.exec(labelSelector)?.[1];
        return Promise.resolve({ items: pods.filter((p) => p.metadata?.labels?.app === app) });
      },
    },
    apps: {
      readNamespacedDeployment: read("deploy"),
      readNamespacedStatefulSet: read("sts"),
      readNamespacedDaemonSet: read("ds"),
      readNamespacedReplicaSet: read("rs"),
    },
  };
  return api;
}

const svc = (spec: V1Service["spec"]): V1Service => ({ metadata: { name: "s" }, spec });

Deno.test("resolve: ClusterIP Service → clusterIP and service port; UDP inferred", async () => {
  const api = stubApi({
    "svc/dns": svc({
      clusterIP: "198.18.0.10",
      ports: [
        { name: "dns", port: 53, protocol: "UDP", targetPort: 5353 as never },
        { name: "metrics", port: 9153, protocol: "TCP" },
      ],
    }),
  });
  const [dns, metrics] = await resolveTarget(api, { kind: "svc", name: "dns" }, [
    { remote: 53 },
    { remote: "metrics" },
  ]);
  assertEquals([dns.label, dns.protocol, await dns.destination()], [
    "svc/dns:53",
    "udp",
    { host: "198.18.0.10", port: 53 },
  ]);
  assertEquals([metrics.protocol, await metrics.destination()], [
    "tcp",
    { host: "198.18.0.10", port: 9153 },
  ]);
});

Deno.test("resolve: TCP and UDP on one port is ambiguous unless @proto is given", async () => {
  const api = stubApi({
    "svc/dns": svc({
      clusterIP: "198.18.0.10",
      ports: [{ port: 53, protocol: "UDP", name: "u" }, { port: 53, protocol: "TCP", name: "t" }],
    }),
  });
  await assertRejects(
    () => resolveTarget(api, { kind: "svc", name: "dns" }, [{ remote: 53 }]),
    UsageError,
    "53@udp or 53@tcp",
  );
  const [tcp] = await resolveTarget(api, { kind: "svc", name: "dns" }, [
    { remote: 53, protocol: "tcp" },
  ]);
  assertEquals(tcp.protocol, "tcp");
});

Deno.test("resolve: unknown port, unknown name and missing object are usage errors", async () => {
  const api = stubApi({ "svc/web": svc({ clusterIP: "198.18.0.2", ports: [{ port: 80 }] }) });
  await assertRejects(
    () => resolveTarget(api, { kind: "svc", name: "web" }, [{ remote: 81 }]),
    UsageError,
    "has no port 81",
  );
  await assertRejects(
    () => resolveTarget(api, { kind: "svc", name: "web" }, [{ remote: "grpc" }]),
    UsageError,
    `no port named "grpc"`,
  );
  await assertRejects(
    () => resolveTarget(api, { kind: "deploy", name: "nope", namespace: "team" }, [{ remote: 1 }]),
    UsageError,
    "deploy/nope not found in namespace team",
  );
});

Deno.test("resolve: ExternalName → its name; host/ and ip/ pass through", async () => {
  const api = stubApi({
    "svc/ext": svc({ type: "ExternalName", externalName: "db.example.internal" }),
  });
  const [ext] = await resolveTarget(api, { kind: "svc", name: "ext" }, [{ remote: 5432 }]);
  assertEquals(await ext.destination(), { host: "db.example.internal", port: 5432 });
  const [host] = await resolveTarget(api, { kind: "host", name: "redis.local" }, [
    { remote: 6379, protocol: "udp" },
  ]);
  assertEquals([host.protocol, await host.destination()], [
    "udp",
    { host: "redis.local", port: 6379 },
  ]);
  await assertRejects(
    () => resolveTarget(api, { kind: "ip", name: "198.18.0.7" }, [{ remote: "http" }]),
    UsageError,
  );
});

Deno.test("resolve: headless Service → a Ready pod at the named targetPort", async () => {
  const api = stubApi(
    {
      "svc/web": svc({
        clusterIP: "None",
        selector: { app: "web" },
        ports: [{ port: 80, targetPort: "http" as never }],
      }),
    },
    [pod("web-0", "198.18.1.1", { ready: false }), pod("web-1", "198.18.1.2")],
  );
  const [web] = await resolveTarget(api, { kind: "svc", name: "web" }, [{ remote: 80 }]);
  assertEquals(await web.destination(), { host: "198.18.1.2", port: 8080 });
});

Deno.test("resolve: pod with a named port; workload follows the newest Ready pod", async () => {
  const pods = [
    pod("web-old", "198.18.1.1", { created: "2025-01-01T00:00:00Z" }),
    pod("web-new", "198.18.1.9", { created: "2025-01-02T00:00:00Z", ready: false }),
  ];
  const deploy = {
    spec: {
      selector: { matchLabels: { app: "web" } },
      template: {
        spec: { containers: [{ name: "c", ports: [{ name: "http", containerPort: 8080 }] }] },
      },
    },
  };
  const api = stubApi({ "pod/web-old": pods[0], "deploy/web": deploy }, pods);
  const [p] = await resolveTarget(api, { kind: "pod", name: "web-old" }, [{ remote: "http" }]);
  assertEquals(await p.destination(), { host: "198.18.1.1", port: 8080 });

  const [d] = await resolveTarget(api, { kind: "deploy", name: "web" }, [{ remote: "http" }]);
  assertEquals(await d.destination(), { host: "198.18.1.1", port: 8080 });
  // The rollout's new pod becomes Ready: the next connection goes there.
  pods[1].status!.conditions = [{ type: "Ready", status: "True" }];
  assertEquals(await d.destination(), { host: "198.18.1.9", port: 8080 });
  // Nothing Ready: the connection fails with a reason, the forward does not.
  for (const p of pods) p.status!.conditions = [];
  await assertRejects(() => d.destination(), KubeError, "no Ready pod");
});

Deno.test("pickTargetPod: pod, Service selector, and a refusal for host/", async () => {
  const pods = [pod("web-1", "198.18.1.2")];
  const api = stubApi({
    "pod/web-1": pods[0],
    "svc/web": svc({ clusterIP: "198.18.0.2", selector: { app: "web" }, ports: [{ port: 80 }] }),
  }, pods);
  assertEquals((await pickTargetPod(api, { kind: "pod", name: "web-1" })).metadata?.name, "web-1");
  assertEquals((await pickTargetPod(api, { kind: "svc", name: "web" })).metadata?.name, "web-1");
  await assertRejects(() => pickTargetPod(api, { kind: "host", name: "x" }), UsageError);
});

Deno.test("selectorString renders matchLabels and every operator", () => {
  assertEquals(
    selectorString({
      matchLabels: { app: "web" },
      matchExpressions: [
        { key: "tier", operator: "In", values: ["a", "b"] },
        { key: "x", operator: "NotIn", values: ["c"] },
        { key: "y", operator: "Exists" },
        { key: "z", operator: "DoesNotExist" },
      ],
    }),
    "app=web,tier in (a,b),x notin (c),y,!z",
  );
});

Deno.test("resolveTarget: a pod/ target followed by name fails at once when deleted or made again elsewhere", async () => {
  const web = pod("web-0", "198.18.1.5");
  const api = stubApi({ "pod/web-0": web });
  let watched: V1Pod[] | undefined;
  const asked: string[] = [];
  const follow = (namespace: string, selector: string, by?: "label" | "field") => {
    asked.push(`${namespace} ${by} ${selector}`);
    return Promise.resolve({ pods: () => watched });
  };
  const [p] = await resolveTarget(api, { kind: "pod", name: "web-0" }, [{ remote: 8080 }], follow);
  assertEquals(p.allows, { protocol: "tcp", host: "198.18.1.5", port: 8080 });
  assertEquals(asked, ["default field metadata.name=web-0"]);
  // Not yet watching: the IP it had.
  assertEquals(await p.destination(), { host: "198.18.1.5", port: 8080 });
  watched = [web];
  assertEquals(await p.destination(), { host: "198.18.1.5", port: 8080 });
  watched = [];
  await assertRejects(() => p.destination(), KubeError, "pod/web-0 in namespace default is gone");
  watched = [pod("web-0", "198.18.1.77")];
  await assertRejects(() => p.destination(), KubeError, "made again with another IP");
});

Deno.test("resolveTarget: a named port resolves to the number a local port defaults to; an ended pod is refused", async () => {
  const web = pod("web-0", "198.18.1.5");
  const service: V1Service = {
    spec: {
      clusterIP: "10.96.0.9",
      selector: { app: "web" },
      ports: [{ name: "http", port: 80, targetPort: "http" as unknown as number }],
    },
  };
  const api = stubApi({ "pod/web-0": web, "svc/web": service });
  const [p] = await resolveTarget(api, { kind: "pod", name: "web-0" }, [{ remote: "http" }]);
  assertEquals(p.resolvedPort, 8080);
  const [s] = await resolveTarget(api, { kind: "svc", name: "web" }, [{ remote: "http" }]);
  assertEquals(s.resolvedPort, 80);
  web.status!.phase = "Succeeded";
  await assertRejects(
    () => resolveTarget(api, { kind: "pod", name: "web-0" }, [{ remote: 8080 }]),
    KubeError,
    "pod/web-0 in namespace default has ended (phase Succeeded)",
  );
});
