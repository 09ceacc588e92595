import { assertEquals } from "./assert.ts";
import { ignoredCount } from "../scripts/test_summary.ts";

Deno.test("test runner: ignored tests and ignored steps both fail the run", () => {
  assertEquals(ignoredCount("ok | 269 passed (106 steps) | 0 failed (9m19s)"), 0);
  assertEquals(ignoredCount("ok | 3 passed | 0 failed | 2 ignored (10s)"), 2);
  assertEquals(ignoredCount("ok | 3 passed (4 steps) | 0 failed | 0 ignored (1 step) (1s)"), 1);
  assertEquals(ignoredCount("ok | 3 passed | 0 failed | 1 ignored (2 steps) (1s)"), 3);
});
