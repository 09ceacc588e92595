/**
 * Reuse of large read buffers: made fresh for each read, they became garbage faster than V8
 * collected it (docs/MEASUREMENTS.md). A pool is an object its owner passes down (one per
 * agent, one per client run): who reads into it lends, who is done with the bytes releases.
 */

/** How long spare buffers beyond `keep` may go unused before they are dropped. */
const TRIM_AFTER_MS = 2_000;

/** Views sharing one lent chunk, and how many of them are still held (see share). */
interface Lease {
  chunk: Uint8Array;
  held: number;
}

/** Large buffers that are free again, and the chunks lent out of them. */
export class BufferPool {
  readonly #spare: ArrayBuffer[] = [];
  /** Chunks read into a pool buffer and not yet released, by the chunk itself. */
  readonly #lent = new WeakSet<Uint8Array>();
  readonly #leases = new WeakMap<Uint8Array, Lease>();

  /** The fewest spares there were since the last trim: that many went unused meanwhile. */
  #unused = 0;
  #lastTrim: number;

  /**
   * @param size bytes per buffer
   * @param keep free buffers kept however long they go unused
   * @param keepBusy most free buffers kept while they are being used again: 1,000 busy
   *   connections each read into one, and a pool that dropped all but a few made every
   *   read a fresh buffer, garbage faster than V8 collected it (docs/MEASUREMENTS.md)
   * @param now the clock trims are timed by
   */
  constructor(
    readonly size = 64 * 1024,
    readonly keep = 32,
    readonly keepBusy = 1024,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.#lastTrim = now();
  }

  /** Free buffers held now. */
  get spares(): number {
    return this.#spare.length;
  }

  /** A buffer to read into: a free one, or a new one. */
  take(): Uint8Array {
    const spare = this.#spare.pop();
    if (this.#spare.length < this.#unused) this.#unused = this.#spare.length;
    this.#trim();
    return spare ? new Uint8Array(spare) : new Uint8Array(this.size);
  }

  /** Gives back a buffer from take() that no chunk was lent out of. */
  giveBack(buffer: ArrayBufferLike): void {
    if (this.#spare.length < this.keepBusy && buffer.byteLength === this.size) {
      this.#spare.push(buffer as ArrayBuffer);
    }
    this.#trim();
  }

  /**
   * Drops the spares beyond `keep` that went unused since the last trim, at most once per
   * TRIM_AFTER_MS; a pool nobody touches keeps what it has until it is used again.
   */
  #trim(): void {
    const now = this.now();
    if (now - this.#lastTrim < TRIM_AFTER_MS) return;
    const drop = Math.min(this.#unused, this.#spare.length - this.keep);
    if (drop > 0) this.#spare.length -= drop;
    this.#lastTrim = now;
    this.#unused = this.#spare.length;
  }

  /**
   * Drops the spares beyond `keep` now, for a process gone quiet: #trim runs only when the
   * pool is used, and after a burst a quiet process may not read again for many seconds.
   */
  dropSpares(): void {
    if (this.#spare.length > this.keep) this.#spare.length = this.keep;
    this.#unused = this.#spare.length;
    this.#lastTrim = this.now();
  }

  /** Marks `chunk` (a view of a taken buffer) as lent: its buffer returns on release. */
  lend(chunk: Uint8Array): Uint8Array {
    this.#lent.add(chunk);
    return chunk;
  }

  /**
   * Says that nothing holds `chunk`'s bytes any more (copied out or written), so its buffer may
   * take another read. Chunks this pool did not lend, and views share() did not register,
   * are ignored: releasing those is always safe.
   */
  release(chunk: Uint8Array): void {
    if (this.#lent.delete(chunk)) return this.giveBack(chunk.buffer);
    const lease = this.#leases.get(chunk);
    if (lease === undefined) return;
    this.#leases.delete(chunk);
    if (--lease.held === 0) this.release(lease.chunk);
  }

  /**
   * Hands a lent chunk over to the views `collect` names, the only views of it anyone keeps
   * (frame payloads cut out of a tunnel read): once each is released, so is the chunk. With
   * no views it is released now. `collect` runs only for a lent chunk. A view never released
   * keeps the buffer from reuse, which is safe; releasing it while another view is held is
   * what this prevents.
   */
  share(chunk: Uint8Array, collect: () => Uint8Array[]): void {
    if (!this.#lent.has(chunk)) return;
    const views = collect();
    if (views.length === 0) return this.release(chunk);
    const lease = { chunk, held: views.length };
    for (const view of views) this.#leases.set(view, lease);
  }
}
