/**
 * Deno builds its TLS client set-up on the first TLS connection of the process, synchronously,
 * on the thread that makes it: without this, the main one, right before relay's first request.
 * A worker that starts one TLS connection pays for it on another thread while the main one loads
 * relay's modules; the set-up is the process's, so the first request finds it built
 * (docs/MEASUREMENTS.md, "Deno's first TLS connection").
 */

/** The worker's module; a compiled binary must embed it (scripts/release/compile.ts). */
export const TLS_WARM_UP_WORKER = new URL("./tls_warm_up_worker.ts", import.meta.url);

/**
 * Starts the warm-up and returns at once. The promise says whether it ran; it never rejects,
 * as relay works the same without it, only later.
 */
export function warmUpTls(worker: URL = TLS_WARM_UP_WORKER): Promise<boolean> {
  return new Promise((resolve) => {
    let thread: Worker;
    try {
      thread = new Worker(worker, { type: "module" });
    } catch {
      return resolve(false);
    }
    const end = (ran: boolean) => {
      thread.terminate();
      resolve(ran);
    };
    thread.onmessage = (event: MessageEvent) => end(event.data === "done");
    // Unhandled, a worker's error would end relay.
    thread.onerror = (event) => {
      event.preventDefault();
      end(false);
    };
  });
}
