import { assert, assertEquals, assertRejects } from "./assert.ts";
import { dialPortForward, PORT_FORWARD_PROTOCOL, portForwardUrl } from "../lib/kube/portforward.ts";
import { loadKube } from "../lib/kube/config.ts";
import { KubeError } from "../lib/kube/errors.ts";
import { UsageError } from "../lib/errors.ts";
import type { Duplex } from "../lib/net/types.ts";
import {
  type FakeApiServer,
  kubeconfigYaml,
  makeTestPki,
  startFakeApiServer,
  type TestPki,
  writeTempFile,
} from "./kube_fixtures.ts";
import { canProbeNoDelay, tcpNoDelay } from "./tcp_nodelay_probe.ts";

/**
 * A fake kubelet behind a fake API server: announces the port on both channels (the data
 * announcement split across two messages on pod "split", to exercise reassembly), then echoes
 * data. Pod "broken" answers on the error channel; "forbidden" and "missing" fail the upgrade.
 */
function fakePortForward(request: Request): Response {
  const url = new URL(request.url);
  const [, , , , namespace, , pod] = url.pathname.split("/");
  if (namespace === "forbidden") {
    return Response.json({ kind: "Status", message: "pods/portforward is forbidden", code: 403 }, {
      status: 403,
    });
  }
  if (pod === "missing") {
    return Response.json({ kind: "Status", message: `pods "missing" not found`, code: 404 }, {
      status: 404,
    });
  }
  const port = Number(url.searchParams.get("ports"));
  const { socket, response } = Deno.upgradeWebSocket(request, { protocol: PORT_FORWARD_PROTOCOL });
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    if (pod === "split") {
      socket.send(new Uint8Array([0, port & 0xff]));
      socket.send(new Uint8Array([0, port >> 8, 0x68, 0x69]));
    } else {
      socket.send(new Uint8Array([0, port & 0xff, port >> 8]));
    }
    socket.send(new Uint8Array([1, port & 0xff, port >> 8]));
    if (pod === "broken") {
      socket.send(
        new Uint8Array([1, ...new TextEncoder().encode("connect: connection refused")]),
      );
    }
  };
  socket.onmessage = (event) => {
    const bytes = new Uint8Array(event.data as ArrayBuffer);
    if (bytes[0] === 0) socket.send(bytes); // echo on the data channel, framing intact
  };
  return response;
}

/**
 * A fake API server and a kubeconfig for it: by default a token user; `user` replaces the
 * user's body (given the PKI, for a client certificate), `clusterExtra` adds to the cluster.
 */
async function setup(
  options: { user?: (pki: TestPki) => string; clusterExtra?: (server: string) => string } = {},
): Promise<{ server: FakeApiServer; kube: ReturnType<typeof loadKube> }> {
  const pki = await makeTestPki();
  const server = startFakeApiServer(pki, fakePortForward);
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: server.url,
      caFile: pki.caFile,
      clusterExtra: options.clusterExtra?.(server.url),
      users: { u: options.user?.(pki) ?? "token: pf-token" },
      contexts: { a: { user: "u" } },
      current: "a",
    }),
  );
  return { server, kube: loadKube({ kubeconfig: file, as: "bob", asGroups: ["ops"] }) };
}

async function readAll(readable: ReadableStream<Uint8Array>, bytes: number): Promise<Uint8Array> {
  const out = new Uint8Array(bytes);
  let got = 0;
  const reader = readable.getReader();
  while (got < bytes) {
    const { value, done } = await reader.read();
    if (done) break;
    out.set(value, got);
    got += value.length;
  }
  reader.releaseLock();
  assertEquals(got, bytes, "bytes read");
  return out;
}

Deno.test("portForwardUrl keeps the server's path prefix and switches to wss", () => {
  const url = portForwardUrl(new URL("https://h:6443/k8s/"), {
    namespace: "n",
    pod: "p",
    port: 80,
  });
  assertEquals(url.href, "wss://h:6443/k8s/api/v1/namespaces/n/pods/p/portforward?ports=80");
});

Deno.test("dialPortForward: framing, headers, large messages and close", async () => {
  const { server, kube } = await setup();
  try {
    const duplex = await dialPortForward(kube, { namespace: "ns1", pod: "split", port: 4646 });
    const seen = server.seen.at(-1)!;
    assertEquals(seen.url.pathname, "/api/v1/namespaces/ns1/pods/split/portforward");
    assertEquals(seen.headers.get("authorization"), "Bearer pf-token");
    assertEquals(seen.headers.get("impersonate-user"), "bob");
    assertEquals(seen.headers.get("impersonate-group"), "ops");
    assertEquals(seen.headers.get("sec-websocket-protocol"), PORT_FORWARD_PROTOCOL);

    // Data that followed the split port announcement arrives; the prefix does not.
    assertEquals(new TextDecoder().decode(await readAll(duplex.readable, 2)), "hi");

    const big = new Uint8Array(65537 * 3);
    for (let i = 0; i < big.length; i++) big[i] = i % 251;
    const writer = duplex.writable.getWriter();
    const echoed = readAll(duplex.readable, big.length);
    await writer.write(big.subarray(0, 65537));
    await writer.write(big.subarray(65537));
    assertEquals(await echoed, big);

    // A chunk with room for the channel byte in front goes out in place, bytes unchanged.
    assertEquals(duplex.headroom?.bytes, 1);
    const roomy = new Uint8Array(new ArrayBuffer(1001), 1, 1000);
    roomy.fill(7);
    const echoedRoomy = readAll(duplex.readable, 1000);
    await duplex.headroom!.write(roomy);
    assertEquals(await echoedRoomy, new Uint8Array(1000).fill(7));

    await writer.close();
    const reader = duplex.readable.getReader();
    assertEquals((await reader.read()).done, true, "readable ends after close");
  } finally {
    kube.close();
    await server.close();
  }
});

Deno.test("dialPortForward: error channel text fails the readable", async () => {
  const { server, kube } = await setup();
  try {
    const duplex = await dialPortForward(kube, { namespace: "ns1", pod: "broken", port: 80 });
    const error = await assertRejects(() => duplex.readable.getReader().read(), KubeError);
    assert(error.message.includes("connection refused"), error.message);
    assert(error.message.includes("pod/broken"), error.message);
  } finally {
    kube.close();
    await server.close();
  }
});

Deno.test("dialPortForward: 403 names the permission, 404 is a usage error", async () => {
  const { server, kube } = await setup();
  try {
    await assertRejects(
      () => dialPortForward(kube, { namespace: "forbidden", pod: "p", port: 80 }),
      KubeError,
      "cannot create/get pods/portforward in namespace forbidden",
    );
    await assertRejects(
      () => dialPortForward(kube, { namespace: "ns1", pod: "missing", port: 80 }),
      UsageError,
      "pod missing not found in namespace ns1",
    );
  } finally {
    kube.close();
    await server.close();
  }
});

Deno.test("dialPortForward: an unreachable API server is one clear error", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close(); // nothing listens there any more
  const kube = {
    rawConnection: () =>
      Promise.resolve({
        server: new URL(`http://127.0.0.1:${port}`),
        headers: new Headers(),
        client: Deno.createHttpClient({}),
        tls: {},
      }),
  };
  const error = await assertRejects(
    () => dialPortForward(kube, { namespace: "n", pod: "p", port: 1 }),
    KubeError,
    "cannot reach the API server",
  );
  assert(!error.message.includes("\n"));
});

Deno.test("dialPortForward: an upgrade never answered is given up when its signal aborts, and its socket closed", async () => {
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  const client = Deno.createHttpClient({});
  const kube = {
    rawConnection: () =>
      Promise.resolve({
        server: new URL(`http://127.0.0.1:${silent.addr.port}`),
        headers: new Headers(),
        client,
        tls: {},
      }),
  };
  try {
    const giveUp = new AbortController();
    const dial = dialPortForward(kube, { namespace: "n", pod: "p", port: 1 }, {
      signal: giveUp.signal,
    });
    while (held.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    giveUp.abort(new Error("port-forward timed out"));
    await assertRejects(() => dial, Error, "port-forward timed out");
    // The server sees the request, then the end of the connection.
    const buffer = new Uint8Array(4096);
    while ((await held[0].read(buffer)) !== null) { /* the upgrade request */ }
  } finally {
    client.close();
    silent.close();
    held.forEach((conn) => conn.close());
    await accepting.catch(() => {});
  }
});

/** Sends `text` and reads its echo back through a port-forward. */
async function echoes(duplex: Duplex, text: string): Promise<string> {
  const echoed = readAll(duplex.readable, new TextEncoder().encode(text).length);
  const writer = duplex.writable.getWriter();
  await writer.write(new TextEncoder().encode(text));
  writer.releaseLock();
  return new TextDecoder().decode(await echoed);
}

const withClientCert = (pki: TestPki) =>
  `client-certificate: ${pki.clientCertFile}\nclient-key: ${pki.clientKeyFile}`;

Deno.test({
  name:
    "dialPortForward: the connection to the API server has TCP_NODELAY, with a token (Deno's TLS) and a client certificate (node:tls)",
  ignore: !canProbeNoDelay,
  async fn() {
    for (const user of [undefined, withClientCert]) {
      const { server, kube } = await setup({ user });
      try {
        const duplex = await dialPortForward(kube, { namespace: "ns1", pod: "p", port: 80 });
        assertEquals(await echoes(duplex, "nodelay"), "nodelay");
        const serverPort = Number(new URL(server.url).port);
        assertEquals(tcpNoDelay(server.seen.at(-1)!.clientPort, serverPort), true);
        await duplex.writable.close();
      } finally {
        kube.close();
        await server.close();
      }
    }
  },
});

/**
 * An HTTP proxy that only knows CONNECT, as a kubeconfig's proxy-url may name; `tunnels`
 * counts what it carried.
 */
function startConnectProxy(): { url: string; tunnels: string[]; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const tunnels: string[] = [];
  const conns: Deno.Conn[] = [];
  void (async () => {
    for await (const client of listener) {
      conns.push(client);
      void (async () => {
        const buffer = new Uint8Array(16 * 1024);
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await client.read(buffer);
          if (n === null) return;
          head += new TextDecoder().decode(buffer.subarray(0, n));
        }
        const [, host, port] = /^CONNECT ([^ :]+):(\d+) /.exec(head) ?? [];
        tunnels.push(`${host}:${port}`);
        const upstream = await Deno.connect({ hostname: host, port: Number(port) });
        conns.push(upstream);
        await client.write(new TextEncoder().encode("HTTP/1.1 200 Connection established\r\n\r\n"));
        await Promise.allSettled([
          client.readable.pipeTo(upstream.writable),
          upstream.readable.pipeTo(client.writable),
        ]);
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    tunnels,
    close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // already closed by its pipe
        }
      }
    },
  };
}

Deno.test("dialPortForward: through a kubeconfig's proxy-url, with Deno's WebSocket: framing and refusals", async () => {
  const proxy = startConnectProxy();
  const { server, kube } = await setup({ clusterExtra: () => `    proxy-url: ${proxy.url}` });
  try {
    const duplex = await dialPortForward(kube, { namespace: "ns1", pod: "split", port: 4646 });
    assertEquals(new TextDecoder().decode(await readAll(duplex.readable, 2)), "hi");
    assertEquals(await echoes(duplex, "proxied"), "proxied");
    assertEquals(proxy.tunnels, [`127.0.0.1:${new URL(server.url).port}`]);
    await assertRejects(
      () => dialPortForward(kube, { namespace: "ns1", pod: "missing", port: 80 }),
      UsageError,
      "pod missing not found in namespace ns1",
    );
    await duplex.writable.close();
  } finally {
    kube.close();
    await server.close();
    proxy.close();
  }
});
