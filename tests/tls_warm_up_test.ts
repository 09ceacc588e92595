/** lib/kube/tls_warm_up.ts: the worker that builds Deno's TLS set-up while relay loads. */
import { assertEquals } from "./assert.ts";
import { warmUpTls } from "../lib/kube/tls_warm_up.ts";

Deno.test("warmUpTls: its worker starts a TLS connection to itself and says it ran", async () => {
  assertEquals(await warmUpTls(), true);
});

Deno.test("warmUpTls: a worker that cannot load says so, without an error reaching relay", async () => {
  assertEquals(await warmUpTls(new URL("./no_such_worker.ts", import.meta.url)), false);
});

Deno.test("warmUpTls: a worker whose TLS connection fails says it did not run", async () => {
  const worker = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    // The same reply a failed connection gives, from a worker that does nothing else.
    await Deno.writeTextFile(worker, 'self.postMessage("failed");\n');
    assertEquals(await warmUpTls(new URL(`file://${worker}`)), false);
  } finally {
    await Deno.remove(worker);
  }
});
