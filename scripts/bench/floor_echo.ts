/**
 * The server memory_floor.ts measures: echoes every connection on 127.0.0.1 and prints its
 * port once listening. It imports nothing, so its RSS is Deno's and the load's alone.
 *
 *   deno run --allow-net scripts/bench/floor_echo.ts reuse|copy
 *
 * `reuse` reads into one 16 KiB buffer per connection again and again; `copy` copies each read
 * into a fresh allocation of its size before writing it back, as node:tls hands relay every
 * byte it receives (at most 16 KiB, one TLS record, at a time).
 */
const READ_BYTES = 16 * 1024;

const mode = Deno.args[0];
if (mode !== "reuse" && mode !== "copy") throw new Error(`mode must be reuse or copy, not ${mode}`);

async function echo(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(READ_BYTES);
  try {
    for (let n; (n = await conn.read(buffer)) !== null;) {
      const chunk = mode === "copy" ? buffer.slice(0, n) : buffer.subarray(0, n);
      for (let done = 0; done < n;) done += await conn.write(chunk.subarray(done));
    }
  } catch {
    // a reset ends the connection like an EOF
  }
  conn.close();
}

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.log(listener.addr.port);
for await (const conn of listener) {
  conn.setNoDelay(true);
  echo(conn);
}
