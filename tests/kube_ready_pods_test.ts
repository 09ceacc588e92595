import { assertEquals, assertRejects } from "./assert.ts";
import type { V1Pod } from "@kubernetes/client-node";
import { followPods } from "../lib/kube/ready_pods.ts";
import { resolveTarget } from "../lib/kube/resolve.ts";
import { KubeError } from "../lib/kube/errors.ts";
import { ApiError } from "../lib/kube/api.ts";

function pod(name: string, ip: string, created: string, ready = true): V1Pod {
  return {
    metadata: { name, uid: name, labels: { app: "web" }, creationTimestamp: new Date(created) },
    spec: { containers: [{ name: "c" }] },
    status: {
      phase: "Running",
      podIP: ip,
      conditions: [{ type: "Ready", status: ready ? "True" : "False" }],
    },
  };
}

type Callback = (type: string, object: V1Pod) => void;

/**
 * A Watch that hands each watch's callbacks to the test and, like client-node under Deno at
 * its worst, never calls `done` when aborted: stopping must not depend on it.
 */
function fakeWatch(status = 200) {
  const watches: { params: Record<string, string>; event: Callback; done: (e: unknown) => void }[] =
    [];
  return {
    watches,
    watch(
      path: string,
      params: Record<string, string>,
      event: Callback,
      done: (e: unknown) => void,
    ): Promise<AbortController> {
      // As KubeApi.watch: a refused watch rejects, with the status.
      if (status !== 200) return Promise.reject(new ApiError("WATCH", path, status, "Forbidden"));
      watches.push({ params, event, done });
      return Promise.resolve(new AbortController());
    },
  };
}

function api(pods: V1Pod[]) {
  const lists: string[] = [];
  const core = {
    listNamespacedPod: ({ labelSelector }: { labelSelector?: string }) => {
      lists.push(labelSelector ?? "");
      return Promise.resolve({ items: [...pods], metadata: { resourceVersion: "7" } });
    },
    readNamespacedService: () => Promise.reject(new Error("unused")),
    readNamespacedPod: () => Promise.reject(new Error("unused")),
  };
  const deploy = { spec: { selector: { matchLabels: { app: "web" } } } };
  const apps = {
    readNamespacedDeployment: () => Promise.resolve(deploy),
    readNamespacedStatefulSet: () => Promise.reject(new Error("unused")),
    readNamespacedDaemonSet: () => Promise.reject(new Error("unused")),
    readNamespacedReplicaSet: () => Promise.reject(new Error("unused")),
  };
  // deno-lint-ignore no-explicit-any
  return { lists, resolveApi: { namespace: "default", core, apps } as any, core };
}

Deno.test("ready pods: a watched selector picks the newest Ready pod with no list per connection", async () => {
  const old = pod("web-old", "198.18.1.1", "2025-01-01T00:00:00Z");
  const { lists, resolveApi, core } = api([old]);
  const watch = fakeWatch();
  const stop = new AbortController();
  const follow = followPods({ watch, core, signal: stop.signal });
  const [d] = await resolveTarget(resolveApi, { kind: "deploy", name: "web" }, [{
    remote: 8080,
  }], follow);
  assertEquals(lists, ["app=web"]);
  // The watch is by label selector from the list's version, and ends itself server-side.
  assertEquals(watch.watches[0].params, {
    labelSelector: "app=web",
    resourceVersion: "7",
    timeoutSeconds: "25",
  });
  assertEquals(await d.destination(), { host: "198.18.1.1", port: 8080 });

  // A rolling update: the new pod appears, becomes Ready; new connections go there.
  const fresh = pod("web-new", "198.18.1.9", "2025-01-02T00:00:00Z", false);
  watch.watches[0].event("ADDED", fresh);
  assertEquals(await d.destination(), { host: "198.18.1.1", port: 8080 });
  watch.watches[0].event("MODIFIED", pod("web-new", "198.18.1.9", "2025-01-02T00:00:00Z"));
  assertEquals(await d.destination(), { host: "198.18.1.9", port: 8080 });
  watch.watches[0].event("DELETED", old);
  watch.watches[0].event("MODIFIED", pod("web-new", "198.18.1.9", "2025-01-02T00:00:00Z", false));
  assertEquals(lists, ["app=web"], "no list per connection while the watch is current");
  // Nothing Ready in the watched set: a list has the last word before a connection fails
  // (this stub's list still shows the old pod Ready).
  assertEquals(await d.destination(), { host: "198.18.1.1", port: 8080 });
  assertEquals(lists, ["app=web", "app=web"]);

  // The watch failed: until it is back, a connection lists instead of trusting old news.
  watch.watches[0].done(new Error("connection reset"));
  await Promise.resolve();
  assertEquals(await d.destination(), { host: "198.18.1.1", port: 8080 });
  assertEquals(lists.length, 3);
  // Stopping ends the loop (its backoff and deadline timers too: the sanitizers check).
  stop.abort();
});

Deno.test("ready pods: without watch permission the first sync fails naming it", async () => {
  const { core } = api([]);
  const stop = new AbortController();
  const follow = followPods({ watch: fakeWatch(403), core, signal: stop.signal });
  await assertRejects(() => follow("team", "app=web"), KubeError, "forbidden: cannot watch pods");
  stop.abort();
});
