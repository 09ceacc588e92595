/**
 * Duplex adapters: an in-memory pair (tests, local plumbing) and a Deno TCP/Unix connection
 * that keeps TCP half-close intact.
 */
import type { Duplex } from "./types.ts";

/** Two connected duplexes: bytes written to one's writable come out of the other's readable. */
export function duplexPair(): [Duplex, Duplex] {
  const aToB = new TransformStream<Uint8Array, Uint8Array>();
  const bToA = new TransformStream<Uint8Array, Uint8Array>();
  return [
    { readable: bToA.readable, writable: aToB.writable },
    { readable: aToB.readable, writable: bToA.writable },
  ];
}

/** Reads smaller than this are copied out so a large read buffer is not pinned by a few bytes. */
const COPY_BELOW = 16 * 1024;
const READ_SIZE = 64 * 1024;

/**
 * A connection as a Duplex whose writable's close() sends a FIN (closeWrite) instead of
 * closing the socket, and whose readable's end leaves the write side open: Deno's own
 * `conn.readable`/`conn.writable` close the whole resource at either end, which would cut
 * the other direction of a half-closed TCP connection. The socket is closed once both
 * directions are done, or at once on abort/cancel/error.
 */
export function connDuplex(conn: Deno.Conn): Duplex {
  let readDone = false;
  let writeDone = false;
  let closed = false;
  const closeConn = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // already closed by the other side of this adapter
    }
  };
  const finishOne = () => {
    if (readDone && writeDone) closeConn();
  };

  const readable = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const buf = new Uint8Array(READ_SIZE);
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch (e) {
        readDone = true;
        closeConn();
        throw e;
      }
      if (n === null) {
        readDone = true;
        controller.close();
        finishOne();
        return;
      }
      controller.enqueue(n < COPY_BELOW ? buf.slice(0, n) : buf.subarray(0, n));
    },
    cancel() {
      readDone = true;
      closeConn();
    },
  }, { highWaterMark: 0 });

  const writable = new WritableStream<Uint8Array>({
    async write(chunk) {
      let at = 0;
      while (at < chunk.length) at += await conn.write(chunk.subarray(at));
    },
    async close() {
      writeDone = true;
      try {
        if ("closeWrite" in conn) await (conn as Deno.TcpConn).closeWrite();
      } catch {
        // the peer may already be gone; the socket closes below if reading is done too
      }
      finishOne();
    },
    abort() {
      writeDone = true;
      closeConn();
    },
  });

  return { readable, writable };
}
