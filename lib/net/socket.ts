/**
 * A Deno TCP/Unix connection as a ByteChannel and a Duplex that keep TCP half-close intact,
 * and the small socket chores around it.
 */
import type { BufferPool } from "./buffer_pool.ts";
import { duplexOf } from "./channel.ts";
import type { ByteChannel, Duplex } from "./types.ts";

/**
 * Resources closed through closeQuietly. A connection is closed by whichever of its owners
 * finishes last, and closing one again throws a BadResource error whose construction (stack
 * trace included) is costly when many short connections end.
 */
const closedResources = new WeakSet<object>();

/** Writes all of `chunk`: one write may take only part of it. */
export async function writeAll(
  conn: { write(bytes: Uint8Array): Promise<number> },
  chunk: Uint8Array,
): Promise<void> {
  for (let at = 0; at < chunk.length;) at += await conn.write(chunk.subarray(at));
}

/** Closes a socket or listener that may already be closed; never throws. */
export function closeQuietly(closer: { close(): void }): void {
  if (closedResources.has(closer)) return;
  closedResources.add(closer);
  try {
    closer.close();
  } catch {
    // Closed some other way already: the goal is reached.
  }
}

/**
 * Read buffer sizes. Every open connection holds one buffer in its pending read, so an idle
 * one gets a small buffer; a read that fills it switches to the large one (the pool's, when
 * the channel has a pool), which bulk transfers need.
 */
const SMALL_READ = 4 * 1024;
const LARGE_READ = 64 * 1024;

/**
 * A connection as a ByteChannel whose closeWrite() sends a FIN instead of closing the socket,
 * and whose EOF leaves the write side open: closing the whole resource at either end would
 * cut the other direction of a half-closed TCP connection. The socket is closed once both
 * directions are done, or at once on abort or a failed read. With a pool, large reads are
 * lent out of it, and a chunk written here is released to it.
 */
export class ConnChannel implements ByteChannel {
  private readDone = false;
  private writeDone = false;
  private closed = false;
  private readSize = SMALL_READ;
  /** The pool large reads are lent from: the owner's, when its buffers are read-sized. */
  private readonly lender?: BufferPool;

  constructor(private readonly conn: Deno.Conn, private readonly pool?: BufferPool) {
    if (pool?.size === LARGE_READ) this.lender = pool;
  }

  async read(): Promise<Uint8Array | null> {
    const pooled = this.readSize === LARGE_READ && this.lender !== undefined;
    const buf = pooled ? this.lender!.take() : new Uint8Array(this.readSize);
    let n: number | null;
    try {
      n = await this.conn.read(buf);
    } catch (e) {
      this.readDone = true;
      this.close();
      throw e;
    }
    if (n === null) {
      this.readDone = true;
      this.finishOne();
      return null;
    }
    // A full read means more is waiting: read big. One that would have fit the small
    // buffer means the burst is over: back to small.
    if (n === buf.length) this.readSize = LARGE_READ;
    else if (n <= SMALL_READ) this.readSize = SMALL_READ;
    // Copy a short read out, so a few bytes do not pin a large buffer while they wait; the
    // buffer itself is then free at once.
    if (n * 4 < buf.length) {
      const copy = buf.slice(0, n);
      if (pooled) this.lender!.giveBack(buf.buffer);
      return copy;
    }
    const chunk = buf.subarray(0, n);
    return pooled ? this.lender!.lend(chunk) : chunk;
  }

  /** Once written, the bytes are the kernel's: the chunk's buffer may take another read. */
  async write(chunk: Uint8Array): Promise<void> {
    await writeAll(this.conn, chunk);
    this.pool?.release(chunk);
  }

  async closeWrite(): Promise<void> {
    this.writeDone = true;
    try {
      if ("closeWrite" in this.conn) await (this.conn as Deno.TcpConn).closeWrite();
    } catch {
      // the peer may already be gone; the socket closes below if reading is done too
    }
    this.finishOne();
  }

  abort(): void {
    this.readDone = this.writeDone = true;
    this.close();
  }

  private finishOne(): void {
    if (this.readDone && this.writeDone) this.close();
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(this.conn);
  }
}

/**
 * A connection as a Duplex with half-close (see ConnChannel), for what reads it as Web
 * Streams; a splice uses its `channel`, so the streams are made only when first asked for.
 */
export function connDuplex(conn: Deno.Conn, pool?: BufferPool): Duplex {
  // writeAll has handed every byte to the kernel by the time a write resolves.
  return duplexOf(new ConnChannel(conn, pool), { chunkFreeAfterWrite: true });
}
