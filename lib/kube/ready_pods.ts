/**
 * The pods of one label selector, followed by list+watch (docs/ARCHITECTURE.md, "Targets":
 * headless Services and workloads follow their Ready pods across rolling updates), so choosing
 * the pod for a new connection costs no API call. Until the watch is open, and again after it
 * failed, {@link PodFollower.pods} says it does not know, and the caller lists instead.
 */
import type { V1Pod } from "@kubernetes/client-node";
import type { CoreApi } from "./resources.ts";
import type { Watcher } from "./api.ts";
import { runListWatch } from "./list_watch.ts";
import { apiError } from "./errors.ts";

/** The pods matching one selector, as last seen. */
export interface PodFollower {
  /** Every matching pod, or undefined while the set is not known to be current. */
  pods(): V1Pod[] | undefined;
}

/**
 * Makes a follower for a namespace and selector (a label selector, or with `by` "field" a
 * field selector such as `metadata.name=web-0`); resolves once it has listed and is watching.
 */
export type FollowPods = (
  namespace: string,
  selector: string,
  by?: "label" | "field",
) => Promise<PodFollower>;

/** What {@link followPods} needs: the client's watch and core API, and when to stop. */
export interface FollowPodsOptions {
  /** A Watch made from a kubeconfig that lib/kube/config.ts loaded (HTTP/1.1 under Deno). */
  watch: Watcher;
  core: Pick<CoreApi, "listNamespacedPod">;
  /** Ends every watch (relay is stopping). */
  signal: AbortSignal;
  /** Receives failures after the first sync (each is retried). */
  onError?: (message: string) => void;
}

/**
 * A {@link FollowPods} whose watches all stop with `options.signal`. The first list and the
 * first watch must succeed: a user without `list pods` or `watch pods` learns it at startup,
 * by name, rather than from every connection.
 */
export function followPods(options: FollowPodsOptions): FollowPods {
  const watch = options.watch;
  // Several ports of one target, or two targets with one selector, share one watch.
  const followers = new Map<string, Promise<PodFollower>>();
  return (namespace, selector, by = "label") => {
    const id = `${namespace}\n${by}\n${selector}`;
    let follower = followers.get(id);
    if (!follower) {
      follower = follow(
        namespace,
        by === "label" ? { labelSelector: selector } : {
          fieldSelector: selector,
        },
      );
      followers.set(id, follower);
      follower.catch(() => followers.delete(id));
    }
    return follower;
  };

  function follow(
    namespace: string,
    selectors: { labelSelector?: string; fieldSelector?: string },
  ): Promise<PodFollower> {
    const selector = selectors.labelSelector ?? selectors.fieldSelector;
    return new Promise((resolve, reject) => {
      const pods = new Map<string, V1Pod>();
      let current = false;
      let first = true;
      // Stops this follower alone if its first sync fails, and with relay otherwise.
      const stop = new AbortController();
      // Stopped before the first sync: nobody waits for this follower any more.
      stop.signal.addEventListener("abort", () => {
        if (first) {
          first = false;
          resolve({ pods: () => undefined });
        }
      }, { once: true });
      const onStop = () => stop.abort();
      options.signal.addEventListener("abort", onStop, { once: true });
      if (options.signal.aborted) stop.abort();
      const key = (pod: V1Pod) => pod.metadata?.uid ?? pod.metadata?.name ?? "";
      void runListWatch<V1Pod>({
        watch,
        path: `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods`,
        ...selectors,
        list: () => options.core.listNamespacedPod({ namespace, ...selectors }),
        onReplace: (items) => {
          pods.clear();
          for (const pod of items) pods.set(key(pod), pod);
        },
        onEvent: (type, pod) => {
          if (type === "DELETED") pods.delete(key(pod));
          else pods.set(key(pod), pod);
        },
        onWatching: () => {
          current = true;
          if (first) {
            first = false;
            resolve({ pods: () => current ? [...pods.values()] : undefined });
          }
        },
        onError: (error, during) => {
          current = false;
          const failure = apiError(error, { verb: during, resource: "pods", namespace });
          if (first) {
            first = false;
            stop.abort();
            reject(failure);
          } else {
            options.onError?.(`following pods ${selector}: ${failure.message}`);
          }
        },
        signal: stop.signal,
      }).finally(() => options.signal.removeEventListener("abort", onStop));
    });
  }
}
