/** lib/kube/tls_warm_up.ts: the worker that builds Deno's TLS set-up while relay loads. */
import { assertEquals } from "./assert.ts";
import { warmUpTls } from "../lib/kube/tls_warm_up.ts";

Deno.test("warmUpTls: its worker starts a TLS connection to itself and says it ran", async () => {
  assertEquals(await warmUpTls(), true);
});

/** warmUpTls's answer for a worker whose whole module is `source`. */
async function warmUpWith(source: string): Promise<boolean> {
  const worker = await Deno.makeTempFile({ suffix: ".js" });
  try {
    await Deno.writeTextFile(worker, source);
    return await warmUpTls(new URL(`file://${worker}`));
  } finally {
    await Deno.remove(worker);
  }
}

Deno.test("warmUpTls: a worker that throws says so and relay goes on (Deno still prints the error line)", async () => {
  assertEquals(await warmUpWith('throw new Error("a broken worker");\n'), false);
});

Deno.test("warmUpTls: a worker whose TLS connection fails says it did not run", async () => {
  // The same reply a failed connection gives, from a worker that does nothing else.
  assertEquals(await warmUpWith('self.postMessage("failed");\n'), false);
});
