/**
 * The kubelet shim: watches the pods bound to the kwok node and keeps each one running as
 * local processes in its own network namespace (see pod_worker.ts). Started by
 * `deno task cluster up`; one per cluster.
 */
import { certFile } from "../certs.ts";
import { NODE_NAME, PATHS, POD_NETNS_PREFIX, REPO_DIR } from "../config.ts";
import { API_SERVER_URL } from "../kubeconfig.ts";
import { deleteNetns, listClusterNetns } from "../network.ts";
import { must } from "../proc.ts";
import { KubeClient, KubeError } from "./kube.ts";
import { IpPool } from "./pod_network.ts";
import { PodWorker, type PodWorkerContext } from "./pod_worker.ts";
import type { Pod } from "./types.ts";

function log(message: string): void {
  console.log(`${new Date().toISOString()} ${message}`);
}

const kube = new KubeClient({
  server: API_SERVER_URL,
  caFile: certFile("ca", "crt"),
  certFile: certFile("admin", "crt"),
  keyFile: certFile("admin", "key"),
});
const krelayDir = await must(["bash", `${REPO_DIR}/scripts/build-cluster.sh`, "krelay-path"]);
const ctx: PodWorkerContext = {
  kube,
  ips: new IpPool(),
  images: {
    repoDir: REPO_DIR,
    deno: Deno.execPath(),
    krelayServer: `${krelayDir.trim()}/krelay-server`,
  },
  log,
};
const workers = new Map<string, PodWorker>();
const podsPath = `/api/v1/pods?fieldSelector=spec.nodeName%3D${NODE_NAME}`;

/** Brings one pod event into effect. */
async function handle(type: string, pod: Pod): Promise<void> {
  const uid = pod.metadata.uid;
  let worker = workers.get(uid);
  if (type === "DELETED") {
    if (worker) {
      workers.delete(uid);
      await worker.delete(false);
    }
    return;
  }
  if (!worker) {
    // A pod that is terminal already, or being deleted before it ever ran, needs no process.
    if (pod.metadata.deletionTimestamp && !pod.status?.podIP) {
      await kube.request(
        "DELETE",
        `/api/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`,
        {
          gracePeriodSeconds: 0,
          preconditions: { uid },
        },
      ).catch(() => {});
      return;
    }
    if (pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed") return;
    worker = new PodWorker(ctx, pod);
    workers.set(uid, worker);
  }
  await worker.update(pod);
}

/**
 * Forgets what an earlier shim left: every pod namespace goes (its processes died with that
 * shim's bookkeeping) and each pod starts again from scratch, keeping its IP.
 */
async function cleanUpStale(): Promise<void> {
  const list = await kube.request<{ items: Pod[] }>("GET", podsPath);
  for (const pod of list.items) {
    if (pod.status?.podIP) ctx.ips.reserve(pod.status.podIP);
  }
  for (const name of await listClusterNetns()) {
    if (name.startsWith(POD_NETNS_PREFIX)) await deleteNetns(name);
  }
  await Deno.mkdir(PATHS.pods, { recursive: true });
}

/** Lists, then watches from the list's version; starts over when the watch ends. */
async function watchPods(): Promise<never> {
  while (true) {
    try {
      const list = await kube.request<{ metadata: { resourceVersion: string }; items: Pod[] }>(
        "GET",
        podsPath,
      );
      const seen = new Set<string>();
      for (const pod of list.items) {
        seen.add(pod.metadata.uid);
        void handle("MODIFIED", pod).catch((e) => log(`${e}`));
      }
      for (const [uid, worker] of workers) {
        if (!seen.has(uid)) {
          workers.delete(uid);
          void worker.delete(false);
        }
      }
      let version = list.metadata.resourceVersion;
      while (true) {
        const path = `${podsPath}&watch=1&allowWatchBookmarks=true&resourceVersion=${version}` +
          `&timeoutSeconds=300`;
        for await (const event of kube.watch<Pod>(path)) {
          if (event.type === "ERROR") throw new KubeError(410, JSON.stringify(event.object));
          version = event.object.metadata.resourceVersion ?? version;
          if (event.type === "BOOKMARK") continue;
          void handle(event.type, event.object).catch((e) => log(`${e}`));
        }
      }
    } catch (error) {
      log(`watch: ${error}; listing again`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, async () => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping ${workers.size} pods`);
    await Promise.all([...workers.values()].map((w) => w.delete(false).catch(() => {})));
    Deno.exit(0);
  });
}

await cleanUpStale();
log("kubelet shim watching pods on " + NODE_NAME);
await watchPods();
