/**
 * SpareConnections (lib/kube/spare_connection.ts) with a fake dialer, and dialPortForward
 * upgrading on a spare against a fake API server.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import type { ApiEndpoint } from "../lib/kube/api_socket.ts";
import { SpareConnections, type SpareDialer } from "../lib/kube/spare_connection.ts";
import { type ByteTransport, connTransport } from "../lib/kube/websocket_client.ts";
import { dialPortForward, PORT_FORWARD_PROTOCOL } from "../lib/kube/portforward.ts";
import { loadKube } from "../lib/kube/config.ts";
import {
  kubeconfigYaml,
  makeTestPki,
  type SeenRequest,
  startFakeApiServer,
  type TestPki,
  writeTempFile,
} from "./kube_fixtures.ts";

const ENDPOINT: ApiEndpoint = { server: new URL("https://api.example:6443"), tls: { ca: "CA" } };

/** A transport that only records being closed. */
class FakeTransport implements ByteTransport {
  closed = false;
  constructor(readonly n: number) {}
  read(): Promise<Uint8Array | null> {
    return Promise.resolve(null);
  }
  write(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
}

/** A dialer whose dials the test settles, in order. */
class FakeDialer {
  readonly dials: Array<{
    endpoint: ApiEndpoint;
    signal: AbortSignal;
    resolve: (t: FakeTransport) => void;
    reject: (e: Error) => void;
  }> = [];
  readonly dial = (endpoint: ApiEndpoint, signal: AbortSignal) =>
    new Promise<ByteTransport>((resolve, reject) =>
      this.dials.push({ endpoint, signal, resolve, reject })
    );
  /** Settles dial `i` with a new transport and returns it. */
  connect(i: number): FakeTransport {
    const transport = new FakeTransport(i);
    this.dials[i].resolve(transport);
    return transport;
  }
}

/** Lets promise reactions and zero-delay timers run. */
function settle(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `test` with spares over a fake dialer (to ENDPOINT unless told), closing them after. */
async function withSpares(
  test: (spares: SpareConnections, dialer: FakeDialer) => Promise<void>,
  options: { endpoint?: ApiEndpoint | "none"; maxAgeMs?: number } = {},
): Promise<void> {
  const dialer = new FakeDialer();
  const endpoint = options.endpoint === "none" ? undefined : options.endpoint ?? ENDPOINT;
  const spares = new SpareConnections(() => Promise.resolve(endpoint), dialer.dial, {
    maxAgeMs: options.maxAgeMs,
  });
  try {
    await test(spares, dialer);
  } finally {
    spares.close();
  }
}

Deno.test("SpareConnections: refill dials that many, take gives the oldest and dials its replacement", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(2);
    await settle();
    assertEquals(dialer.dials.length, 2);
    const first = dialer.connect(0);
    dialer.connect(1);
    assert((await spares.take(ENDPOINT)) === first, "the oldest spare is taken first");
    await settle();
    assertEquals(dialer.dials.length, 3, "a taken spare is replaced while refilling");
    assertEquals(spares.count, 2);
    spares.stopRefilling();
    assertEquals((await spares.take(ENDPOINT) as FakeTransport).n, 1);
    await settle();
    assertEquals(dialer.dials.length, 3, "no replacement once refilling stopped");
    assertEquals(spares.count, 1, "the spare being dialed stays");
  }));

Deno.test("SpareConnections: take waits for a spare still being dialed", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(1);
    await settle();
    const taking = spares.take(ENDPOINT);
    const transport = dialer.connect(0);
    assert((await taking) === transport);
  }));

Deno.test("SpareConnections: a spare for other TLS material is closed, not given; none at all is undefined", () =>
  withSpares(async (spares, dialer) => {
    assertEquals(await spares.take(ENDPOINT), undefined, "no spare: the caller dials");
    spares.refill(1);
    await settle();
    const stale = dialer.connect(0);
    const rotated = { ...ENDPOINT, tls: { ca: "CA", cert: "new", key: "new" } };
    assertEquals(await spares.take(rotated), undefined);
    assert(stale.closed, "the spare made with the old material is closed");
  }));

Deno.test("SpareConnections: a failed dial leaves no spare, and take then says none", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(1);
    await settle();
    dialer.dials[0].reject(new Error("connection refused"));
    await settle();
    assertEquals(spares.count, 0);
    spares.stopRefilling();
    assertEquals(await spares.take(ENDPOINT), undefined);
  }));

Deno.test("SpareConnections: no spare where the endpoint says none can be used (a kubeconfig proxy)", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(2);
    await settle();
    assertEquals(dialer.dials.length, 0);
    assertEquals(spares.count, 0);
  }, { endpoint: "none" }));

Deno.test("SpareConnections: a spare older than its maximum age is closed unused", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(1);
    spares.stopRefilling();
    await settle();
    const transport = dialer.connect(0);
    await settle(80);
    assert(transport.closed, "the old spare is closed");
    assertEquals(spares.count, 0);
    assertEquals(await spares.take(ENDPOINT), undefined);
  }, { maxAgeMs: 30 }));

Deno.test("SpareConnections: close closes every spare, aborts dials under way and dials no more", async () => {
  const dialer = new FakeDialer();
  const spares = new SpareConnections(() => Promise.resolve(ENDPOINT), dialer.dial);
  spares.refill(2);
  await settle();
  const dialed = dialer.connect(0);
  spares.close();
  await settle();
  assert(dialed.closed);
  assert(dialer.dials[1].signal.aborted, "the dial under way is told to give up");
  const late = dialer.connect(1);
  await settle();
  assert(late.closed, "a dial that completes after close is closed");
  spares.refill(2);
  await settle();
  assertEquals(dialer.dials.length, 2);
});

Deno.test("SpareConnections: a take whose signal aborts rejects with its reason and closes the spare", () =>
  withSpares(async (spares, dialer) => {
    spares.refill(1);
    spares.stopRefilling();
    await settle();
    const abort = new AbortController();
    const taking = spares.take(ENDPOINT, abort.signal);
    abort.abort(new Error("deadline"));
    await assertRejects(() => taking, Error, "deadline");
    const late = dialer.connect(0);
    await settle();
    assert(late.closed);
  }));

// ----- dialPortForward on a spare ------------------------------------------------------------

/** A fake API server answering every port-forward with an upgrade that echoes data. */
async function portForwardServer() {
  const pki = await makeTestPki();
  const server = startFakeApiServer(pki, (request) => {
    const port = Number(new URL(request.url).searchParams.get("ports"));
    const { socket, response } = Deno.upgradeWebSocket(request, {
      protocol: PORT_FORWARD_PROTOCOL,
    });
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      socket.send(new Uint8Array([0, port & 0xff, port >> 8]));
      socket.send(new Uint8Array([1, port & 0xff, port >> 8]));
    };
    socket.onmessage = (event) => socket.send(event.data as ArrayBuffer);
    return response;
  });
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: server.url,
      caFile: pki.caFile,
      users: { u: "token: pf-token" },
      contexts: { a: { user: "u" } },
      current: "a",
    }),
  );
  return { server, pki, kube: loadKube({ kubeconfig: file }) };
}

/** dialPortForward with one spare from `dial`; returns the requests the server saw. */
async function portForwardOnSpare(
  dial: (pki: TestPki) => SpareDialer,
): Promise<SeenRequest[]> {
  const { server, pki, kube } = await portForwardServer();
  const spares = new SpareConnections(() => kube.rawConnection(), dial(pki));
  try {
    spares.refill(1);
    spares.stopRefilling();
    const duplex = await dialPortForward(
      { rawConnection: () => kube.rawConnection(), spares },
      { namespace: "ns", pod: "p", port: 4646 },
    );
    await duplex.readable.cancel();
    return [...server.seen];
  } finally {
    spares.close();
    kube.close();
    await server.close();
  }
}

Deno.test("dialPortForward: upgrades on the spare connection when there is one", async () => {
  const ports: number[] = [];
  // Dials as relay's token path does, noting which local port each spare has.
  const seen = await portForwardOnSpare((pki) => async (endpoint) => {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: Number(endpoint.server.port) });
    ports.push(tcp.localAddr.port);
    const tls = await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [pki.caPem] });
    await tls.handshake();
    return connTransport(tls);
  });
  assertEquals(ports.length, 1);
  assertEquals(seen.length, 1);
  assertEquals(seen[0].clientPort, ports[0], "the upgrade came on the spare");
});

Deno.test("dialPortForward: a spare the server closed before the upgrade is replaced by a new connection", async () => {
  const dead = new FakeTransport(0);
  const seen = await portForwardOnSpare(() => () => Promise.resolve(dead));
  assert(dead.closed, "the dead spare is let go");
  assertEquals(seen.length, 1, "the upgrade went on a new connection");
});
