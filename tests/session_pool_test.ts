/**
 * TunnelPool (lib/session/pool.ts) against in-memory tunnels: real client/agent sessions over
 * duplexPair where the wire matters, and hand-driven fake tunnels where a test must decide when
 * a connect settles or a tunnel closes. No cluster, no sockets.
 */
import { type IncomingMode, tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals, assertRejects, within } from "./assert.ts";
import { TunnelPool } from "../lib/session/pool.ts";
import {
  acceptTunnel,
  connectTunnel,
  HandshakeError,
  type OpenHandler,
  type OpenRequest,
  openTunnel,
  type Tunnel,
  type TunnelStream,
} from "../lib/tunnel/mod.ts";
import { duplexPair } from "../lib/net/mod.ts";

const TOKEN = "t";
const TOKEN_DIGEST = await tokenDigest(TOKEN);
const REQUEST: OpenRequest = { protocol: "tcp", host: "echo", port: 7 };

// ----- helpers ----------------------------------------------------------------------------

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Waits until `check()` holds, looking again every few ms; fails the test after `ms`. */
async function eventually(check: () => boolean, what: string, ms = 5_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`${what}: did not happen within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Lets every callback already due run (promise reactions and zero-delay timers). */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * A tunnel driven by hand: `drop` closes it as the far end or a keep-alive would (with a
 * `closeReason`, or none), `streamCount` is set by the test, and `open` records its requests.
 */
class FakeTunnel implements Tunnel {
  streamCount = 0;
  closeReason: string | null = null;
  /** Set by the test: the tunnel is going away and takes no new streams. */
  draining = false;
  get accepting(): boolean {
    return this.closeReason === null && !this.draining;
  }
  /** What the pool passed to close(), if it closed the tunnel. */
  closedBy: string | undefined;
  readonly opens: OpenRequest[] = [];
  readonly closed: Promise<void>;
  readonly handshake: Promise<void>;
  #resolveClosed!: () => void;
  readonly #answer = deferred<void>();

  /** With `answered: false` the agent's answer waits for {@link answer}. */
  constructor(
    readonly name: string,
    readonly peerVersion = "fake-1",
    { answered = true } = {},
  ) {
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.handshake = this.#answer.promise;
    this.handshake.catch(() => {});
    if (answered) this.#answer.resolve();
  }

  /** The agent's answer to HELLO: accepted, or refused, which closes the tunnel as a Session does. */
  answer(refusal?: HandshakeError): void {
    if (!refusal) return this.#answer.resolve();
    this.#answer.reject(refusal);
    this.drop(refusal.message);
  }

  open(request: OpenRequest): Promise<TunnelStream> {
    this.opens.push(request);
    this.streamCount++;
    return Promise.resolve({ id: this.opens.length, request } as unknown as TunnelStream);
  }

  listen(): Promise<IncomingMode> {
    return Promise.resolve("listen");
  }

  endSession(): Promise<void> {
    return Promise.resolve();
  }

  ping(): Promise<number> {
    return Promise.resolve(0);
  }

  goAway(): Promise<void> {
    this.close("went away");
    return this.closed;
  }

  close(reason = "closed"): void {
    this.closedBy ??= reason;
    this.drop(reason);
  }

  /** Closes the tunnel from outside the pool, leaving `reason` in `closeReason`. */
  drop(reason: string | null): void {
    if (this.closeReason !== null) return;
    this.closeReason = reason;
    this.#resolveClosed();
  }
}

/** A `connect` whose every call waits until the test resolves or rejects it. */
class Dialer {
  readonly calls: Deferred<Tunnel>[] = [];

  readonly connect = (): Promise<Tunnel> => {
    const call = deferred<Tunnel>();
    this.calls.push(call);
    return call.promise;
  };

  /** The `n`th call to connect (0-based), once it has been made. */
  async call(n: number): Promise<Deferred<Tunnel>> {
    await eventually(() => this.calls.length > n, `connect call #${n + 1}`);
    return this.calls[n];
  }
}

/** The far end of an echo server: what is written comes back. */
const echo: OpenHandler = () => Promise.resolve(new TransformStream<Uint8Array, Uint8Array>());

/** An agent reached over in-memory pairs: each connect is a real handshake and session. */
class InMemoryAgent {
  readonly clientSide: Tunnel[] = [];
  readonly agentSide: Tunnel[] = [];

  constructor(readonly version = "9.9.9-agent") {}

  readonly connect = async (): Promise<Tunnel> => {
    const [a, b] = duplexPair();
    const [client, agent] = await Promise.all([
      connectTunnel(a, { token: TOKEN, keepAliveMs: 0 }),
      acceptTunnel(b, {
        tokenDigest: TOKEN_DIGEST,
        keepAliveMs: 0,
        onOpen: echo,
        version: this.version,
      }),
    ]);
    this.clientSide.push(client);
    this.agentSide.push(agent);
    return client;
  };

  /** Closes both ends of every tunnel made and waits until they are closed. */
  async shutdown(): Promise<void> {
    const all = [...this.clientSide, ...this.agentSide];
    for (const t of all) t.close("test over");
    await within(Promise.all(all.map((t) => t.closed)), "every tunnel closes");
  }
}

/** A pool over a Dialer whose first tunnel is up; `joined` and `logged` record the callbacks. */
async function startedPool(
  size: number,
  extra: { waitMs?: number } = {},
): Promise<{
  pool: TunnelPool;
  dialer: Dialer;
  first: FakeTunnel;
  joined: Tunnel[];
  logged: string[];
}> {
  const dialer = new Dialer();
  const joined: Tunnel[] = [];
  const logged: string[] = [];
  const pool = new TunnelPool({
    size,
    connect: dialer.connect,
    log: (line) => logged.push(line),
    onTunnel: (t) => joined.push(t),
    ...extra,
  });
  const starting = pool.start(10_000);
  const first = new FakeTunnel("first");
  (await dialer.call(0)).resolve(first);
  await within(starting, "start");
  return { pool, dialer, first, joined, logged };
}

// ----- start ------------------------------------------------------------------------------

Deno.test("TunnelPool: start retries connect until the first tunnel is up", async () => {
  const agent = new InMemoryAgent();
  let calls = 0;
  const joined: Tunnel[] = [];
  const pool = new TunnelPool({
    size: 1,
    connect: () => {
      calls++;
      if (calls < 3) return Promise.reject(new Error(`agent not listening yet (${calls})`));
      return agent.connect();
    },
    onTunnel: (t) => joined.push(t),
  });
  await within(pool.start(10_000), "start");
  assertEquals(calls, 3);
  assertEquals(pool.size, 1);
  assertEquals(joined.length, 1);
  assert(joined[0] === agent.clientSide[0], "onTunnel is told of the first tunnel");
  pool.close();
  await agent.shutdown();
});

Deno.test("TunnelPool: start fails after its deadline with the last connect error", async () => {
  const thrown: Error[] = [];
  const pool = new TunnelPool({
    size: 2,
    connect: () => {
      const error = new Error(`connection refused (attempt ${thrown.length + 1})`);
      thrown.push(error);
      return Promise.reject(error);
    },
  });
  const error = await within(
    assertRejects(() => pool.start(400), Error, "connection refused"),
    "start gives up",
  );
  assert(thrown.length >= 2, `start retried before its deadline (${thrown.length} attempts)`);
  assert(error === thrown.at(-1), `start rejects with the last error, got: ${error.message}`);
  assertEquals(pool.size, 0);
  // Nothing keeps dialing after start gave up.
  const attempts = thrown.length;
  await settle();
  assertEquals(thrown.length, attempts);
  pool.close();
});

Deno.test("TunnelPool: start with no time left fails on the first error without retrying", async () => {
  let calls = 0;
  const refused = new Error("connection refused");
  const pool = new TunnelPool({
    size: 1,
    connect: () => {
      calls++;
      return Promise.reject(refused);
    },
  });
  const error = await within(assertRejects(() => pool.start(0), Error), "start gives up");
  assert(error === refused);
  assertEquals(calls, 1);
  pool.close();
});

Deno.test("TunnelPool: start fails at once when the agent answered no (another version, the wrong token)", async () => {
  for (const code of ["version", "token"] as const) {
    let calls = 0;
    const answered = new HandshakeError(code, `refused: ${code}`);
    const pool = new TunnelPool({
      size: 2,
      connect: () => {
        calls++;
        return Promise.reject(answered);
      },
    });
    const error = await within(
      assertRejects(() => pool.start(60_000), HandshakeError),
      `start gives up on ${code}`,
    );
    assert(error === answered);
    assertEquals(calls, 1, `${code}: another try gets the same answer`);
    pool.close();
  }
});

Deno.test("TunnelPool: start stops retrying once the pool is closed", async () => {
  let calls = 0;
  const refused = new Error("connection refused");
  const pool = new TunnelPool({
    size: 1,
    connect: () => {
      calls++;
      pool.close(); // the user stops relay while the first tunnel is being dialed
      return Promise.reject(refused);
    },
  });
  const error = await within(
    assertRejects(() => pool.start(60_000), Error),
    "start gives up once closed",
  );
  assert(error === refused);
  assertEquals(calls, 1);
  assert(pool.stopped);
});

// ----- filling and choosing ---------------------------------------------------------------

Deno.test("TunnelPool: start returns after the first tunnel and fills the pool to size in the background", async () => {
  const { pool, dialer, first, joined } = await startedPool(3);
  assertEquals(pool.size, 1, "start returns with only the first tunnel up");
  const [second, third] = await Promise.all([dialer.call(1), dialer.call(2)]);
  const t2 = new FakeTunnel("second");
  const t3 = new FakeTunnel("third");
  second.resolve(t2);
  third.resolve(t3);
  await eventually(() => pool.size === 3, "the pool fills to 3");
  assertEquals(joined.map((t) => (t as FakeTunnel).name), ["first", "second", "third"]);
  await settle();
  assertEquals(dialer.calls.length, 3, "no more connects than the pool's size");
  pool.close();
  for (const t of [first, t2, t3]) assertEquals(t.closedBy, "relay is stopping", t.name);
});

Deno.test("TunnelPool: a pool of real tunnels fills to size and spreads streams over them", async () => {
  const agent = new InMemoryAgent();
  const pool = new TunnelPool({ size: 3, connect: agent.connect });
  await within(pool.start(10_000), "start");
  await eventually(() => pool.size === 3, "the pool fills to 3");
  assertEquals(agent.clientSide.length, 3);
  const streams = [];
  for (let i = 0; i < 3; i++) streams.push(await within(pool.open(REQUEST), `open #${i + 1}`));
  assertEquals(agent.clientSide.map((t) => t.streamCount), [1, 1, 1]);
  // The streams work: bytes written come back from the echo at the agent's end.
  const writer = streams[2].writable.getWriter();
  const reader = streams[2].readable.getReader();
  await writer.write(new TextEncoder().encode("ping"));
  const { value } = await within(reader.read(), "the echo answers");
  assertEquals(new TextDecoder().decode(value), "ping");
  reader.releaseLock();
  writer.releaseLock();
  pool.close();
  await agent.shutdown();
});

Deno.test("TunnelPool: open goes to the least loaded tunnel", async () => {
  const { pool, dialer, first } = await startedPool(3);
  const second = new FakeTunnel("second");
  const third = new FakeTunnel("third");
  (await dialer.call(1)).resolve(second);
  (await dialer.call(2)).resolve(third);
  await eventually(() => pool.size === 3, "the pool fills to 3");
  first.streamCount = 3;
  second.streamCount = 1;
  third.streamCount = 2;
  const stream = await pool.open(REQUEST);
  assertEquals(second.opens, [REQUEST]);
  assertEquals(stream.request, REQUEST, "open returns the tunnel's stream");
  // second now carries 2 (its open counted one more); make it the busiest.
  second.streamCount = 7;
  await pool.open({ ...REQUEST, port: 8 });
  assertEquals(third.opens, [{ ...REQUEST, port: 8 }]);
  assertEquals(first.opens, []);
  pool.close();
});

Deno.test("TunnelPool: a tunnel going away gets no new streams and is replaced at once; it is left to finish", async () => {
  const { pool, dialer, first, logged } = await startedPool(1);
  first.draining = true;
  const opening = pool.open(REQUEST);
  const second = new FakeTunnel("second");
  (await dialer.call(1)).resolve(second);
  await within(opening, "the open on the replacement");
  assertEquals(second.opens, [REQUEST]);
  assertEquals(first.opens, []);
  assertEquals(first.closedBy, undefined, "the pool does not cut its streams short");
  assertEquals(logged, ["tunnel to the agent is going away; connecting another"]);
  // Once it has closed by itself, it is not replaced a second time.
  first.drop("went away");
  await settle();
  assertEquals(dialer.calls.length, 2);
  pool.close();
});

// ----- replacement ------------------------------------------------------------------------

Deno.test("TunnelPool: a tunnel that closes is replaced and onTunnel hears of it", async () => {
  const agent = new InMemoryAgent();
  const joined: Tunnel[] = [];
  const logged: string[] = [];
  const pool = new TunnelPool({
    size: 1,
    connect: agent.connect,
    log: (line) => logged.push(line),
    onTunnel: (t) => joined.push(t),
  });
  await within(pool.start(10_000), "start");
  assertEquals(joined.length, 1);
  // The agent's end goes away (the pod restarted, the port-forward dropped).
  agent.agentSide[0].close("agent restarting");
  await eventually(() => joined.length === 2, "a replacement tunnel joins");
  assert(joined[1] === agent.clientSide[1], "onTunnel is told of the replacement");
  // The client's end's own account of why it closed is what the user is told.
  const why = (agent.clientSide[0] as { closeReason?: string | null }).closeReason;
  assert(typeof why === "string" && why !== "", `the client's end has a closeReason: ${why}`);
  assertEquals(logged, [`tunnel to the agent closed (${why}); reconnecting`]);
  assertEquals(pool.size, 1);
  await within(pool.open(REQUEST), "open on the replacement");
  assertEquals(agent.clientSide[1].streamCount, 1, "the stream went to the replacement");
  pool.close();
  await agent.shutdown();
});

Deno.test("TunnelPool: log is told why a tunnel closed, when the tunnel says", async () => {
  const { pool, dialer, first, joined, logged } = await startedPool(1);
  first.drop("peer stopped answering keep-alive pings");
  const second = new FakeTunnel("second");
  (await dialer.call(1)).resolve(second);
  await eventually(() => joined.length === 2, "the replacement joins");
  assertEquals(logged, [
    "tunnel to the agent closed (peer stopped answering keep-alive pings); reconnecting",
  ]);
  second.drop(null); // a tunnel that gives no reason
  const third = new FakeTunnel("third");
  (await dialer.call(2)).resolve(third);
  await eventually(() => joined.length === 3, "the second replacement joins");
  assertEquals(logged[1], "tunnel to the agent closed; reconnecting");
  assertEquals(joined.map((t) => (t as FakeTunnel).name), ["first", "second", "third"]);
  assertEquals(first.closedBy, undefined, "the pool did not close the tunnel itself");
  pool.close();
});

Deno.test("TunnelPool: a replacement that fails to connect is retried until one is up", async () => {
  const { pool, dialer, first, joined } = await startedPool(1);
  first.drop("tunnel closed by peer");
  (await dialer.call(1)).reject(new Error("the API server is restarting"));
  (await dialer.call(2)).reject(new Error("the API server is restarting"));
  const replacement = new FakeTunnel("replacement");
  (await dialer.call(3)).resolve(replacement);
  await eventually(() => pool.size === 1, "the replacement is up");
  assert(joined.at(-1) === replacement);
  assertEquals(joined.length, 2, "failed connects do not reach onTunnel");
  pool.close();
  assertEquals(replacement.closedBy, "relay is stopping");
});

// ----- open while nothing is up -----------------------------------------------------------

Deno.test("TunnelPool: open with no tunnel up waits for the replacement", async () => {
  const { pool, dialer, first } = await startedPool(1, { waitMs: 60_000 });
  first.drop("tunnel closed by peer");
  const reconnect = await dialer.call(1);
  assertEquals(pool.size, 0);
  const opening = pool.open(REQUEST);
  const replacement = new FakeTunnel("replacement");
  reconnect.resolve(replacement);
  const stream = await within(opening, "the waiting open completes");
  assertEquals(stream.request, REQUEST);
  assertEquals(replacement.opens, [REQUEST]);
  assertEquals(first.opens, []);
  pool.close();
});

Deno.test('TunnelPool: open with no tunnel up fails after waitMs with "no tunnel to the agent is up"', async () => {
  const waitMs = 50;
  const { pool, dialer, first } = await startedPool(1, { waitMs });
  first.drop("tunnel closed by peer");
  const reconnect = await dialer.call(1); // stays pending: no tunnel comes up
  const began = Date.now();
  const error = await within(
    assertRejects(() => pool.open(REQUEST), Error),
    "open gives up",
  );
  assertEquals(error.message, "no tunnel to the agent is up");
  assert(Date.now() - began >= waitMs, "open waited waitMs before giving up");

  // Once a reconnect has failed, the failure says why.
  reconnect.reject(new Error("connection refused"));
  const retry = await dialer.call(2); // after the backoff; stays pending
  await within(
    assertRejects(
      () => pool.open(REQUEST),
      Error,
      "no tunnel to the agent is up: connection refused",
    ),
    "open gives up again",
  );

  pool.close();
  const late = new FakeTunnel("late");
  retry.resolve(late);
  await within(late.closed, "the pool closes a tunnel that comes up after close");
  assertEquals(late.closedBy, "relay is stopping");
  assertEquals(pool.size, 0);
});

// ----- close ------------------------------------------------------------------------------

Deno.test("TunnelPool: close closes every tunnel and does not reconnect them", async () => {
  const { pool, dialer, first, logged } = await startedPool(2);
  const second = new FakeTunnel("second");
  (await dialer.call(1)).resolve(second);
  await eventually(() => pool.size === 2, "the pool fills to 2");
  assertEquals(pool.stopped, false);
  pool.close();
  assertEquals(pool.stopped, true);
  assertEquals(pool.size, 0);
  assertEquals(first.closedBy, "relay is stopping");
  assertEquals(second.closedBy, "relay is stopping");
  await settle();
  assertEquals(dialer.calls.length, 2, "no reconnect after close");
  assertEquals(logged, [], "closing the pool is not a tunnel dropping");
  await within(
    assertRejects(() => pool.open(REQUEST), Error, "no tunnel to the agent is up"),
    "open after close fails at once",
  );
});

Deno.test("TunnelPool: close wakes a waiting open and a reconnect in flight does not rejoin", async () => {
  const { pool, dialer, first, joined } = await startedPool(1, { waitMs: 60_000 });
  first.drop("tunnel closed by peer");
  const reconnect = await dialer.call(1);
  const opening = pool.open(REQUEST);
  let outcome = "pending";
  opening.then(() => outcome = "opened", () => outcome = "failed");
  await settle();
  assertEquals(outcome, "pending", "open waits while no tunnel is up");
  pool.close();
  await within(
    assertRejects(() => opening, Error, "no tunnel to the agent is up"),
    "close wakes the waiting open",
  );
  const late = new FakeTunnel("late");
  reconnect.resolve(late);
  await within(late.closed, "the late tunnel is closed");
  assertEquals(late.closedBy, "relay is stopping");
  assertEquals(joined.length, 1, "onTunnel is not told of a tunnel that came up after close");
  assertEquals(pool.size, 0);
  await settle();
  assertEquals(dialer.calls.length, 2, "no reconnect after close");
});

// ----- what the pool reports --------------------------------------------------------------

Deno.test("TunnelPool: agreed is the agent's version from the first tunnel's handshake", async () => {
  const agent = new InMemoryAgent("7.7.7-test");
  const pool = new TunnelPool({ size: 1, connect: agent.connect });
  await within(pool.start(10_000), "start");
  assertEquals(await within(pool.agreed, "the agent's answer"), "7.7.7-test");
  pool.close();
  await agent.shutdown();
});

Deno.test("TunnelPool: agreed stays the first tunnel's when replacements join", async () => {
  const dialer = new Dialer();
  const pool = new TunnelPool({ size: 1, connect: dialer.connect });
  const starting = pool.start(10_000);
  const first = new FakeTunnel("first", "1.0.0");
  (await dialer.call(0)).resolve(first);
  await within(starting, "start");
  assertEquals(await within(pool.agreed, "agreed"), "1.0.0");
  first.drop("tunnel closed by peer");
  const second = new FakeTunnel("second", "2.0.0");
  (await dialer.call(1)).resolve(second);
  await eventually(() => pool.size === 1, "the replacement joins");
  assertEquals(await pool.agreed, "1.0.0");
  pool.close();
});

Deno.test("TunnelPool: start returns before the agent's answer, and streams go out on the tunnel meanwhile", async () => {
  const dialer = new Dialer();
  const pool = new TunnelPool({ size: 1, connect: dialer.connect });
  const starting = pool.start(10_000);
  const first = new FakeTunnel("first", "1.0.0", { answered: false });
  (await dialer.call(0)).resolve(first);
  await within(starting, "start");
  let agreed = "pending";
  pool.agreed.then((version) => agreed = version);
  await within(pool.open(REQUEST), "an open before the answer");
  assertEquals(first.opens.length, 1);
  await settle();
  assertEquals(agreed, "pending");
  first.answer();
  await settle();
  assertEquals(agreed, "1.0.0");
  pool.close();
});

Deno.test("TunnelPool: a refusal after start is told once and no tunnel is connected again", async () => {
  const dialer = new Dialer();
  const logged: string[] = [];
  const refused: HandshakeError[] = [];
  const pool = new TunnelPool({
    size: 2,
    connect: dialer.connect,
    log: (l) => logged.push(l),
    onRefused: (e) => refused.push(e),
  });
  const starting = pool.start(10_000);
  const first = new FakeTunnel("first", "", { answered: false });
  (await dialer.call(0)).resolve(first);
  await within(starting, "start");
  const second = new FakeTunnel("second", "", { answered: false });
  (await dialer.call(1)).resolve(second);
  await eventually(() => pool.size === 2, "the pool fills to 2");
  const refusal = new HandshakeError("token", "relay agent 1.0.0 refused the session token");
  first.answer(refusal);
  await eventually(() => refused.length === 1, "onRefused is told");
  assert(refused[0] === refusal);
  second.answer(new HandshakeError("token", "relay agent 1.0.0 refused the session token"));
  await eventually(() => pool.size === 0, "both refused tunnels leave the pool");
  await within(
    assertRejects(() => pool.open(REQUEST), Error, "refused the session token"),
    "an open after the refusal fails at once with it",
    1_000,
  );
  assertEquals(refused.length, 1, "told once");
  await new Promise((resolve) => setTimeout(resolve, 250));
  assertEquals(dialer.calls.length, 2, "a refused tunnel is not replaced: it would be refused");
  assertEquals(logged.filter((l) => l.includes("reconnecting")), []);
  pool.close();
});

Deno.test("TunnelPool: a replacement refused at connect stops the refilling and is told", async () => {
  const refused: HandshakeError[] = [];
  const dialer = new Dialer();
  const pool = new TunnelPool({
    size: 1,
    connect: dialer.connect,
    onRefused: (e) => refused.push(e),
  });
  const starting = pool.start(10_000);
  const first = new FakeTunnel("first");
  (await dialer.call(0)).resolve(first);
  await within(starting, "start");
  first.drop("tunnel closed by peer");
  const refusal = new HandshakeError("version", "cannot talk to each other");
  (await dialer.call(1)).reject(refusal);
  await eventually(() => refused.length === 1, "onRefused is told");
  assert(refused[0] === refusal);
  await new Promise((resolve) => setTimeout(resolve, 250));
  assertEquals(dialer.calls.length, 2, "no try after the refusal");
  pool.close();
});

Deno.test("TunnelPool: real tunnels to an agent that refuses the token are open at once and then fail with its answer", async () => {
  const refusing = async (): Promise<Tunnel> => {
    const [a, b] = duplexPair();
    acceptTunnel(b, { tokenDigest: await tokenDigest("another"), keepAliveMs: 0, onOpen: echo })
      .catch(() => {});
    return await openTunnel(a, { token: TOKEN, keepAliveMs: 0 });
  };
  let calls = 0;
  const refused: HandshakeError[] = [];
  const pool = new TunnelPool({
    size: 2,
    connect: () => (calls++, refusing()),
    onRefused: (e) => refused.push(e),
  });
  await within(pool.start(10_000), "start, on the agent's READY");
  const opening = pool.open(REQUEST).then(() => undefined, (e: unknown) => e);
  await eventually(() => refused.length === 1, "onRefused is told");
  assertEquals(refused[0].message, "the relay agent refused the session token");
  const failed = await within(opening, "the stream sent before the answer fails");
  assert(String(failed).includes("refused the session token"), String(failed));
  await eventually(() => pool.size === 0, "the refused tunnels leave the pool");
  await new Promise((resolve) => setTimeout(resolve, 250));
  assertEquals(calls, 2, "the first tunnel and the one filling the pool, no more");
  pool.close();
});

Deno.test("TunnelPool: stopped is false until close and true after it", async () => {
  const { pool } = await startedPool(1);
  assertEquals(pool.stopped, false);
  pool.close();
  assertEquals(pool.stopped, true);
  pool.close(); // idempotent
  assertEquals(pool.stopped, true);
});

Deno.test("TunnelPool: open does not pick a tunnel that has closed while another is up", async () => {
  const agent = new InMemoryAgent();
  const pool = new TunnelPool({ size: 2, connect: agent.connect });
  await within(pool.start(10_000), "start");
  await eventually(() => pool.size === 2, "the pool fills to 2");
  // The first tunnel closes (a keep-alive timeout, say); its `closed` settles a little later.
  agent.clientSide[0].close("peer stopped answering keep-alive pings");
  try {
    const stream = await within(pool.open(REQUEST), "open");
    assertEquals(stream.request, REQUEST);
  } finally {
    pool.close();
    await agent.shutdown();
  }
});
