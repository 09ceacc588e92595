/**
 * UDP streams on a tunnel: credit bounds what one session has in flight, a session out of
 * credit waits alone (its source sheds the excess), and the kernel's drop counter is read.
 */
import { assert, assertEquals, plateau } from "./assert.ts";
import { acceptTunnel, connectTunnel, type OpenHandler, type Tunnel } from "../lib/tunnel/mod.ts";
import { tokenDigest, UDP_SHARED_WINDOW, UDP_WINDOW } from "../lib/contract.ts";
import { duplexPair, kernelDrops, kernelDropsSoon } from "../lib/net/mod.ts";

const TOKEN = "t0ken";
const TOKEN_DIGEST = await tokenDigest(TOKEN);

async function tunnelPair(
  onOpen: OpenHandler,
): Promise<{ client: Tunnel; close(): Promise<void> }> {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: TOKEN }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, onOpen }),
  ]);
  return {
    client,
    close: async () => {
      client.close();
      agent.close();
      await Promise.all([client.closed, agent.closed]);
    },
  };
}

Deno.test("udp stream: a session whose far end stops reading holds only its credit in flight, and another session keeps flowing", async () => {
  let stalledTook = 0;
  const handler: OpenHandler = (request) => {
    if (request.port === 1) {
      // A destination that takes the first datagrams, then never reads again.
      const stalled = new WritableStream<Uint8Array>({
        write: (d) => {
          stalledTook += d.length;
          return stalledTook >= UDP_WINDOW ? new Promise(() => {}) : undefined;
        },
      }, { highWaterMark: 1 });
      return Promise.resolve({ readable: new ReadableStream(), writable: stalled });
    }
    return Promise.resolve(new TransformStream<Uint8Array, Uint8Array>());
  };
  const { client, close } = await tunnelPair(handler);
  const flooded = await client.open({ protocol: "udp", host: "10.0.0.1", port: 1 });
  const other = await client.open({ protocol: "udp", host: "10.0.0.1", port: 2 });

  // The flooded session's writes stop completing once its credit is spent: its source (the
  // listener's per-session queue) is where the excess is then dropped.
  const writer = flooded.writable.getWriter();
  let written = 0;
  const writing = (async () => {
    for (let i = 0; i < 1_000; i++) {
      await writer.write(new Uint8Array(1_000));
      written++;
    }
  })();
  await plateau("the flooded session's writes", () => written);
  assert(written < 1_000, "a session without credit kept sending");
  assert(written * 1_000 <= 2 * UDP_WINDOW, `${written} KB in flight, more than its credit`);

  // Meanwhile the other session echoes datagrams of every size, whole.
  const otherWriter = other.writable.getWriter();
  const reader = other.readable.getReader();
  for (const size of [1, 1_400, 65_507]) {
    const datagram = new Uint8Array(size).fill(size & 0xff);
    await otherWriter.write(datagram);
    const { value } = await reader.read();
    assertEquals(value?.length, size);
    assertEquals(value, datagram);
  }
  flooded.reset("done");
  await writing.catch(() => {});
  await close();
});

Deno.test("udp stream: alone on its tunnel a session may have UDP_WINDOW in flight, beside another only UDP_SHARED_WINDOW", async () => {
  // Every destination takes nothing: what the sender gets out is exactly what is in flight.
  const handler: OpenHandler = () =>
    Promise.resolve({
      readable: new ReadableStream(),
      writable: new WritableStream({ write: () => new Promise(() => {}) }),
    });
  const { client, close } = await tunnelPair(handler);
  /** Bytes of 1,000-byte datagrams a stream sends before its writes stop completing. */
  const inFlight = async (stream: { writable: WritableStream<Uint8Array> }) => {
    const writer = stream.writable.getWriter();
    let written = 0;
    void (async () => {
      for (let i = 0; i < 200; i++) {
        await writer.write(new Uint8Array(1_000));
        written += 1_000;
      }
    })().catch(() => {});
    return await plateau("datagrams in flight", () => written);
  };
  const lone = await client.open({ protocol: "udp", host: "10.0.0.1", port: 1 });
  const loneBytes = await inFlight(lone);
  // One datagram past the cap goes while any credit is left; the pipe to the destination
  // holds two more (the one it writes, and its queue of one).
  assert(loneBytes >= UDP_WINDOW, `alone, only ${loneBytes} bytes in flight`);
  assert(loneBytes <= UDP_WINDOW + 3_000, `alone, ${loneBytes} bytes in flight`);
  lone.reset("done");

  const first = await client.open({ protocol: "udp", host: "10.0.0.1", port: 2 });
  const second = await client.open({ protocol: "udp", host: "10.0.0.1", port: 3 });
  const sharedBytes = await inFlight(first);
  assert(sharedBytes >= UDP_SHARED_WINDOW, `shared, only ${sharedBytes} bytes in flight`);
  assert(sharedBytes <= UDP_SHARED_WINDOW + 3_000, `shared, ${sharedBytes} bytes in flight`);
  first.reset("done");
  second.reset("done");
  await close();
});

Deno.test("udp drops: the kernel's count of datagrams a full socket buffer discarded is read", async () => {
  const sink = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const source = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
  const port = (sink.addr as Deno.NetAddr).port;
  try {
    assertEquals(kernelDrops(port, false, "127.0.0.1"), 0);
    // Nobody reads the sink: far more than its receive buffer holds is discarded, and counted.
    const datagram = new Uint8Array(8_000);
    for (let i = 0; i < 2_000; i++) {
      await source.send(datagram, { transport: "udp", hostname: "127.0.0.1", port });
    }
    const dropped = kernelDrops(port, false, "127.0.0.1");
    assert(dropped !== undefined && dropped > 0, `kernel drops: ${dropped}`);
    assertEquals(kernelDrops(port, false, "127.0.0.2"), undefined);
    // Off the event loop, as the agent reads it when a session ends; reads at once share one.
    const [soon, alsoSoon] = await Promise.all([
      kernelDropsSoon(port, false, "127.0.0.1"),
      kernelDropsSoon((source.addr as Deno.NetAddr).port, false),
    ]);
    assertEquals([soon, alsoSoon], [dropped, 0]);
  } finally {
    sink.close();
    source.close();
  }
});

Deno.test("udp stream: a datagram cut across transport reads arrives whole, and only whole", async () => {
  // A transport that hands bytes on in 1,000-byte reads, as a port-forward's ~32 KiB reads
  // cut 64 KiB frames.
  const chop = (readable: ReadableStream<Uint8Array>) =>
    readable.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          for (let at = 0; at < chunk.length; at += 1000) {
            controller.enqueue(chunk.slice(at, at + 1000));
          }
        },
      }),
    );
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel({ readable: chop(a.readable), writable: a.writable }, { token: TOKEN }),
    acceptTunnel({ readable: chop(b.readable), writable: b.writable }, {
      tokenDigest: TOKEN_DIGEST,
      onOpen: () => Promise.resolve(new TransformStream<Uint8Array, Uint8Array>()),
    }),
  ]);
  const stream = await client.open({ protocol: "udp", host: "10.0.0.53", port: 53 });
  const sizes = [1, 999, 1000, 1001, 9000, 60_000];
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  for (const size of sizes) {
    const datagram = new Uint8Array(size).map((_, i) => (i * 7 + size) % 256);
    await writer.write(datagram);
    const { value } = await reader.read();
    assertEquals(value, datagram, `a ${size}-byte datagram`);
  }
  client.close();
  agent.close();
  await Promise.all([client.closed, agent.closed]);
});
