/**
 * Duplex adapters: an in-memory pair (tests, local plumbing) and a Deno TCP/Unix connection
 * that keeps TCP half-close intact.
 */
import type { ByteChannel, Duplex } from "./types.ts";
import { readableOf, writableOf } from "./pump.ts";

/** Buffers made by withHeadroom whose spare front bytes no one has claimed yet. */
const spareFront = new WeakSet<ArrayBufferLike>();

/**
 * A `size`-byte chunk with `headroom` spare bytes in front that claimHeadroom may use: in
 * `reuse` when that buffer is large enough, else in a fresh one.
 */
export function withHeadroom(size: number, headroom: number, reuse?: ArrayBuffer): Uint8Array {
  const buffer = reuse !== undefined && reuse.byteLength >= headroom + size
    ? reuse
    : new ArrayBuffer(headroom + size);
  if (headroom > 0) spareFront.add(buffer);
  return new Uint8Array(buffer, headroom, size);
}

/**
 * `chunk` widened by its `headroom` spare front bytes, if withHeadroom made it and they are
 * unclaimed (else null): only then may they be overwritten without touching anyone's data.
 */
export function claimHeadroom(chunk: Uint8Array, headroom: number): Uint8Array | null {
  if (chunk.byteOffset !== headroom || !spareFront.has(chunk.buffer)) return null;
  spareFront.delete(chunk.buffer);
  return new Uint8Array(chunk.buffer, 0, headroom + chunk.length);
}

/**
 * Resources closed through closeQuietly. A connection is closed by whichever of its owners
 * finishes last (the duplex adapter, the splice, the listener), and closing one again throws
 * a BadResource error whose construction (stack trace included) was ~3% of relay's CPU when
 * opening many short connections.
 */
const closedResources = new WeakSet<object>();

/** Writes all of `chunk`: one write may take only part of it. */
export async function writeAll(conn: Deno.Conn, chunk: Uint8Array): Promise<void> {
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

/** Two connected duplexes: bytes written to one's writable come out of the other's readable. */
export function duplexPair(): [Duplex, Duplex] {
  const aToB = new TransformStream<Uint8Array, Uint8Array>();
  const bToA = new TransformStream<Uint8Array, Uint8Array>();
  return [
    { readable: bToA.readable, writable: aToB.writable },
    { readable: aToB.readable, writable: bToA.writable },
  ];
}

/**
 * Large read buffers that are free again (see releaseChunk), shared by every connection: a
 * few are enough to keep a bulk transfer from allocating one per read, and a fixed few keep
 * 1,000 busy connections from each holding a spare.
 */
const spareReadBuffers: ArrayBuffer[] = [];
const SPARE_READ_BUFFERS = 32;

/**
 * Chunks read into a large buffer and not yet released, by the chunk itself: a view that
 * merely shares the buffer (a frame payload cut out of a tunnel read) must never free a
 * buffer other views still read from.
 */
const lentReadChunks = new WeakSet<Uint8Array>();

/** Views sharing one lent read chunk, and how many of them are still held (see shareChunk). */
interface Lease {
  chunk: Uint8Array;
  held: number;
}
const viewLeases = new WeakMap<Uint8Array, Lease>();

/**
 * Says that nothing holds `chunk`'s bytes any more (its consumer has copied them out or
 * written them), so a later read may reuse its buffer; chunks connDuplex did not lend out, and
 * views shareChunk did not register, are ignored. Reusing read buffers keeps a bulk transfer
 * from allocating one per read: at ~500 MB/s those became garbage faster than V8 collected
 * it, and the agent's RSS on one bulk connection grew to ~330 MB for ~50 MB of live data.
 */
export function releaseChunk(chunk: Uint8Array): void {
  if (lentReadChunks.delete(chunk)) return spareReadBuffer(chunk.buffer as ArrayBuffer);
  const lease = viewLeases.get(chunk);
  if (lease === undefined) return;
  viewLeases.delete(chunk);
  if (--lease.held === 0) releaseChunk(lease.chunk);
}

/** Keeps a free large read buffer for a later read, while the pool has room. */
function spareReadBuffer(buffer: ArrayBuffer): void {
  if (spareReadBuffers.length < SPARE_READ_BUFFERS) spareReadBuffers.push(buffer);
}

/**
 * Hands a lent read chunk over to the views `collect` names, the only views of it anyone
 * keeps (frame payloads cut out of a tunnel read): once each of them has been released, so is
 * the chunk. With no views it is released now. `collect` runs only for a lent chunk, so a
 * transport whose reads are not connDuplex's pays nothing. A view never released (copied out,
 * dropped) keeps the chunk from ever being reused, which is safe; releasing it while another
 * view is held is what this prevents.
 */
export function shareChunk(chunk: Uint8Array, collect: () => Uint8Array[]): void {
  if (!lentReadChunks.has(chunk)) return;
  const views = collect();
  if (views.length === 0) return releaseChunk(chunk);
  const lease = { chunk, held: views.length };
  for (const view of views) viewLeases.set(view, lease);
}

/**
 * Read buffer sizes. Every open connection holds one buffer in its pending read, so an idle
 * one gets a small buffer (1,000 idle connections: 4 MiB instead of 64 MiB); a read that
 * fills it switches to the large one, which bulk transfers need (frames of up to 64 KiB).
 */
const SMALL_READ = 4 * 1024;
const LARGE_READ = 64 * 1024;

/**
 * A connection as a ByteChannel whose closeWrite() sends a FIN instead of closing the socket,
 * and whose EOF leaves the write side open: closing the whole resource at either end would
 * cut the other direction of a half-closed TCP connection. The socket is closed once both
 * directions are done, or at once on abort or a failed read.
 */
export class ConnChannel implements ByteChannel {
  private readDone = false;
  private writeDone = false;
  private closed = false;
  private readSize = SMALL_READ;

  constructor(private readonly conn: Deno.Conn) {}

  async read(): Promise<Uint8Array | null> {
    const large = this.readSize === LARGE_READ;
    const reuse = large ? spareReadBuffers.pop() : undefined;
    const buf = reuse ? new Uint8Array(reuse) : new Uint8Array(this.readSize);
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
      if (large) spareReadBuffer(buf.buffer);
      return copy;
    }
    const chunk = buf.subarray(0, n);
    if (large) lentReadChunks.add(chunk);
    return chunk;
  }

  /** Once written, the bytes are the kernel's: the chunk's buffer may take another read. */
  async write(chunk: Uint8Array): Promise<void> {
    await writeAll(this.conn, chunk);
    releaseChunk(chunk);
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
 * Streams (a tunnel's transport). A splice uses its `channel` directly, so the streams are
 * made only when first asked for: an agent's dialed connection never asks.
 */
export function connDuplex(conn: Deno.Conn): Duplex {
  return new ConnDuplex(new ConnChannel(conn));
}

class ConnDuplex implements Duplex {
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;
  /** writeAll has handed every byte to the kernel by the time a write resolves. */
  readonly chunkFreeAfterWrite = true;

  constructor(readonly channel: ConnChannel) {}

  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= readableOf(this.channel);
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= writableOf(this.channel);
  }
}
