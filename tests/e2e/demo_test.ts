/** The README's first set-up command does what it says. */
import { match as assertMatch, strictEqual as assertEquals } from "node:assert/strict";
import { ensureCluster, kubectl, REPO_DIR, runCommand } from "./harness.ts";

Deno.test({
  name:
    "story: `deno task demo` reaches redis inside the cluster as redis.example through `relay host/redis.example 6379`",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    try {
      const demo = await runCommand([
        Deno.execPath(),
        "run",
        "--allow-all",
        "--unstable-net",
        `${REPO_DIR}/scripts/demo.ts`,
      ]);
      assertEquals(demo.code, 0, demo.stdout + demo.stderr);
      assertMatch(demo.stdout, /Forwarding from 127\.0\.0\.1:6379 -> host\/redis\.example:6379/);
      assertMatch(demo.stdout, /\nhello through relay\n/);
    } finally {
      await kubectl(["delete", "deployment/redis", "service/redis", "-n", "default"]).catch(
        () => {},
      );
    }
  },
});
