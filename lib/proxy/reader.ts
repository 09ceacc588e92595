/**
 * The first bytes of a proxy client's connection, read until a handshake parser is satisfied;
 * whatever the client sent beyond the handshake is kept for the destination.
 */

/** A handshake ended in a refusal, already replied in its protocol; the message says why. */
export class ProxyRefusal extends Error {
  override name = "ProxyRefusal";
}

/** A handshake grew past what any valid one needs. */
export class HandshakeTooLarge extends Error {
  override name = "HandshakeTooLarge";
}

/** Reads `conn` into one growing buffer, for parsers that say how much they consumed. */
export class HandshakeReader {
  #buffer = new Uint8Array(0);
  readonly #chunk = new Uint8Array(16 * 1024);

  constructor(private readonly conn: Deno.Conn, private readonly limit = 64 * 1024) {}

  /** The bytes read and not yet consumed. */
  get buffered(): Uint8Array {
    return this.#buffer;
  }

  /** Reads once more; false when the client has finished sending (EOF). */
  async more(): Promise<boolean> {
    if (this.#buffer.length >= this.limit) {
      throw new HandshakeTooLarge(`more than ${this.limit} bytes without a complete request`);
    }
    const n = await this.conn.read(this.#chunk);
    if (n === null) return false;
    const grown = new Uint8Array(this.#buffer.length + n);
    grown.set(this.#buffer);
    grown.set(this.#chunk.subarray(0, n), this.#buffer.length);
    this.#buffer = grown;
    return true;
  }

  /**
   * Reads until `parse` returns a value (it returns undefined while the bytes are not yet a
   * whole message) and consumes `length` bytes of it; null when the client stopped before.
   */
  async next<T extends { length: number }>(
    parse: (bytes: Uint8Array) => T | undefined,
  ): Promise<T | null> {
    for (;;) {
      const parsed = parse(this.#buffer);
      if (parsed !== undefined) {
        this.#buffer = this.#buffer.subarray(parsed.length);
        return parsed;
      }
      if (!(await this.more())) return null;
    }
  }

  /** What is left unparsed, handed on; the reader is empty afterwards. */
  rest(): Uint8Array {
    const rest = this.#buffer;
    this.#buffer = new Uint8Array(0);
    return rest;
  }
}
