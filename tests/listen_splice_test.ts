/** Splicing a TCP connection with a tunnel-like duplex: bytes, half-close, resets. */
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { TcpListener } from "../lib/listen/mod.ts";
import { ConnChannel, splice } from "../lib/net/mod.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A fake tunnel stream: what the socket sends arrives on `far.readable`, and vice versa. */
function fakePeer() {
  const toFar = new TransformStream<Uint8Array, Uint8Array>();
  const fromFar = new TransformStream<Uint8Array, Uint8Array>();
  const resets: string[] = [];
  return {
    peer: {
      readable: fromFar.readable,
      writable: toFar.writable,
      reset: (reason?: string) => void resets.push(reason ?? ""),
    },
    far: { readable: toFar.readable, writable: fromFar.writable },
    resets,
  };
}

/** A listener whose single connection is spliced with a fresh fake peer. */
async function splicedPair() {
  const listener = TcpListener.bind({ hostname: "127.0.0.1", port: 0 });
  const { peer, far, resets } = fakePeer();
  const spliced = Promise.withResolvers<void>();
  const served = listener.serve((conn) =>
    splice(new ConnChannel(conn), peer).then(() => spliced.resolve())
  );
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.port });
  return {
    client,
    far,
    resets,
    spliced: spliced.promise,
    async close() {
      client.close();
      listener.close();
      await served;
    },
  };
}

async function readAll(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(readable).arrayBuffer());
}

async function readToEof(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
  const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) out.set(chunk, (offset += chunk.length) - chunk.length);
  return out;
}

Deno.test("half-close survives: the far end answers after the socket's FIN", async () => {
  const pair = await splicedPair();
  try {
    await pair.client.write(encoder.encode("question"));
    await pair.client.closeWrite();
    // The far end sees the whole request and then its end...
    strictEqual(decoder.decode(await readAll(pair.far.readable)), "question");
    // ...and can still answer, then finish; the client reads the answer, then EOF.
    const writer = pair.far.writable.getWriter();
    await writer.write(encoder.encode("answer"));
    await writer.close();
    strictEqual(decoder.decode(await readToEof(pair.client)), "answer");
    await pair.spliced;
    deepStrictEqual(pair.resets, []);
  } finally {
    await pair.close();
  }
});

Deno.test("the far end finishing first half-closes the socket; the client can still send", async () => {
  const pair = await splicedPair();
  try {
    await pair.far.writable.close();
    strictEqual(await pair.client.read(new Uint8Array(1)), null);
    await pair.client.write(encoder.encode("late"));
    await pair.client.closeWrite();
    strictEqual(decoder.decode(await readAll(pair.far.readable)), "late");
    await pair.spliced;
  } finally {
    await pair.close();
  }
});

Deno.test("a megabyte each way arrives intact", async () => {
  const pair = await splicedPair();
  try {
    const upload = new Uint8Array(1 << 20);
    // getRandomValues fills at most 64 KiB per call.
    for (let i = 0; i < upload.length; i += 65536) {
      crypto.getRandomValues(upload.subarray(i, i + 65536));
    }
    const download = upload.slice().reverse();
    const farGot = readAll(pair.far.readable);
    const farSent = (async () => {
      const writer = pair.far.writable.getWriter();
      for (let i = 0; i < download.length; i += 50_000) {
        await writer.write(download.slice(i, i + 50_000));
      }
      await writer.close();
    })();
    const clientSent = (async () => {
      for (let i = 0; i < upload.length;) i += await pair.client.write(upload.subarray(i));
      await pair.client.closeWrite();
    })();
    const clientGot = await readToEof(pair.client);
    await Promise.all([farSent, clientSent]);
    deepStrictEqual(await farGot, upload);
    deepStrictEqual(clientGot, download);
  } finally {
    await pair.close();
  }
});

Deno.test("an error on the tunnel side closes the socket and resets the stream", async () => {
  const pair = await splicedPair();
  try {
    await pair.far.writable.abort(new Error("stream reset by agent"));
    // The client sees its connection end (EOF or reset), not a hang.
    const n = await pair.client.read(new Uint8Array(1)).catch(() => null);
    strictEqual(n, null);
    await pair.spliced;
    strictEqual(pair.resets.length, 1);
    ok(pair.resets[0].includes("stream reset by agent"), pair.resets[0]);
  } finally {
    await pair.close();
  }
});
