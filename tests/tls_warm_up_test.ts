/** lib/kube/tls_warm_up.ts: the worker that builds Deno's TLS set-up while relay loads. */
import { assertEquals } from "./assert.ts";
import { warmUpTls } from "../lib/kube/tls_warm_up.ts";

Deno.test("warmUpTls: its worker starts a TLS connection to itself and says it ran", async () => {
  assertEquals(await warmUpTls(), true);
});

Deno.test("warmUpTls: a worker that throws says so and relay goes on (Deno still prints the error line)", async () => {
  const worker = await Deno.makeTempFile({ suffix: ".js" });
  try {
    await Deno.writeTextFile(worker, 'throw new Error("a broken worker");\n');
    assertEquals(await warmUpTls(new URL(`file://${worker}`)), false);
  } finally {
    await Deno.remove(worker);
  }
});

Deno.test("warmUpTls: a worker whose TLS connection fails says it did not run", async () => {
  const worker = await Deno.makeTempFile({ suffix: ".js" });
  try {
    // The same reply a failed connection gives, from a worker that does nothing else.
    await Deno.writeTextFile(worker, 'self.postMessage("failed");\n');
    assertEquals(await warmUpTls(new URL(`file://${worker}`)), false);
  } finally {
    await Deno.remove(worker);
  }
});
