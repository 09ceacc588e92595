import { assert, assertEquals } from "./assert.ts";
import { BufferPool } from "../lib/net/buffer_pool.ts";

Deno.test("buffer pool: 1,000 readers' buffers come back for reuse, not as garbage", () => {
  const pool = new BufferPool(1024, 32, 1024, () => 0);
  const taken = Array.from({ length: 1000 }, () => pool.take());
  for (const buffer of taken) pool.giveBack(buffer.buffer);
  assertEquals(pool.spares, 1000);
  const again = Array.from({ length: 1000 }, () => pool.take());
  assert(again.every((b, i) => b.buffer === taken[999 - i].buffer), "a spare was not reused");
});

Deno.test("buffer pool: spares beyond `keep` that went unused for a trim interval are dropped", () => {
  let now = 0;
  const pool = new BufferPool(1024, 4, 1024, () => now);
  const taken = Array.from({ length: 100 }, () => pool.take());
  for (const buffer of taken) pool.giveBack(buffer.buffer);
  // Busy: every spare but 10 is taken again within each interval, so those 90 stay.
  for (let round = 0; round < 3; round++) {
    now += 2_000;
    const busy = Array.from({ length: 90 }, () => pool.take());
    for (const buffer of busy) pool.giveBack(buffer.buffer);
  }
  assert(pool.spares >= 90, `busy spares were dropped: ${pool.spares} left`);
  // Quiet: one interval later, what nobody took goes, down to `keep`.
  now += 2_000;
  pool.giveBack(pool.take().buffer);
  now += 2_000;
  const last = pool.take();
  assertEquals(pool.spares, 4);
  pool.giveBack(last.buffer);
  // Buffers of another size are never kept.
  pool.giveBack(new ArrayBuffer(10));
  assertEquals(pool.spares, 5);
});

Deno.test("buffer pool: a quiet process drops the spares beyond `keep` without another read", () => {
  const pool = new BufferPool(1024, 4, 1024, () => 0);
  const taken = Array.from({ length: 100 }, () => pool.take());
  for (const buffer of taken) pool.giveBack(buffer.buffer);
  assertEquals(pool.spares, 100);
  pool.dropSpares();
  assertEquals(pool.spares, 4);
  // The pool still lends and keeps what it is given.
  pool.giveBack(pool.take().buffer);
  assertEquals(pool.spares, 4);
});
