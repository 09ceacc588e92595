/**
 * lib/kube/tls_warm_up.ts's worker: one TLS connection to itself, never completed, which makes
 * Deno build its TLS client set-up. No imports: it must start fast.
 */
let ran = false;
try {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  // The set-up happens in this call; the handshake itself would wait for a read or write.
  const tls = await Deno.startTls(conn, { hostname: "localhost" });
  tls.close();
  ran = true;
} catch {
  // The warm-up only saves time: relay's own connections work without it.
}
// The worker's scope; the project's checked types are those of the main thread.
const scope = self as unknown as { postMessage(message: string): void };
scope.postMessage(ran ? "done" : "failed");
