import { tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, assertInstanceOf, assertRejects, plateau } from "./assert.ts";
import {
  acceptTunnel,
  connectTunnel,
  HandshakeError,
  type MuxStream,
  OpenError,
  type OpenHandler,
  StreamResetError,
  type Tunnel,
} from "../lib/tunnel/mod.ts";
import { BufferPool, connDuplex, type Duplex, duplexPair } from "../lib/net/mod.ts";

const TOKEN = "t0ken";
const TOKEN_DIGEST = await tokenDigest(TOKEN);
const MiB = 1024 * 1024;

/** A client and an agent tunnel over an in-memory pair; the agent handles opens with `onOpen`. */
async function tunnelPair(
  onOpen: OpenHandler,
  extra: {
    streamWindow?: number;
    maxStreamWindow?: number;
    maxSessionGrowth?: number;
    streamHeadStart?: number;
    udpQueue?: number;
    idleCreditMs?: number;
  } = {},
): Promise<{ client: Tunnel; agent: Tunnel; close: () => Promise<void> }> {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: TOKEN, ...extra }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, onOpen, ...extra }),
  ]);
  return {
    client,
    agent,
    close: async () => {
      client.close();
      agent.close();
      await Promise.all([client.closed, agent.closed]);
    },
  };
}

/** The far end of an echo server: what is written comes back, half-close included. */
const echo: OpenHandler = () => Promise.resolve(new TransformStream<Uint8Array, Uint8Array>());

/** A block whose length is not a power of two, so misplaced bytes show up. */
const PATTERN = crypto.getRandomValues(new Uint8Array(65521));

function patternSource(total: number, chunk = 256 * 1024): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= total) return controller.close();
      const n = Math.min(chunk, total - sent);
      const out = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const off = (sent + at) % PATTERN.length;
        const piece = PATTERN.subarray(off, off + n - at);
        out.set(piece, at);
        at += piece.length;
      }
      sent += n;
      controller.enqueue(out);
    },
  }, { highWaterMark: 0 });
}

/** Reads `readable` to its end, checking every byte against the pattern; returns the count. */
async function checkPattern(readable: ReadableStream<Uint8Array>): Promise<number> {
  let seen = 0;
  for await (const chunk of readable) {
    let at = 0;
    while (at < chunk.length) {
      const off = (seen + at) % PATTERN.length;
      const expected = PATTERN.subarray(off, off + chunk.length - at);
      const got = chunk.subarray(at, at + expected.length);
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== expected[i]) throw new Error(`byte ${seen + at + i} differs`);
      }
      at += expected.length;
    }
    seen += chunk.length;
  }
  return seen;
}

async function readAll(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of readable) parts.push(chunk);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("session: handshake reports the peer version and a ping round-trips", async () => {
  const { client, agent, close } = await tunnelPair(echo);
  assertEquals(client.peerVersion, agent.peerVersion);
  assert((await client.ping()) >= 0);
  assert((await agent.ping()) >= 0);
  await close();
});

Deno.test("session: a wrong token is refused on both ends", async () => {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.allSettled([
    connectTunnel(a, { token: "wrong" }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST }),
  ]);
  assert(client.status === "rejected" && agent.status === "rejected");
  assertEquals(assertInstanceOf(client.reason, HandshakeError).code, "token");
  assertEquals(agent.reason.code, "token");
});

Deno.test("session: a protocol version mismatch names both versions", async () => {
  const [a, b] = duplexPair();
  const [client] = await Promise.allSettled([
    connectTunnel(a, { token: TOKEN, version: "0.1.0", protocolVersion: 1 }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, version: "0.9.0", protocolVersion: 2 }),
  ]);
  assert(client.status === "rejected");
  const reason = assertInstanceOf(client.reason, HandshakeError);
  assertEquals(reason.code, "version");
  const message: string = reason.message;
  assert(message.includes("0.1.0") && message.includes("0.9.0"), message);
  assert(message.includes("protocol 1") && message.includes("protocol 2"), message);
});

Deno.test("session: a wrong token with another protocol version is refused for the token, and the peer learns no version", async () => {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.allSettled([
    connectTunnel(a, { token: "wrong", version: "0.1.0", protocolVersion: 1 }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, version: "0.9.0", protocolVersion: 2 }),
  ]);
  assert(client.status === "rejected" && agent.status === "rejected");
  const reason = assertInstanceOf(client.reason, HandshakeError);
  assertEquals(reason.code, "token");
  assertEquals(reason.peerVersion, "");
  assert(!reason.message.includes("0.9.0"), reason.message);
  assertEquals(agent.reason.code, "token");
});

Deno.test("session: an end whose stream ids are used up goes away: its streams finish, new ones are refused, then it closes", async () => {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: TOKEN, firstStreamId: 0xffff_fffd }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, onOpen: echo }),
  ]);
  const last = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 1 });
  const lastOfAll = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 2 });
  assertEquals([last.id, lastOfAll.id], [0xffff_fffd, 0xffff_ffff]);
  assert(client.accepting);
  await assertRejects(
    () => client.open({ protocol: "tcp", host: "10.0.0.1", port: 3 }),
    Error,
    "going away",
  );
  assert(!client.accepting, "no new streams after the ids ran out");
  // The streams already open still carry bytes both ways.
  const writer = last.writable.getWriter();
  await writer.write(new TextEncoder().encode("still here"));
  const reader = last.readable.getReader();
  assertEquals(new TextDecoder().decode((await reader.read()).value), "still here");
  assertEquals(client.closeReason, null, "not closed while streams are open");
  await writer.close();
  await reader.read();
  lastOfAll.reset();
  await client.closed;
  assertEquals(client.closeReason, "went away");
  agent.close();
  await agent.closed;
});

Deno.test("session: an early open carries its first bytes before the answer; they reach the far end once it has connected", async () => {
  let connect!: () => void;
  const connected = new Promise<void>((resolve) => (connect = resolve));
  const { client, close } = await tunnelPair(async () => {
    await connected;
    return new TransformStream<Uint8Array, Uint8Array>();
  });
  const stream = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 1 }, { early: true });
  const writer = stream.writable.getWriter();
  await writer.write(new TextEncoder().encode("before the answer"));
  let answered = false;
  stream.opened.then(() => (answered = true));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert(!answered, "opened before the far end connected");
  connect();
  await stream.opened;
  const reader = stream.readable.getReader();
  assertEquals(new TextDecoder().decode((await reader.read()).value), "before the answer");
  await writer.close();
  assertEquals((await reader.read()).done, true);
  await close();
});

Deno.test("session: an early open the far end refuses is reset, and opened rejects with its OpenError", async () => {
  const { client, close } = await tunnelPair(() =>
    Promise.reject(new OpenError("refused", "connect to 10.0.0.1:1: connection refused"))
  );
  const stream = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 1 }, { early: true });
  const error = await stream.opened.then(() => undefined, (e: unknown) => e);
  assertInstanceOf(error, OpenError);
  assertEquals((error as OpenError).code, "refused");
  await assertRejects(() => stream.read(), StreamResetError);
  await stream.closed;
  await close();
});

Deno.test("session: an early open reset by its opener before the answer settles, and the far end drops the dial", async () => {
  let dialSignal: AbortSignal | undefined;
  const { client, close } = await tunnelPair((_request, signal) => {
    dialSignal = signal;
    return new Promise(() => {});
  });
  const stream = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 1 }, { early: true });
  stream.reset("the local client went away");
  const error = await stream.opened.then(() => undefined, (e: unknown) => e);
  assertInstanceOf(error, StreamResetError);
  for (let i = 0; i < 100 && !dialSignal?.aborted; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert(dialSignal?.aborted, "the far end's dial was not aborted");
  await close();
});

Deno.test("session: the client refuses an agent that offers a stream window of 0", async () => {
  const [a, b] = duplexPair();
  const [client] = await Promise.allSettled([
    connectTunnel(a, { token: TOKEN }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, streamWindow: 0 }),
  ]);
  assert(client.status === "rejected");
  const reason = assertInstanceOf(client.reason, HandshakeError);
  assertEquals(reason.code, "protocol");
  assert(reason.message.includes("window of 0"), reason.message);
});

Deno.test("session: something that is not a relay peer is a clean handshake error", async () => {
  const [a, b] = duplexPair();
  b.readable.pipeTo(new WritableStream()).catch(() => {});
  const junk = b.writable.getWriter();
  junk.write(text("HTTP/1.1 400 Bad Request\r\n\r\n")).catch(() => {});
  const e = await assertRejects(() => connectTunnel(a, { token: TOKEN }), HandshakeError);
  assertEquals(e.code, "protocol");
});

Deno.test("session: many concurrent streams echo intact", async () => {
  const { client, close } = await tunnelPair(echo);
  const results = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    const stream = await client.open({ protocol: "tcp", host: "10.0.0.1", port: 1000 + i });
    assertEquals(stream.id % 2, 1);
    const [, seen] = await Promise.all([
      patternSource(200_000 + i * 997, 32 * 1024).pipeTo(stream.writable),
      checkPattern(stream.readable),
    ]);
    await stream.closed;
    return seen;
  }));
  assertEquals(results, Array.from({ length: 64 }, (_, i) => 200_000 + i * 997));
  assertEquals(client.streamCount, 0);
  await close();
});

Deno.test("session: 64 MiB through one stream arrive intact", async () => {
  const { client, close } = await tunnelPair(echo);
  const stream = await client.open({ protocol: "tcp", host: "::1", port: 80 });
  const [, seen] = await Promise.all([
    patternSource(64 * MiB).pipeTo(stream.writable),
    checkPattern(stream.readable),
  ]);
  assertEquals(seen, 64 * MiB);
  await close();
});

Deno.test("session: half-close carries each direction's end independently", async () => {
  // The far end reads until the client's FIN, then answers and closes its side.
  const answerAfterEof: OpenHandler = () => {
    const toServer = new TransformStream<Uint8Array, Uint8Array>();
    const fromServer = new TransformStream<Uint8Array, Uint8Array>();
    (async () => {
      const got = await readAll(toServer.readable);
      const w = fromServer.writable.getWriter();
      await w.write(text(`got ${untext(got)}`));
      await w.close();
    })();
    return Promise.resolve({ readable: fromServer.readable, writable: toServer.writable });
  };
  const { client, close } = await tunnelPair(answerAfterEof);
  const stream = await client.open({ protocol: "tcp", host: "h", port: 1 });
  const w = stream.writable.getWriter();
  await w.write(text("request"));
  await w.close();
  assertEquals(untext(await readAll(stream.readable)), "got request");
  await stream.closed;

  // And the other way: the far end closes first, the client keeps writing after that.
  const closeFirst: OpenHandler = () => {
    const toServer = new TransformStream<Uint8Array, Uint8Array>();
    const sink = readAll(toServer.readable);
    const greeting = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(text("hello"));
        c.close();
      },
    });
    sinkSeen = sink;
    return Promise.resolve({ readable: greeting, writable: toServer.writable });
  };
  let sinkSeen: Promise<Uint8Array> = Promise.resolve(new Uint8Array());
  const { client: c2, close: close2 } = await tunnelPair(closeFirst);
  const s2 = await c2.open({ protocol: "tcp", host: "h", port: 2 });
  assertEquals(untext(await readAll(s2.readable)), "hello");
  const w2 = s2.writable.getWriter();
  await w2.write(text("still "));
  await w2.write(text("talking"));
  await w2.close();
  assertEquals(untext(await sinkSeen), "still talking");
  await s2.closed;
  await close();
  await close2();
});

Deno.test("session: reset aborts both sides, from either end", async () => {
  let farEnd: Duplex | null = null;
  const capture: OpenHandler = () => {
    const t = new TransformStream<Uint8Array, Uint8Array>();
    const back = new TransformStream<Uint8Array, Uint8Array>();
    farEnd = { readable: t.readable, writable: back.writable };
    return Promise.resolve({ readable: back.readable, writable: t.writable });
  };
  const { client, close } = await tunnelPair(capture);
  const stream = await client.open({ protocol: "tcp", host: "h", port: 1 });
  const reading = stream.readable.getReader().read();
  stream.reset("client gave up");
  await assertRejects(() => reading, StreamResetError);
  await stream.closed;
  // the far end sees its input error (the agent aborted the duplex's writable)
  await assertRejects(() => farEnd!.readable.getReader().read(), Error);

  // reset from the agent side: the far end's source errors, the client stream errors
  const s2 = await client.open({ protocol: "tcp", host: "h", port: 2 });
  const far2 = farEnd! as Duplex;
  far2.writable.abort(new Error("backend died"));
  await assertRejects(() => s2.readable.getReader().read(), StreamResetError);
  await assertRejects(() => s2.writable.getWriter().write(text("x")), StreamResetError);
  await s2.closed;
  await close();
});

Deno.test("session: a handled stream's tracking hears how it ended: the opener's reset reason, or nothing", async () => {
  const ends: (string | undefined)[] = [];
  const tracked: OpenHandler = () => {
    const t = new TransformStream<Uint8Array, Uint8Array>();
    return Promise.resolve({
      readable: t.readable,
      writable: t.writable,
      tracking: { counts: { aToB: 0, bToA: 0 }, end: (failure?: string) => ends.push(failure) },
    });
  };
  const { client, close } = await tunnelPair(tracked);
  const clean = await client.open({ protocol: "tcp", host: "h", port: 1 });
  await clean.writable.close();
  for await (const _ of clean.readable) { /* the echo's end */ }
  const dropped = await client.open({ protocol: "tcp", host: "h", port: 2 });
  dropped.reset("mirror copy given up");
  await dropped.closed;
  const deadline = Date.now() + 5000;
  while (ends.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assertEquals(ends, [undefined, "stream reset by peer: mirror copy given up"]);
  await close();
});

Deno.test("session: open failures arrive as OpenError with their code", async () => {
  const refuse: OpenHandler = (req) =>
    Promise.reject(
      req.port === 1 ? new OpenError("refused", "connection refused") : new Error("boom"),
    );
  const { client, close } = await tunnelPair(refuse);
  const e = await assertRejects(
    () => client.open({ protocol: "tcp", host: "h", port: 1 }),
    OpenError,
  );
  assertEquals(e.code, "refused");
  const e2 = await assertRejects(
    () => client.open({ protocol: "tcp", host: "h", port: 2 }),
    OpenError,
  );
  assertEquals(e2.code, "error");
  assertEquals(client.streamCount, 0);
  await close();
});

Deno.test("session: UDP datagrams of 1, 1400 and 65507 bytes keep their boundaries", async () => {
  const { client, close } = await tunnelPair(echo);
  const stream = await client.open({ protocol: "udp", host: "10.0.0.53", port: 53 });
  const sizes = [1, 1400, 65507, 1400, 1];
  const datagrams = sizes.map((n) => crypto.getRandomValues(new Uint8Array(Math.min(n, 65536))));
  // getRandomValues caps at 65536, which all sizes fit
  const w = stream.writable.getWriter();
  const r = stream.readable.getReader();
  for (const d of datagrams) {
    await w.write(d);
    const { value } = await r.read();
    assertEquals(value, d);
  }
  await close();
});

Deno.test("session: a UDP flood toward a reader that does not read drops and counts", async () => {
  const SENT = 3000;
  const flood: OpenHandler = () => {
    let n = 0;
    const readable = new ReadableStream<Uint8Array>({
      pull(c) {
        if (n++ >= SENT) return c.close();
        c.enqueue(new Uint8Array(100).fill(n & 0xff));
      },
    });
    return Promise.resolve({ readable, writable: new WritableStream() });
  };
  const { client, agent, close } = await tunnelPair(flood, { udpQueue: 64 });
  const stream = await client.open({ protocol: "udp", host: "10.0.0.53", port: 53 });
  while (agent.streamCount > 0 || client.streamCount > 0) {
    // wait until the flood is through (the agent's side half-closes when its source ends)
    await new Promise((resolve) => setTimeout(resolve, 10));
    if ((stream as MuxStream).dropped > 0) break;
  }
  while ((stream as MuxStream).dropped + (stream as MuxStream).buffered / 100 < SENT) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  let read = 0;
  for await (const d of stream.readable) {
    assertEquals(d.length, 100);
    read++;
  }
  assert(stream.dropped > 0, "nothing was dropped");
  assertEquals(read + stream.dropped, SENT);
  assert(read <= 64, `read ${read} datagrams, more than the queue holds`);
  await close();
});

Deno.test("session: a stalled reader on one stream does not stop another", async () => {
  const WINDOW = 256 * 1024;
  const handler: OpenHandler = (req) =>
    req.port === 1
      // stream A: the far end offers far more than a window
      ? Promise.resolve({ readable: patternSource(64 * MiB), writable: new WritableStream() })
      : echo(req);
  const { client, close } = await tunnelPair(handler, { streamWindow: WINDOW });
  const a = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  const b = await client.open({ protocol: "tcp", host: "h", port: 2 });
  const [, seen] = await Promise.all([
    patternSource(64 * MiB).pipeTo(b.writable),
    checkPattern(b.readable),
  ]);
  assertEquals(seen, 64 * MiB);
  assert(a.buffered > 0, "stream A received nothing");
  assert(
    a.buffered <= a.receiveWindow,
    `stream A buffered ${a.buffered} bytes, window ${a.receiveWindow}`,
  );
  a.reset("done");
  await close();
});

Deno.test("session: a fast reader grows its window; stalled, it buffers at most that window", async () => {
  const WINDOW = 64 * 1024;
  const MAX = 1 * MiB;
  const handler: OpenHandler = () =>
    Promise.resolve({ readable: patternSource(64 * MiB), writable: new WritableStream() });
  const { client, close } = await tunnelPair(handler, {
    streamWindow: WINDOW,
    maxStreamWindow: MAX,
    streamHeadStart: 0,
  });
  const a = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  assertEquals(a.receiveWindow, WINDOW);
  const reader = a.readable.getReader();
  let read = 0;
  while (read < 16 * MiB) read += (await reader.read()).value!.length;
  assert(a.receiveWindow > WINDOW, `window did not grow from ${WINDOW}`);
  assert(a.receiveWindow <= MAX, `window ${a.receiveWindow} grew past ${MAX}`);
  // The reader stops: the sender fills what it was granted, and no more.
  await plateau("the stopped stream's buffer", () => a.buffered);
  assert(a.buffered <= a.receiveWindow, `buffered ${a.buffered}, window ${a.receiveWindow}`);
  a.reset("done");
  await close();
});

/** Each chunk read from `duplex` arrives `ms` late, as over a distant path; order is kept. */
function arrivingLate(duplex: Duplex, ms: number): Duplex {
  const late = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      setTimeout(() => {
        try {
          controller.enqueue(chunk);
        } catch { /* the reading end has gone: the chunk is lost, as on a closed path */ }
      }, ms);
    },
    flush: () => new Promise((resolve) => setTimeout(resolve, ms + 1)),
  });
  return { readable: duplex.readable.pipeThrough(late), writable: duplex.writable };
}

Deno.test("session: a new stream's peer may send a head start before any credit comes back, each way, and a later stream gets a share of what budget is left", async () => {
  const WINDOW = 64 * 1024;
  const GROWTH = 8 * MiB;
  // The far end offers far more than a window and never takes what it is sent.
  const handler: OpenHandler = () =>
    Promise.resolve({
      readable: patternSource(64 * MiB),
      writable: new WritableStream({ write: () => new Promise(() => {}) }),
    });
  const { client, close } = await tunnelPair(handler, {
    streamWindow: WINDOW,
    maxStreamWindow: 32 * MiB,
    maxSessionGrowth: GROWTH,
    streamHeadStart: 4 * MiB,
  });
  const a = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  const writer = a.writable.getWriter();
  let written = 0;
  const writing = (async () => {
    for (;;) {
      await writer.write(new Uint8Array(64 * 1024));
      written += 64 * 1024;
    }
  })().catch(() => {});
  // Nobody reads either way, so no credit goes back: what moved is what the head starts let.
  await plateau("the unread stream's buffer", () => a.buffered);
  await plateau("what the client could send", () => written);
  assertEquals(a.receiveWindow, WINDOW + GROWTH / 4, "the head start is a quarter of the budget");
  assert(a.buffered > WINDOW, `the agent sent only ${a.buffered} bytes`);
  assert(a.buffered <= a.receiveWindow, `buffered ${a.buffered}, window ${a.receiveWindow}`);
  assert(written > WINDOW, `the client could send only ${written} bytes`);
  assert(written <= WINDOW + GROWTH / 4 + 64 * 1024, `the client sent ${written} bytes`);
  const b = await client.open({ protocol: "tcp", host: "h", port: 2 }) as MuxStream;
  assertEquals(b.receiveWindow, WINDOW + (GROWTH - GROWTH / 4) / 4, "what budget is left");
  a.reset("done");
  b.reset("done");
  await writing;
  await close();
});

Deno.test("session: a stream that gave its credit back gets a new head start when its peer sends again", async () => {
  const WINDOW = 64 * 1024;
  // The far end sends 1 MiB, waits until told, then offers far more than a window.
  let resume!: () => void;
  const again = new Promise<void>((resolve) => resume = resolve);
  const handler: OpenHandler = () => {
    let sent = 0;
    const source = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === MiB) await again;
        controller.enqueue(new Uint8Array(64 * 1024));
        sent += 64 * 1024;
      },
    }, { highWaterMark: 0 });
    return Promise.resolve({ readable: source, writable: new WritableStream() });
  };
  const { client, close } = await tunnelPair(handler, {
    streamWindow: WINDOW,
    maxSessionGrowth: 8 * MiB,
    streamHeadStart: 4 * MiB,
    idleCreditMs: 100,
  });
  const stream = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  const reader = stream.readable.getReader();
  for (let read = 0; read < MiB;) read += (await reader.read()).value!.length;
  // Quiet: the far end gives its credit back, and the window shrinks to about the initial one
  // (plus what was read and not yet granted back, under a quarter window).
  const grown = stream.receiveWindow;
  assert(grown > 2 * MiB, `the window was only ${grown}`);
  const deadline = Date.now() + 5_000;
  while (stream.receiveWindow > WINDOW + MiB && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const shrunk = stream.receiveWindow;
  assert(shrunk <= WINDOW + MiB, `the credit never came back: still ${shrunk}`);
  // It sends again, and nobody reads: only a new head start lets more than that arrive.
  resume();
  await plateau("the unread stream's buffer", () => stream.buffered);
  assert(stream.buffered > shrunk, `only ${stream.buffered} bytes arrived, window ${shrunk}`);
  assert(stream.receiveWindow >= shrunk + MiB, `the window grew only to ${stream.receiveWindow}`);
  reader.releaseLock();
  stream.reset("done");
  await close();
});

Deno.test("session: on a tunnel with an 80 ms round trip, a fast reader's window still grows", async () => {
  const WINDOW = 64 * 1024;
  const handler: OpenHandler = () =>
    Promise.resolve({ readable: patternSource(64 * MiB), writable: new WritableStream() });
  const [a, b] = duplexPair();
  const options = { streamWindow: WINDOW, maxStreamWindow: 8 * MiB, streamHeadStart: 0 };
  const [client, agent] = await Promise.all([
    connectTunnel(arrivingLate(a, 40), { token: TOKEN, ...options }),
    acceptTunnel(arrivingLate(b, 40), { tokenDigest: TOKEN_DIGEST, onOpen: handler, ...options }),
  ]);
  // Each end measures the round trip right after the handshake; this ping follows its own.
  assert(await client.ping() >= 80);
  const stream = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  const reader = stream.readable.getReader();
  let read = 0;
  while (read < 2 * MiB) read += (await reader.read()).value!.length;
  // One window per round trip would have taken 2.6 s for this; a grown window takes far less.
  assert(stream.receiveWindow > WINDOW, `window did not grow from ${WINDOW} at 80 ms`);
  stream.reset("done");
  client.close();
  agent.close();
  await Promise.all([client.closed, agent.closed]);
});

Deno.test("session: fast streams share one growth budget, and give it back when they end", async () => {
  const WINDOW = 64 * 1024;
  const MAX = 4 * MiB;
  const GROWTH = 1 * MiB;
  const handler: OpenHandler = () =>
    Promise.resolve({ readable: patternSource(8 * MiB), writable: new WritableStream() });
  const { client, close } = await tunnelPair(handler, {
    streamWindow: WINDOW,
    maxStreamWindow: MAX,
    maxSessionGrowth: GROWTH,
  });
  const drain = async (stream: MuxStream) => {
    let read = 0;
    for await (const chunk of stream.readable) read += chunk.length;
    return read;
  };
  const streams = await Promise.all(
    [1, 2, 3, 4].map((port) => client.open({ protocol: "tcp", host: "h", port })),
  ) as MuxStream[];
  const reads = await Promise.all(streams.map(drain));
  // A window never shrinks, so the sum at the end is the most they held together.
  const grown = streams.reduce((n, s) => n + s.receiveWindow - WINDOW, 0);
  assertEquals(reads, [8 * MiB, 8 * MiB, 8 * MiB, 8 * MiB]);
  assert(grown > 0, "no stream grew");
  assert(grown <= GROWTH, `the streams grew by ${grown} together, more than ${GROWTH}`);
  // With the others ended, one stream may take the whole budget again.
  await Promise.all(streams.map(async (s) => {
    await s.writable.close();
    await s.closed;
  }));
  const next = await client.open({ protocol: "tcp", host: "h", port: 5 }) as MuxStream;
  assertEquals(await drain(next), 8 * MiB);
  assert(next.receiveWindow > WINDOW + GROWTH / 2, `grew only to ${next.receiveWindow}`);
  await close();
});

Deno.test("session: a stream quiet for a while gives back its grown credit, so another stream can grow while it stays open", async () => {
  const WINDOW = 64 * 1024;
  const MAX = 4 * MiB;
  const GROWTH = 1 * MiB;
  // Stream 1's far end sends 8 MiB, then holds the stream open (no FIN) until the end.
  let release!: () => void;
  const held = new Promise<void>((resolve) => release = resolve);
  const burstThenHold = () => {
    const pattern = patternSource(8 * MiB).getReader();
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { done, value } = await pattern.read();
        if (!done) return controller.enqueue(value);
        await held;
        controller.close();
      },
    });
  };
  const handler: OpenHandler = (req) =>
    Promise.resolve({
      readable: req.port === 1 ? burstThenHold() : patternSource(8 * MiB),
      writable: new WritableStream(),
    });
  const { client, close } = await tunnelPair(handler, {
    streamWindow: WINDOW,
    maxStreamWindow: MAX,
    maxSessionGrowth: GROWTH,
    idleCreditMs: 100,
  });
  const first = await client.open({ protocol: "tcp", host: "h", port: 1 }) as MuxStream;
  const reader = first.readable.getReader();
  for (let read = 0; read < 8 * MiB;) read += (await reader.read()).value!.length;
  const grown = first.receiveWindow - WINDOW;
  assert(grown > GROWTH / 2, `the first stream grew only by ${grown}`);
  // Quiet now: its far end gives the credit back, and the window shrinks to about the
  // initial one (plus what was read and not yet granted back, under a quarter window).
  const deadline = Date.now() + 5_000;
  while (first.receiveWindow - WINDOW > grown / 2 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert(first.receiveWindow - WINDOW <= grown / 2, `still ${first.receiveWindow}`);
  // With the first stream still open, the second may take most of the budget.
  const second = await client.open({ protocol: "tcp", host: "h", port: 2 }) as MuxStream;
  let maxWindow = 0;
  for await (const chunk of second.readable) {
    assert(chunk.length > 0);
    maxWindow = Math.max(maxWindow, second.receiveWindow);
  }
  assert(maxWindow - WINDOW > GROWTH / 2, `the second stream grew only to ${maxWindow}`);
  release();
  reader.releaseLock();
  first.reset("done");
  await close();
});

Deno.test("session: a transport that closes ends every stream promptly", async () => {
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: TOKEN }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, onOpen: echo }),
  ]);
  const streams = await Promise.all(
    [1, 2, 3].map((port) => client.open({ protocol: "tcp", host: "h", port })),
  );
  const reads = streams.map((s) => s.readable.getReader().read());
  agent.close("agent going down");
  for (const read of reads) await assertRejects(() => read, StreamResetError);
  await Promise.all(streams.map((s) => s.closed));
  await client.closed;
  await agent.closed;
  assertEquals(client.streamCount, 0);
  await assertRejects(() => client.open({ protocol: "tcp", host: "h", port: 4 }), Error);
});

Deno.test("session: goAway lets open streams finish, refuses new ones, then closes", async () => {
  const { client, agent, close } = await tunnelPair(echo);
  const stream = await client.open({ protocol: "tcp", host: "h", port: 1 });
  const leaving = client.goAway();
  await assertRejects(() => client.open({ protocol: "tcp", host: "h", port: 2 }), Error);
  const w = stream.writable.getWriter();
  await w.write(text("last words"));
  await w.close();
  assertEquals(untext(await readAll(stream.readable)), "last words");
  await leaving;
  await agent.closed;
  await close();
});

Deno.test("session: a peer that stops answering is closed by keep-alive", async () => {
  const [a, b] = duplexPair();
  // After the handshake the agent hears nothing more: a frozen peer.
  let frozen = false;
  const gate = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, c) {
      if (!frozen) c.enqueue(chunk);
    },
  });
  b.readable.pipeTo(gate.writable).catch(() => {});
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: TOKEN, keepAliveMs: 20 }),
    acceptTunnel({ readable: gate.readable, writable: b.writable }, {
      tokenDigest: TOKEN_DIGEST,
      keepAliveMs: 0,
    }),
  ]);
  frozen = true;
  await client.closed;
  agent.close();
  await agent.closed;
});

Deno.test("connDuplex: a released read chunk's buffer takes a later read; an unreleased one never does", async () => {
  const server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = server.accept();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  const peer = await accepted;
  const pool = new BufferPool();
  const reader = connDuplex(conn, pool).readable.getReader();
  // Full reads switch to the large buffer; keep the socket well ahead of the reader.
  const writing = peer.write(new Uint8Array(4 * MiB).fill(1));
  // The next chunk read into a large buffer (a short read is copied out of it instead).
  const large = async () => {
    for (;;) {
      const { value } = await reader.read();
      if (value!.buffer.byteLength === 64 * 1024) return value!;
    }
  };
  const first = await large();
  const second = await large();
  assert(second.buffer !== first.buffer, "an unreleased buffer was read into again");
  // A view of the same buffer (a frame payload cut out of a tunnel read) releases nothing.
  pool.release(new Uint8Array(second.buffer));
  assert((await large()).buffer !== second.buffer, "a view released its buffer");
  pool.release(second);
  const third = await large();
  assert(third.buffer === second.buffer, "the released buffer was not reused");
  await reader.cancel();
  peer.close();
  server.close();
  await writing.catch(() => {});
});

Deno.test("over a real TCP tunnel, with read buffers reused on both of the agent's sockets, 4 × 8 MiB echo back intact", async () => {
  const size = 8 * MiB;
  // A TCP echo server that passes the client's half-close on.
  const echoServer = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const echoing = (async () => {
    for await (const conn of echoServer) {
      (async () => {
        const buf = new Uint8Array(50_000);
        for (let n; (n = await conn.read(buf)) !== null;) {
          for (let at = 0; at < n;) at += await conn.write(buf.subarray(at, n));
        }
        await conn.closeWrite();
      })().catch(() => {}).finally(() => conn.close());
    }
  })().catch(() => {});
  const tunnelServer = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [agentConn, clientConn] = await Promise.all([
    tunnelServer.accept(),
    Deno.connect({ hostname: "127.0.0.1", port: tunnelServer.addr.port }),
  ]);
  // The agent's end: tunnel reads are lent to frame payloads, socket reads to DATA frames.
  const buffers = new BufferPool();
  const [client, agent] = await Promise.all([
    connectTunnel(connDuplex(clientConn), { token: TOKEN }),
    acceptTunnel(connDuplex(agentConn, buffers), {
      tokenDigest: TOKEN_DIGEST,
      buffers,
      onOpen: async () =>
        connDuplex(
          await Deno.connect({ hostname: "127.0.0.1", port: echoServer.addr.port }),
          buffers,
        ),
    }),
  ]);
  try {
    const counts = await Promise.all(Array.from({ length: 4 }, async () => {
      const stream = await client.open({ protocol: "tcp", host: "127.0.0.1", port: 1 });
      const [, seen] = await Promise.all([
        patternSource(size, 70_001).pipeTo(stream.writable),
        checkPattern(stream.readable),
      ]);
      return seen;
    }));
    assertEquals(counts, [size, size, size, size]);
  } finally {
    client.close();
    agent.close();
    await Promise.all([client.closed, agent.closed]);
    tunnelServer.close();
    echoServer.close();
    await echoing;
  }
});
