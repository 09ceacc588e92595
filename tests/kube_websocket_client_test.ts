/**
 * relay's WebSocket client against Deno's own server (Deno.serve + Deno.upgradeWebSocket) and
 * against a raw server that sends what a test wants: echoes of every size and shape both ways,
 * pings, close codes, refused upgrades with their bodies, an upgrade never answered, and a
 * server that breaks the protocol.
 */
import fc from "fast-check";
import { assert, assertEquals, assertRejects, within } from "./assert.ts";
import {
  type ByteTransport,
  connectWebSocket,
  connTransport,
  type Message,
  UpgradeRefused,
  WebSocketClosedError,
  WebSocketConnection,
  WebSocketHandshakeError,
  WebSocketProtocolError,
} from "../lib/kube/websocket_client.ts";
import { Opcode } from "../lib/kube/websocket_frames.ts";
import {
  MemoryTransport,
  type RawPeer,
  serverFrame,
  startRawWebSocketServer,
} from "./websocket_fixtures.ts";

/** An echo server on Deno's WebSocket; `closes` collects the close events it sees. */
function startEchoServer(): {
  url: URL;
  closes: { code: number; reason: string }[];
  close(): Promise<void>;
} {
  const closes: { code: number; reason: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const url = new URL(request.url);
    if (url.pathname === "/forbidden") {
      return Response.json({ kind: "Status", message: "no way", code: 403 }, { status: 403 });
    }
    if (url.pathname === "/missing") {
      // No Content-Length: the body comes chunked.
      return new Response(ReadableStream.from([new TextEncoder().encode("not here\n")]), {
        status: 404,
      });
    }
    const { socket, response } = Deno.upgradeWebSocket(request, { protocol: "echo.v1" });
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      if (event.data === "close me") socket.close(4002, "as asked");
      else socket.send(event.data);
    };
    socket.onclose = (event) => closes.push({ code: event.code, reason: event.reason });
    return response;
  });
  return {
    url: new URL(`ws://127.0.0.1:${server.addr.port}/echo`),
    closes,
    close: () => server.shutdown(),
  };
}

/** A plain TCP connection to `url`'s host and port, as a transport. */
async function dial(url: string | URL): Promise<ByteTransport> {
  const { hostname, port } = new URL(url);
  return connTransport(await Deno.connect({ hostname, port: Number(port) }));
}

async function open(url: URL, maxMessageBytes?: number): Promise<WebSocketConnection> {
  const transport = await dial(url.origin);
  return await connectWebSocket(transport, url, {
    protocols: ["echo.v2", "echo.v1"],
    maxMessageBytes,
  });
}

const patterned = (n: number) => new Uint8Array(n).map((_, i) => (i * 7 + (i >>> 9)) & 0xff);

Deno.test("websocket client: echoes of small, empty, large and fragmented messages, both kinds", async () => {
  const server = startEchoServer();
  try {
    const ws = await open(server.url);
    assertEquals(ws.protocol, "echo.v1");
    const big = patterned(3 * 1024 * 1024 + 5);
    const sent: Message[] = [
      { binary: false, data: "hello ✓" },
      { binary: true, data: new Uint8Array([1, 2, 3]) },
      { binary: true, data: new Uint8Array(0) },
      { binary: false, data: "" },
      { binary: true, data: big },
    ];
    for (const message of sent) await ws.send(message.data);
    // Fragmented by the client; Deno's server joins the frames and echoes one message.
    await ws.sendFragmented(true, [
      big.subarray(0, 10),
      big.subarray(10, 70_000),
      new Uint8Array(0),
    ]);
    await ws.sendFragmented(false, [
      new TextEncoder().encode("frag"),
      new TextEncoder().encode("ment"),
    ]);
    sent.push({ binary: true, data: big.subarray(0, 70_000) }, { binary: false, data: "fragment" });
    for (const message of sent) {
      assertEquals(await within(ws.readMessage(), "an echo"), message);
    }
    ws.close(4001, "done here");
    assertEquals(await within(ws.readMessage(), "the server's Close"), null);
    assertEquals(ws.closeInfo, { code: 4001, reason: "done here" });
    assertEquals(ws.open, false);
  } finally {
    await server.close();
  }
  assertEquals(server.closes, [{ code: 4001, reason: "done here" }]);
});

Deno.test("websocket client: a ping is answered by a pong with its payload; a server's Close ends reading", async () => {
  const server = startEchoServer();
  try {
    const ws = await open(server.url);
    const pong = new Promise<Uint8Array>((resolve) => (ws.onPong = resolve));
    await ws.ping(new Uint8Array([4, 5, 6]));
    await ws.send("close me");
    // Reading sees the Pong go by, then the server's Close.
    assertEquals(await within(ws.readPiece(), "the server's Close"), null);
    assertEquals([...await pong], [4, 5, 6]);
    assertEquals(ws.closeInfo, { code: 4002, reason: "as asked" });
    await assertRejects(() => ws.send("too late"), WebSocketClosedError);
  } finally {
    await server.close();
  }
});

Deno.test("websocket client: a refused upgrade is its status and body (with a length or chunked)", async () => {
  const server = startEchoServer();
  try {
    const forbidden = await assertRejects(
      () => open(new URL("/forbidden", server.url)),
      UpgradeRefused,
      "HTTP 403",
    );
    assertEquals(forbidden.status, 403);
    assertEquals(JSON.parse(forbidden.body).message, "no way");
    const missing = await assertRejects(
      () => open(new URL("/missing", server.url)),
      UpgradeRefused,
    );
    assertEquals([missing.status, missing.body], [404, "not here\n"]);
  } finally {
    await server.close();
  }
});

Deno.test("websocket client: an upgrade never answered is given up when its signal aborts, its socket closed", async () => {
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  try {
    const transport = await dial(`http://127.0.0.1:${silent.addr.port}`);
    const giveUp = new AbortController();
    const url = new URL(`ws://127.0.0.1:${silent.addr.port}/x`);
    const dialing = connectWebSocket(transport, url, { signal: giveUp.signal });
    while (held.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    giveUp.abort(new Error("gave up"));
    await assertRejects(() => within(dialing, "the dial"), Error, "gave up");
    const buffer = new Uint8Array(4096);
    while ((await within(held[0].read(buffer), "the end of the connection")) !== null) {
      // the upgrade request
    }
  } finally {
    silent.close();
    held.forEach((conn) => conn.close());
    await accepting.catch(() => {});
  }
});

/** Runs `script` as the server of one connection; returns the client connected to it. */
async function withRawServer(
  script: (peer: RawPeer) => Promise<void>,
  options: { protocol?: string; answer?: (key: string) => string; maxMessageBytes?: number } = {},
): Promise<{ ws: WebSocketConnection; done: Promise<void>; close(): void }> {
  let started!: (running: Promise<void>) => void;
  const running = new Promise<Promise<void>>((resolve) => (started = resolve));
  const server = startRawWebSocketServer((peer) => {
    const script_ = script(peer);
    started(script_);
    return script_;
  }, options);
  const transport = await dial(server.url.origin);
  const ws = await connectWebSocket(transport, server.url, {
    protocols: options.protocol ? [options.protocol] : [],
    maxMessageBytes: options.maxMessageBytes,
  });
  return { ws, done: running.then((script_) => script_), close: server.close };
}

Deno.test("websocket client: fragments with a ping between them come out as one message; the ping is answered", async () => {
  const raw = await withRawServer(async (peer) => {
    await peer.send(serverFrame(Opcode.TEXT, new TextEncoder().encode("hel"), { fin: false }));
    await peer.send(serverFrame(Opcode.PING, new Uint8Array([7])));
    await peer.send(serverFrame(Opcode.CONTINUATION, new TextEncoder().encode("lo ✓")));
    const pong = await peer.nextFrame();
    assertEquals([pong?.opcode, [...pong!.payload]], [Opcode.PONG, [7]]);
    await peer.send(serverFrame(Opcode.CLOSE, new Uint8Array([0x03, 0xe8])));
    const close = await peer.nextFrame();
    assertEquals([close?.opcode, [...close!.payload]], [Opcode.CLOSE, [0x03, 0xe8]]);
  });
  try {
    assertEquals(await within(raw.ws.readMessage(), "a message"), {
      binary: false,
      data: "hello ✓",
    });
    assertEquals(await within(raw.ws.readMessage(), "the Close"), null);
    assertEquals(raw.ws.closeInfo, { code: 1000, reason: "" });
    await within(raw.done, "the server's script");
  } finally {
    raw.close();
  }
});

Deno.test("websocket client: a protocol error is told to the server with a Close of its code", async () => {
  const cases: [string, Uint8Array[], number][] = [
    ["a masked frame", [serverFrame(Opcode.BINARY, new Uint8Array(2), { mask: true })], 1002],
    ["a stray continuation", [serverFrame(Opcode.CONTINUATION, new Uint8Array(2))], 1002],
    ["a new message mid-message", [
      serverFrame(Opcode.BINARY, new Uint8Array(2), { fin: false }),
      serverFrame(Opcode.TEXT, new Uint8Array(2)),
    ], 1002],
    ["text that is not UTF-8", [serverFrame(Opcode.TEXT, new Uint8Array([0xc3]))], 1007],
    ["a message over the limit", [serverFrame(Opcode.BINARY, new Uint8Array(2000))], 1009],
  ];
  for (const [what, frames, code] of cases) {
    let closeCode = -1;
    const raw = await withRawServer(async (peer) => {
      for (const frame of frames) await peer.send(frame);
      const close = await peer.nextFrame();
      if (close?.opcode === Opcode.CLOSE) closeCode = (close.payload[0] << 8) | close.payload[1];
    }, { maxMessageBytes: 1000 });
    try {
      const error = await assertRejects(
        () => within(raw.ws.readMessage(), what),
        WebSocketProtocolError,
      );
      assertEquals(error.closeCode, code, what);
      await within(raw.done, `the server's script (${what})`);
      assertEquals(closeCode, code, what);
      await assertRejects(() => raw.ws.readPiece(), WebSocketProtocolError);
    } finally {
      raw.close();
    }
  }
});

Deno.test("websocket client: a connection that ends without a Close is an error of code 1006", async () => {
  const raw = await withRawServer(async (peer) => {
    await peer.send(serverFrame(Opcode.BINARY, new Uint8Array([1])));
    peer.conn.close();
  });
  try {
    assertEquals(await within(raw.ws.readMessage(), "a message"), {
      binary: true,
      data: new Uint8Array([1]),
    });
    const error = await assertRejects(() => raw.ws.readMessage(), WebSocketClosedError);
    assertEquals(error.code, 1006);
  } finally {
    raw.close();
  }
});

Deno.test("websocket client: a 101 that breaks the handshake's rules is refused", async () => {
  const answers: [string, (key: string) => string, string][] = [
    ["a wrong accept", () =>
      "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", "Sec-WebSocket-Accept"],
    ["no upgrade", () => "HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n\r\n", "Upgrade"],
    ["not HTTP", () => "SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"],
  ];
  for (const [what, answer, message] of answers) {
    const server = startRawWebSocketServer(() => {}, { answer });
    try {
      const transport = await dial(server.url.origin);
      await assertRejects(
        () => within(connectWebSocket(transport, server.url), what),
        WebSocketHandshakeError,
        message,
      );
    } finally {
      server.close();
    }
  }
  // A subprotocol that was not offered.
  const server = startRawWebSocketServer(() => {}, { protocol: "other" });
  try {
    const transport = await dial(server.url.origin);
    await assertRejects(
      () => connectWebSocket(transport, server.url, { protocols: ["mine"] }),
      WebSocketHandshakeError,
      `"other", which was not offered`,
    );
  } finally {
    server.close();
  }
});

Deno.test("websocket client: messages cut into frames and chunks anyhow, pings between, come out whole", async () => {
  const message = fc.record({
    binary: fc.boolean(),
    text: fc.string({ maxLength: 300, unit: "grapheme" }),
    cuts: fc.array(fc.nat({ max: 400 }), { maxLength: 4 }),
  });
  await fc.assert(
    fc.asyncProperty(
      fc.array(message, { maxLength: 6 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 50 }),
      async (messages, chunkSizes) => {
        const frames: Uint8Array[] = [];
        const pings: number[] = [];
        for (const [i, m] of messages.entries()) {
          const data = new TextEncoder().encode(m.text);
          const cuts = [...new Set(m.cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
          const bounds = [0, ...cuts, data.length];
          for (let f = 0; f + 1 < bounds.length; f++) {
            const opcode = f > 0 ? Opcode.CONTINUATION : m.binary ? Opcode.BINARY : Opcode.TEXT;
            const fin = f + 2 === bounds.length;
            frames.push(serverFrame(opcode, data.subarray(bounds[f], bounds[f + 1]), { fin }));
            if (!fin) {
              frames.push(serverFrame(Opcode.PING, new Uint8Array([i])));
              pings.push(i);
            }
          }
        }
        frames.push(serverFrame(Opcode.CLOSE, new Uint8Array([0x03, 0xe8])));
        const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
        frames.reduce((at, f) => (stream.set(f, at), at + f.length), 0);
        const chunks: Uint8Array[] = [];
        for (let at = 0, i = 0; at < stream.length; i++) {
          const size = chunkSizes[i % chunkSizes.length];
          chunks.push(stream.subarray(at, at + size));
          at += size;
        }
        const transport = new MemoryTransport(chunks);
        const ws = new WebSocketConnection(transport, "", new Uint8Array(0));
        for (const m of messages) {
          const got = await ws.readMessage();
          assert(got !== null);
          assertEquals(got.binary, m.binary);
          const text = got.binary ? new TextDecoder().decode(got.data) : got.data;
          assertEquals(text, m.text);
        }
        assertEquals(await ws.readMessage(), null);
        assert(transport.closed, "the transport is closed after the Close handshake");
        // Each ping's pong, then the echoed Close, went out.
        const written = transport.written.map((frame) => frame[0] & 0x0f);
        assertEquals(written, [...pings.map(() => Opcode.PONG), Opcode.CLOSE]);
      },
    ),
    { numRuns: 200 },
  );
});
