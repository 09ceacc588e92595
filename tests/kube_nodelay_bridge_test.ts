/**
 * The bridge that gives relay's API server connections TCP_NODELAY: Deno's HTTP client sends
 * its requests through it to an HTTPS server, verified with the kubeconfig's CA, with or
 * without a client certificate; a server it cannot reach or verify is answered with a 502
 * naming why; closing it removes its socket.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { makeTestPki, startFakeApiServer, type TestPki } from "./kube_fixtures.ts";
import { EventEmitter } from "node:events";
import { type BridgeTarget, drainOrClose, startNoDelayBridge } from "../lib/kube/nodelay_bridge.ts";

let pki: TestPki | undefined;
async function testPki(): Promise<TestPki> {
  return pki ??= await makeTestPki();
}

/** GETs `path` on `target.server` through a bridge, as relay's HTTP client does. */
async function getThroughBridge(
  target: BridgeTarget,
  path: string,
): Promise<{ status: number; body: string }> {
  const bridge = startNoDelayBridge(target);
  assert(bridge, "no bridge on this platform");
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: bridge.path } });
  try {
    const response = await fetch(new URL(path, target.server), { client });
    return { status: response.status, body: await response.text() };
  } finally {
    client.close();
    bridge.close();
  }
}

/**
 * A bridge to `server` that presents the test client certificate (the node:tls path), and an
 * HTTP client that goes through it; `close` ends both.
 */
async function clientCertBridge(
  pki: TestPki,
  server: string,
): Promise<{ client: Deno.HttpClient; close(): void }> {
  const bridge = startNoDelayBridge({
    server: new URL(server),
    ca: pki.caPem,
    cert: await Deno.readTextFile(pki.clientCertFile),
    key: await Deno.readTextFile(pki.clientKeyFile),
  });
  assert(bridge, "no bridge on this platform");
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: bridge.path } });
  return {
    client,
    close() {
      client.close();
      bridge.close();
    },
  };
}

Deno.test("nodelay bridge: requests reach an HTTPS API server verified with the kubeconfig's CA", async () => {
  const pki = await testPki();
  const server = startFakeApiServer(pki, (request) => new Response(new URL(request.url).pathname));
  try {
    const got = await getThroughBridge(
      { server: new URL(server.url), ca: pki.caPem },
      "/api/v1/namespaces/default",
    );
    assertEquals(got, { status: 200, body: "/api/v1/namespaces/default" });
    assertEquals(server.seen.map((r) => r.url.pathname), ["/api/v1/namespaces/default"]);
  } finally {
    await server.close();
  }
});

Deno.test("nodelay bridge: a kubeconfig's client certificate is presented (node:tls)", async () => {
  const pki = await testPki();
  const server = startFakeApiServer(pki, () => new Response("ok"));
  try {
    const got = await getThroughBridge({
      server: new URL(server.url),
      ca: pki.caPem,
      cert: await Deno.readTextFile(pki.clientCertFile),
      key: await Deno.readTextFile(pki.clientKeyFile),
    }, "/version");
    assertEquals(got, { status: 200, body: "ok" });
  } finally {
    await server.close();
  }
});

Deno.test("nodelay bridge: an API server it cannot reach is a 502 that says so", async () => {
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = free.addr.port;
  free.close();
  const got = await getThroughBridge({ server: new URL(`https://127.0.0.1:${port}`) }, "/version");
  assertEquals(got.status, 502);
  assertMatch(
    got.body,
    new RegExp(`relay cannot reach the API server at https://127\\.0\\.0\\.1:${port}: `),
  );
});

Deno.test("nodelay bridge: an API server that accepts and never answers is a 502 once the connect timeout passes", async () => {
  const pki = await testPki();
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  try {
    const client = {
      cert: await Deno.readTextFile(pki.clientCertFile),
      key: await Deno.readTextFile(pki.clientKeyFile),
    };
    for (const identity of [{}, client]) {
      const got = await getThroughBridge(
        {
          server: new URL(`https://127.0.0.1:${silent.addr.port}`),
          ca: pki.caPem,
          connectTimeoutMs: 200,
          ...identity,
        },
        "/version",
      );
      assertEquals(got.status, 502);
      assertMatch(got.body, /relay cannot reach the API server at .*: no answer within 0\.2 s/);
    }
    // The connection the bridge gave up on through node:tls was closed: the server reads its
    // end. (Deno's TLS keeps a socket closed mid-handshake until the server ends it.)
    assertEquals(held.length, 2);
    const buffer = new Uint8Array(4096);
    while ((await held[1].read(buffer)) !== null) { /* the ClientHello */ }
  } finally {
    silent.close();
    held.forEach((conn) => conn.close());
    await accepting.catch(() => {});
  }
});

Deno.test("nodelay bridge: a server certificate its CA did not sign is a 502, with and without a client certificate", async () => {
  const pki = await testPki();
  const other = await makeTestPki();
  const server = startFakeApiServer(pki, () => new Response("should not be reached"));
  try {
    for (
      const client of [{}, {
        cert: await Deno.readTextFile(other.clientCertFile),
        key: await Deno.readTextFile(other.clientKeyFile),
      }]
    ) {
      const got = await getThroughBridge(
        { server: new URL(server.url), ca: other.caPem, ...client },
        "/version",
      );
      assertEquals(got.status, 502);
      assertMatch(got.body, /relay cannot reach the API server/);
    }
    assertEquals(server.seen, []);
  } finally {
    await server.close();
  }
});

Deno.test("nodelay bridge: close() removes its socket", () => {
  const bridge = startNoDelayBridge({ server: new URL("https://127.0.0.1:1") });
  assert(bridge, "no bridge on this platform");
  assert(Deno.statSync(bridge.path).isSocket);
  bridge.close();
  let gone = false;
  try {
    Deno.statSync(bridge.path);
  } catch (error) {
    gone = error instanceof Deno.errors.NotFound;
  }
  assert(gone, `${bridge.path} is still there`);
});

Deno.test("nodelay bridge: waiting for drain leaves no listeners behind, however often it waits", async () => {
  const socket = new EventEmitter();
  for (let i = 0; i < 100; i++) {
    const waited = drainOrClose(socket);
    socket.emit(i % 2 === 0 ? "drain" : "close");
    await waited;
  }
  assertEquals(socket.listenerCount("drain"), 0);
  assertEquals(socket.listenerCount("close"), 0);
});

Deno.test("nodelay bridge: what the API server sends waits in TCP's window, not in the bridge, while the client reads nothing (node:tls)", async () => {
  const pki = await testPki();
  const offered = 256 * 1024 * 1024;
  let pulled = 0;
  const chunk = new Uint8Array(64 * 1024);
  const server = startFakeApiServer(pki, () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          if (pulled >= offered) return controller.close();
          pulled += chunk.length;
          controller.enqueue(chunk);
        },
      }, { highWaterMark: 0 }),
    ));
  const { client, close } = await clientCertBridge(pki, server.url);
  try {
    const response = await fetch(new URL("/stream", server.url), { client });
    // Read nothing, and wait until the server can send no more.
    let last = -1;
    while (pulled !== last && pulled < offered) {
      last = pulled;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    assert(pulled < 64 * 1024 * 1024, `the server sent ${pulled} bytes to a client reading none`);
    await response.body?.cancel();
  } finally {
    close();
    await server.close();
  }
});

Deno.test("nodelay bridge: a 32 MiB upload arrives byte for byte (node:tls, whose read buffers it reuses)", async () => {
  const pki = await testPki();
  const size = 32 * 1024 * 1024;
  // Every byte says where it is, so a lost, repeated or overwritten chunk shows.
  const byteAt = (offset: number) => (offset * 7 + (offset >>> 16)) & 0xff;
  const server = startFakeApiServer(pki, async (request) => {
    let offset = 0;
    let firstBad = -1;
    for await (const chunk of request.body!) {
      for (let i = 0; i < chunk.length && firstBad < 0; i++) {
        if (chunk[i] !== byteAt(offset + i)) firstBad = offset + i;
      }
      offset += chunk.length;
    }
    return Response.json({ received: offset, firstBad });
  });
  const { client, close } = await clientCertBridge(pki, server.url);
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= size) return controller.close();
      const chunk = new Uint8Array(Math.min(100_000, size - sent));
      for (let i = 0; i < chunk.length; i++) chunk[i] = byteAt(sent + i);
      sent += chunk.length;
      controller.enqueue(chunk);
    },
  });
  try {
    const response = await fetch(new URL("/upload", server.url), { method: "POST", body, client });
    assertEquals(await response.json(), { received: size, firstBad: -1 });
  } finally {
    close();
    await server.close();
  }
});
