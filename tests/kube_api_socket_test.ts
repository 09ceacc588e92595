/**
 * Connections to the API server: TCP_NODELAY is on for every kind (read back from the socket
 * with getsockopt), TLS verifies with the kubeconfig's CA and presents its client certificate,
 * an unverifiable server or an unanswered handshake fails clearly, and node:tls keeps its
 * backpressure both ways.
 */
import { createServer, type TLSSocket } from "node:tls";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { type ApiEndpoint, dialApiServer } from "../lib/kube/api_socket.ts";
import { makeTestPki, type TestPki } from "./kube_fixtures.ts";
import { canProbeNoDelay, tcpNoDelay } from "./tcp_nodelay_probe.ts";

let pki: TestPki | undefined;
async function testPki(): Promise<TestPki> {
  return pki ??= await makeTestPki();
}

async function clientCert(pki: TestPki): Promise<{ cert: string; key: string }> {
  return {
    cert: await Deno.readTextFile(pki.clientCertFile),
    key: await Deno.readTextFile(pki.clientKeyFile),
  };
}

/**
 * A node:tls server that asks for a client certificate; `onSocket` gets each connection once
 * its handshake is done.
 */
function startMutualTlsServer(
  pki: TestPki,
  onSocket: (socket: TLSSocket) => void,
): Promise<{ port: number; close(): void }> {
  const sockets: TLSSocket[] = [];
  const server = createServer(
    { cert: pki.certPem, key: pki.keyPem, ca: pki.caPem, requestCert: true },
    (socket) => {
      sockets.push(socket);
      onSocket(socket);
    },
  );
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as { port: number }).port,
        close() {
          sockets.forEach((socket) => socket.destroy());
          server.close();
        },
      });
    });
  });
}

Deno.test({
  name:
    "api socket: TCP_NODELAY is on over plain TCP, Deno's TLS and node:tls (and off where Deno sets nothing)",
  ignore: !canProbeNoDelay,
  async fn() {
    const pki = await testPki();
    const seen: number[] = [];
    const plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const tls = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: pki.certPem,
      key: pki.keyPem,
    });
    const accepted: Deno.Conn[] = [];
    const accept = async (listener: Deno.Listener) => {
      for await (const conn of listener) {
        accepted.push(conn);
        seen.push((conn.remoteAddr as Deno.NetAddr).port);
      }
    };
    const accepting = [accept(plain), accept(tls)];
    const mutual = await startMutualTlsServer(pki, (socket) => seen.push(socket.remotePort!));
    /** The NODELAY of the connection `endpoint` makes, probed from the server's view of it. */
    const noDelayOf = async (endpoint: ApiEndpoint, serverPort: number) => {
      const before = seen.length;
      const transport = await dialApiServer(endpoint);
      while (seen.length === before) await new Promise((resolve) => setTimeout(resolve, 5));
      const value = tcpNoDelay(seen[before], serverPort);
      transport.close();
      return value;
    };
    try {
      const url = (port: number, scheme = "https") => new URL(`${scheme}://127.0.0.1:${port}`);
      assertEquals(
        await noDelayOf({ server: url(plain.addr.port, "http"), tls: {} }, plain.addr.port),
        true,
      );
      assertEquals(
        await noDelayOf({ server: url(tls.addr.port), tls: { ca: pki.caPem } }, tls.addr.port),
        true,
      );
      assertEquals(
        await noDelayOf(
          { server: url(mutual.port), tls: { ca: pki.caPem, ...await clientCert(pki) } },
          mutual.port,
        ),
        true,
      );
      // The control: Deno.connectTls leaves Nagle's algorithm on, and the probe sees it.
      const before = seen.length;
      const nagle = await Deno.connectTls({ port: tls.addr.port, caCerts: [pki.caPem] });
      await nagle.handshake();
      while (seen.length === before) await new Promise((resolve) => setTimeout(resolve, 5));
      assertEquals(tcpNoDelay(seen[before], tls.addr.port), false);
      nagle.close();
    } finally {
      plain.close();
      tls.close();
      mutual.close();
      accepted.forEach((conn) => conn.close());
      await Promise.allSettled(accepting);
    }
  },
});

Deno.test("api socket: node:tls presents the kubeconfig's client certificate, verified by the server", async () => {
  const pki = await testPki();
  const server = await startMutualTlsServer(pki, (socket) => {
    socket.end(`${socket.authorized} ${socket.getPeerCertificate().subject?.CN}`);
  });
  try {
    const transport = await dialApiServer({
      server: new URL(`https://127.0.0.1:${server.port}`),
      tls: { ca: pki.caPem, ...await clientCert(pki) },
    });
    let text = "";
    for (let chunk = await transport.read(); chunk; chunk = await transport.read()) {
      text += new TextDecoder().decode(chunk);
    }
    assertEquals(text, "true relay-test");
    transport.close();
  } finally {
    server.close();
  }
});

Deno.test("api socket: a server certificate the kubeconfig's CA did not sign fails, with and without a client certificate", async () => {
  const pki = await testPki();
  const other = await makeTestPki();
  const server = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: pki.certPem,
    key: pki.keyPem,
  });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of server) {
      held.push(conn);
      (conn as Deno.TlsConn).handshake().catch(() => {});
    }
  })();
  try {
    for (const identity of [{}, await clientCert(other)]) {
      await assertRejects(
        () =>
          dialApiServer({
            server: new URL(`https://127.0.0.1:${server.addr.port}`),
            tls: { ca: other.caPem, ...identity },
          }),
        Error,
      );
    }
  } finally {
    server.close();
    held.forEach((conn) => conn.close());
    await accepting.catch(() => {});
  }
});

Deno.test("api socket: a TLS handshake never answered is given up when the signal aborts", async () => {
  const pki = await testPki();
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  try {
    for (const identity of [{}, await clientCert(pki)]) {
      const giveUp = new AbortController();
      const before = held.length;
      const dial = dialApiServer(
        {
          server: new URL(`https://127.0.0.1:${silent.addr.port}`),
          tls: { ca: pki.caPem, ...identity },
        },
        giveUp.signal,
      );
      while (held.length === before) await new Promise((resolve) => setTimeout(resolve, 5));
      giveUp.abort(new Error("gave up"));
      await assertRejects(() => dial, Error, "gave up");
    }
    // node:tls closed its socket: the server reads the ClientHello, then the end. (Deno's TLS
    // keeps a socket closed mid-handshake until the server ends it.)
    const buffer = new Uint8Array(4096);
    while ((await held[1].read(buffer)) !== null) { /* the ClientHello */ }
  } finally {
    silent.close();
    held.forEach((conn) => conn.close());
    await accepting.catch(() => {});
  }
});

Deno.test("api socket: what a server sends over node:tls waits in TCP's window while nothing reads it", async () => {
  const pki = await testPki();
  const offered = 256 * 1024 * 1024;
  let pulled = 0;
  const chunk = new Uint8Array(64 * 1024);
  const server = await startMutualTlsServer(pki, (socket) => {
    const push = () => {
      while (pulled < offered) {
        pulled += chunk.length;
        if (!socket.write(chunk)) return void socket.once("drain", push);
      }
    };
    push();
  });
  try {
    const transport = await dialApiServer({
      server: new URL(`https://127.0.0.1:${server.port}`),
      tls: { ca: pki.caPem, ...await clientCert(pki) },
    });
    // Read nothing, and wait until the server can send no more.
    let last = -1;
    while (pulled !== last && pulled < offered) {
      last = pulled;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    assert(pulled < 64 * 1024 * 1024, `the server sent ${pulled} bytes to a client reading none`);
    // Reading resumes it.
    let read = 0;
    while (read < 16 * 1024 * 1024) read += (await transport.read())!.length;
    transport.close();
  } finally {
    server.close();
  }
});

Deno.test("api socket: 32 MiB written over node:tls arrive byte for byte", async () => {
  const pki = await testPki();
  const size = 32 * 1024 * 1024;
  // Every byte says where it is, so a lost, repeated or overwritten chunk shows.
  const byteAt = (offset: number) => (offset * 7 + (offset >>> 16)) & 0xff;
  const result = Promise.withResolvers<{ received: number; firstBad: number }>();
  const server = await startMutualTlsServer(pki, (socket) => {
    let received = 0;
    let firstBad = -1;
    socket.on("data", (chunk: Uint8Array) => {
      for (let i = 0; i < chunk.length && firstBad < 0; i++) {
        if (chunk[i] !== byteAt(received + i)) firstBad = received + i;
      }
      received += chunk.length;
      if (received >= size) result.resolve({ received, firstBad });
    });
  });
  try {
    const transport = await dialApiServer({
      server: new URL(`https://127.0.0.1:${server.port}`),
      tls: { ca: pki.caPem, ...await clientCert(pki) },
    });
    // One buffer, refilled after each write resolves, as the WebSocket's encoder does.
    const buffer = new Uint8Array(100_000);
    for (let sent = 0; sent < size;) {
      const n = Math.min(buffer.length, size - sent);
      for (let i = 0; i < n; i++) buffer[i] = byteAt(sent + i);
      await transport.write(buffer.subarray(0, n));
      sent += n;
    }
    assertEquals(await result.promise, { received: size, firstBad: -1 });
    transport.close();
  } finally {
    server.close();
  }
});
