/**
 * A list+watch loop over one Kubernetes collection, robust under Deno: list, hand over the
 * whole set, watch from its resourceVersion, and on any end of the watch (error, timeout,
 * 410 Gone) list again, with backoff after failures, until an AbortSignal stops it.
 * Re-listing every time cannot miss a delete and is cheap for one selector's pods.
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import type { Watcher } from "./api.ts";

/** The part of a Kubernetes list response the loop needs. */
export interface ObjectList<T> {
  items: T[];
  metadata?: { resourceVersion?: string };
}

/** Options for {@link runListWatch}. */
export interface ListWatchOptions<T extends KubernetesObject> {
  /** Watch client bound to a kubeconfig from lib/kube/config.ts (HTTP/1.1 under Deno). */
  watch: Watcher;
  /** API path of the collection, e.g. `/api/v1/namespaces/N/pods`. */
  path: string;
  /** Applied to the watch; the list function applies its own. */
  fieldSelector?: string;
  /** Applied to the watch; the list function applies its own. */
  labelSelector?: string;
  /** Lists the collection. */
  list: () => Promise<ObjectList<T>>;
  /** Receives the complete set after each list. */
  onReplace: (items: T[]) => void;
  /** Receives each watch event after the list. */
  onEvent: (type: "ADDED" | "MODIFIED" | "DELETED", object: T) => void;
  /** Called each time a watch is open after a list: from here on the set is current. */
  onWatching?: () => void;
  /** Receives list and watch failures (the loop retries by itself). */
  onError: (error: unknown, during: "list" | "watch") => void;
  /** Stops the loop, and any watch it has open. */
  signal: AbortSignal;
}

const MIN_RETRY_MS = 250;
const MAX_RETRY_MS = 4000;
/**
 * How long the loop keeps one watch before it lists and watches again. It ends each watch
 * itself, before the server's end (WATCH_SECONDS):
 * under Deno, a watch the server ended may never call `done`, and waiting for it left the set
 * blind to changes (docs/MEASUREMENTS.md).
 */
const WATCH_DEADLINE_MS = 15_000;
/** The server ends a watch after this long even if the loop somehow did not. */
const WATCH_SECONDS = 25;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** Watches from `resourceVersion` until the watch ends; resolves with its error, if any. */
function watchOnce<T extends KubernetesObject>(
  options: ListWatchOptions<T>,
  resourceVersion: string | undefined,
): Promise<unknown> {
  const { watch, path, fieldSelector, labelSelector, onEvent, onWatching, signal } = options;
  return new Promise((resolve) => {
    let controller: AbortController | undefined;
    let finished = false;
    const finish = (error: unknown) => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      signal.removeEventListener("abort", onAbort);
      controller?.abort();
      resolve(error);
    };
    // Stopping must not wait for `done`, which an aborted watch may never call under Deno.
    const onAbort = () => finish(undefined);
    signal.addEventListener("abort", onAbort, { once: true });
    const deadline = setTimeout(() => finish(undefined), WATCH_DEADLINE_MS);
    const params: Record<string, string> = { timeoutSeconds: String(WATCH_SECONDS) };
    if (resourceVersion) params.resourceVersion = resourceVersion;
    if (fieldSelector) params.fieldSelector = fieldSelector;
    if (labelSelector) params.labelSelector = labelSelector;
    watch.watch(path, params, (type: string, object: unknown) => {
      if (finished) return;
      if (type === "ADDED" || type === "MODIFIED" || type === "DELETED") onEvent(type, object as T);
      // An ERROR event (typically 410 Gone) ends this watch; the loop lists again.
      else if (type === "ERROR") finish(undefined);
    }, (error: unknown) => finish(error)).then((started) => {
      controller = started;
      if (finished) started.abort();
      else onWatching?.();
    }, (error) => finish(error));
    if (signal.aborted) finish(undefined);
  });
}

/** Runs list+watch until `signal` aborts; never rejects (failures go to `onError`). */
export async function runListWatch<T extends KubernetesObject>(
  options: ListWatchOptions<T>,
): Promise<void> {
  const { list, onReplace, onError, signal } = options;
  let retryMs = 0;
  while (!signal.aborted) {
    let failure: unknown;
    let during: "list" | "watch" = "list";
    try {
      const listed = await list();
      if (signal.aborted) break;
      onReplace(listed.items);
      during = "watch";
      failure = await watchOnce(options, listed.metadata?.resourceVersion);
    } catch (error) {
      failure = error;
    }
    if (signal.aborted) break;
    // A watch that ends for lack of events is routine, not a failure worth a pause.
    if (failure && (failure as { name?: string }).name !== "TimeoutError") {
      onError(failure, during);
      retryMs = Math.min(Math.max(retryMs * 2, MIN_RETRY_MS), MAX_RETRY_MS);
      await sleep(retryMs, signal);
    } else {
      retryMs = 0;
    }
  }
}
