/**
 * Waiting for pods to reach a state, from a list+watch (a watch tells the moment they do,
 * where a poll would learn it up to an interval late), with a deadline and an abort signal.
 */
import type { V1Pod } from "@kubernetes/client-node";
import type { CoreApi } from "./resources.ts";
import type { Watcher } from "./api.ts";
import { apiError } from "./errors.ts";
import { runListWatch } from "./list_watch.ts";

/** The calls a wait makes. */
export interface PodWaitApi {
  core: Pick<CoreApi, "listNamespacedPod">;
  watch: Watcher;
}

/** What to wait for, and for how long. */
export interface PodWaitOptions<T> {
  namespace: string;
  /** Which pods: by label, or (a single pod) by `metadata.name=NAME`. */
  labelSelector?: string;
  fieldSelector?: string;
  timeoutMs: number;
  /** Aborting ends the wait, rejecting with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Looks at the pods as last seen, after every change: a value ends the wait with it, an
   * Error fails it, undefined waits on.
   */
  check(pods: V1Pod[]): T | Error | undefined;
  /** The error to fail with at the deadline, given the pods as last seen. */
  timedOut(pods: V1Pod[]): Promise<Error> | Error;
}

/** Resolves with the first value `check` gives; rejects with its error, at the deadline, or on abort. */
export function waitForPods<T>(api: PodWaitApi, opts: PodWaitOptions<T>): Promise<T> {
  const watching = new AbortController();
  const pods = new Map<string, V1Pod>();
  let settled = false;
  return new Promise<T>((resolve, reject) => {
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      opts.signal?.removeEventListener("abort", onAbort);
      watching.abort();
      outcome();
    };
    const onAbort = () => settle(() => reject(opts.signal!.reason));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const check = () => {
      const verdict = opts.check([...pods.values()]);
      if (verdict instanceof Error) settle(() => reject(verdict));
      else if (verdict !== undefined) settle(() => resolve(verdict));
    };
    const deadline = setTimeout(async () => {
      let error: unknown;
      try {
        error = await opts.timedOut([...pods.values()]);
      } catch (failure) {
        error = failure;
      }
      settle(() => reject(error));
    }, opts.timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    const { namespace, labelSelector, fieldSelector } = opts;
    void runListWatch<V1Pod>({
      watch: api.watch,
      path: `/api/v1/namespaces/${namespace}/pods`,
      labelSelector,
      fieldSelector,
      list: () => api.core.listNamespacedPod({ namespace, labelSelector, fieldSelector }),
      onReplace: (items) => {
        pods.clear();
        for (const pod of items) pods.set(pod.metadata?.name ?? "", pod);
        check();
      },
      onEvent: (type, pod) => {
        if (type === "DELETED") pods.delete(pod.metadata?.name ?? "");
        else pods.set(pod.metadata?.name ?? "", pod);
        check();
      },
      // A list that fails (no permission, no namespace) will not pass on a retry; a watch
      // that fails is listed again by the loop.
      onError: (error, during) => {
        if (during !== "list") return;
        settle(() => reject(apiError(error, { verb: "list", resource: "pods", namespace })));
      },
      signal: watching.signal,
    });
  });
}
