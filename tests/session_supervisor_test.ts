/**
 * AgentSupervisor (lib/session/supervisor.ts) with fake agent pods and fake tunnels: what it
 * does when a connect fails, depending on what the (fake) API server says about the pod.
 */
import { assert, assertEquals, assertRejects, within } from "./assert.ts";
import { AgentSupervisor, type AgentSupervisorOptions } from "../lib/session/supervisor.ts";
import type { AgentPod } from "../lib/kube/agent_pod.ts";
import type { Tunnel } from "../lib/tunnel/mod.ts";

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

/** A fake agent pod that counts its stop() calls. */
interface FakeAgent extends AgentPod {
  stops: number;
}

function fakeAgent(n: number): FakeAgent {
  const agent: FakeAgent = {
    podName: `relay-agent-${n}-pod`,
    namespace: "relay",
    container: "agent",
    ephemeral: false,
    sessionId: `session-${n}`,
    token: `token-${n}`,
    port: 4000,
    stops: 0,
    stop: () => {
      agent.stops++;
      return Promise.resolve();
    },
  };
  return agent;
}

/** A stand-in tunnel: the supervisor only passes tunnels through. */
function fakeTunnel(to: AgentPod): Tunnel {
  return { peerVersion: to.podName } as unknown as Tunnel;
}

/**
 * A supervisor over hand-driven fakes: each start, connect and goneReason call is recorded
 * and waits for the test to settle it (unless an `auto` behaviour is given).
 */
class Harness {
  readonly starts: Deferred<AgentPod>[] = [];
  readonly connects: Array<{ agent: AgentPod } & Deferred<Tunnel>> = [];
  readonly asks: Array<{ agent: AgentPod } & Deferred<string | undefined>> = [];
  readonly logged: string[] = [];
  readonly failures: unknown[] = [];
  readonly supervisor: AgentSupervisor;

  constructor(extra: Partial<AgentSupervisorOptions> = {}) {
    this.supervisor = new AgentSupervisor({
      start: () => {
        const call = deferred<AgentPod>();
        this.starts.push(call);
        return call.promise;
      },
      connect: (agent) => {
        const call = { agent, ...deferred<Tunnel>() };
        this.connects.push(call);
        return call.promise;
      },
      goneReason: (agent) => {
        const call = { agent, ...deferred<string | undefined>() };
        this.asks.push(call);
        return call.promise;
      },
      log: (line) => this.logged.push(line),
      onFailure: (error) => this.failures.push(error),
      startingGraceMs: 0,
      ...extra,
    });
  }

  /** Starts the supervisor with `agent` as its first agent. */
  async started(agent: AgentPod): Promise<void> {
    const starting = this.supervisor.start();
    (await this.start(0)).resolve(agent);
    assert((await within(starting, "start")) === agent);
  }

  async start(n: number): Promise<Deferred<AgentPod>> {
    await eventually(() => this.starts.length > n, `start call #${n + 1}`);
    return this.starts[n];
  }

  async connect(n: number): Promise<{ agent: AgentPod } & Deferred<Tunnel>> {
    await eventually(() => this.connects.length > n, `connect call #${n + 1}`);
    return this.connects[n];
  }

  async ask(n: number): Promise<{ agent: AgentPod } & Deferred<string | undefined>> {
    await eventually(() => this.asks.length > n, `goneReason call #${n + 1}`);
    return this.asks[n];
  }
}

// ----- start and connect ------------------------------------------------------------------

Deno.test("AgentSupervisor: start adopts the agent it started as current", async () => {
  const h = new Harness();
  assertEquals(h.supervisor.current, undefined);
  const agent = fakeAgent(1);
  await h.started(agent);
  assert(h.supervisor.current === agent);
  assertEquals(h.starts.length, 1);
  assertEquals(h.logged, []);
});

Deno.test("AgentSupervisor: connect before start fails saying the agent has not been started", async () => {
  const h = new Harness();
  await assertRejects(() => h.supervisor.connect(), Error, "the agent has not been started");
  assertEquals(h.connects.length, 0);
});

Deno.test("AgentSupervisor: connect opens a tunnel to the current agent", async () => {
  const h = new Harness();
  const agent = fakeAgent(1);
  await h.started(agent);
  const connecting = h.supervisor.connect();
  const call = await h.connect(0);
  assert(call.agent === agent, "the tunnel goes to the current agent");
  const tunnel = fakeTunnel(agent);
  call.resolve(tunnel);
  assert((await within(connecting, "connect")) === tunnel);
  assertEquals(h.asks.length, 0, "a connect that works does not ask about the pod");
});

// ----- a connect that fails while the agent is still there --------------------------------

Deno.test("AgentSupervisor: a new agent's refused connects are retried without asking about its pod, until one reaches it", async () => {
  const h = new Harness({ startingGraceMs: 60_000 });
  const agent = fakeAgent(1);
  await h.started(agent);
  const refused = new Error("port-forward: connection refused");
  const first = h.supervisor.connect();
  (await h.connect(0)).reject(refused);
  assert((await within(assertRejects(() => first, Error), "connect fails")) === refused);
  assertEquals(h.asks.length, 0, "a refusal while the agent starts asks nothing of the pod");
  const second = h.supervisor.connect();
  (await h.connect(1)).resolve(fakeTunnel(agent));
  await within(second, "connect");
  // Once a tunnel has reached the agent, a refusal may mean it is gone: the pod is asked.
  const third = h.supervisor.connect();
  (await h.connect(2)).reject(refused);
  (await h.ask(0)).resolve(undefined);
  assert((await within(assertRejects(() => third, Error), "connect fails")) === refused);
  assertEquals(h.starts.length, 1);
});

Deno.test("AgentSupervisor: a failed connect to an agent that is still there rejects with the original error and starts no agent", async () => {
  const h = new Harness();
  const agent = fakeAgent(1);
  await h.started(agent);
  const refused = new Error("port-forward: connection refused");
  const connecting = h.supervisor.connect();
  (await h.connect(0)).reject(refused);
  const ask = await h.ask(0);
  assert(ask.agent === agent, "goneReason is asked about the agent the connect went to");
  ask.resolve(undefined);
  const error = await within(assertRejects(() => connecting, Error), "connect fails");
  assert(error === refused, `the original error, got: ${error.message}`);
  assertEquals(h.starts.length, 1, "no new agent");
  assertEquals(h.connects.length, 1, "no second connect");
  assertEquals(agent.stops, 0, "the agent is kept");
  assert(h.supervisor.current === agent);
  assertEquals(h.logged, []);
  assertEquals(h.failures, []);
});

Deno.test("AgentSupervisor: goneReason throwing is treated as a blip: the original error, no new agent", async () => {
  const h = new Harness();
  const agent = fakeAgent(1);
  await h.started(agent);
  const refused = new Error("port-forward: connection refused");
  const connecting = h.supervisor.connect();
  (await h.connect(0)).reject(refused);
  (await h.ask(0)).reject(new Error("reading the agent pod timed out after 15 s"));
  const error = await within(assertRejects(() => connecting, Error), "connect fails");
  assert(error === refused, `the original error, got: ${error.message}`);
  assertEquals(h.starts.length, 1, "no new agent");
  assertEquals(agent.stops, 0);
  assert(h.supervisor.current === agent);
  assertEquals(h.logged, []);
  assertEquals(h.failures, []);
});

// ----- a connect that fails because the agent is gone -------------------------------------

Deno.test("AgentSupervisor: a gone agent is replaced, the user is told, and the connect is retried on the new agent", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = h.supervisor.connect();
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("was deleted");
  const replacement = await h.start(1);
  assertEquals(h.logged, ["agent pod relay/relay-agent-1-pod was deleted; starting a new agent"]);
  assertEquals(old.stops, 1, "the old agent's Job is removed");
  const next = fakeAgent(2);
  replacement.resolve(next);
  const retry = await h.connect(1);
  assert(retry.agent === next, "the connect is retried on the new agent");
  const tunnel = fakeTunnel(next);
  retry.resolve(tunnel);
  assert((await within(connecting, "connect")) === tunnel);
  assert(h.supervisor.current === next);
  assertEquals(h.logged, [
    "agent pod relay/relay-agent-1-pod was deleted; starting a new agent",
    "new agent pod relay/relay-agent-2-pod is running",
  ]);
  assertEquals(h.starts.length, 2);
  assertEquals(h.failures, []);
  assertEquals(next.stops, 0);
});

Deno.test("AgentSupervisor: several connects failing on a gone agent start one replacement and all retry on it", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = [h.supervisor.connect(), h.supervisor.connect(), h.supervisor.connect()];
  for (let i = 0; i < 3; i++) (await h.connect(i)).reject(new Error(`pod not found (${i})`));
  // The first answer starts the replacement; the others arrive while it is starting.
  (await h.ask(0)).resolve("was deleted");
  const replacement = await h.start(1);
  (await h.ask(1)).resolve("was deleted");
  (await h.ask(2)).resolve("is being deleted");
  await settle();
  const next = fakeAgent(2);
  replacement.resolve(next);
  for (let i = 3; i < 6; i++) {
    const retry = await h.connect(i);
    assert(retry.agent === next, `retry #${i - 2} goes to the new agent`);
    retry.resolve(fakeTunnel(next));
  }
  const tunnels = await within(Promise.all(connecting), "every connect");
  assertEquals(tunnels.map((t) => t.peerVersion), Array(3).fill(next.podName));
  assertEquals(h.starts.length, 2, "one replacement for all three");
  assertEquals(h.logged.length, 2, `one replacement told: ${h.logged.join(" | ")}`);
  assertEquals(old.stops, 1);
  assert(h.supervisor.current === next);
});

Deno.test("AgentSupervisor: a connect that fails while a replacement is starting waits for it without asking about the pod", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const first = h.supervisor.connect();
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("was deleted");
  const replacement = await h.start(1);
  // The new agent is not up yet: this connect still goes to the old one, and fails.
  const second = h.supervisor.connect();
  const secondCall = await h.connect(1);
  assert(secondCall.agent === old);
  secondCall.reject(new Error("pod not found"));
  await settle();
  assertEquals(h.asks.length, 1, "the replacement under way is answer enough");
  const next = fakeAgent(2);
  replacement.resolve(next);
  for (const n of [2, 3]) {
    const retry = await h.connect(n);
    assert(retry.agent === next, `retry #${n - 1} goes to the new agent`);
    retry.resolve(fakeTunnel(next));
  }
  await within(Promise.all([first, second]), "both connects");
  assertEquals(h.starts.length, 2);
});

Deno.test("AgentSupervisor: a connect that fails on the old agent after it was replaced retries on the new one without asking", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const first = h.supervisor.connect();
  const second = h.supervisor.connect(); // in flight to the old agent
  const secondCall = await h.connect(1);
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("was deleted");
  const next = fakeAgent(2);
  (await h.start(1)).resolve(next);
  (await h.connect(2)).resolve(fakeTunnel(next));
  await within(first, "the first connect");
  // Only now does the second connect to the old agent fail.
  secondCall.reject(new Error("pod not found"));
  const retry = await h.connect(3);
  assert(retry.agent === next);
  retry.resolve(fakeTunnel(next));
  assertEquals((await within(second, "the second connect")).peerVersion, next.podName);
  assertEquals(h.asks.length, 1, "goneReason is not asked again about a replaced agent");
  assertEquals(h.starts.length, 2);
});

Deno.test("AgentSupervisor: a replacement that cannot start calls onFailure and the connect rejects", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = [h.supervisor.connect(), h.supervisor.connect()];
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.connect(1)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("exited (Completed)");
  (await h.ask(1)).resolve("exited (Completed)");
  const unschedulable = new Error("the agent pod is unschedulable: 0/3 nodes are available");
  (await h.start(1)).reject(unschedulable);
  for (const [i, c] of connecting.entries()) {
    const error = await within(assertRejects(() => c, Error), `connect #${i + 1} fails`);
    assert(error === unschedulable, `connect #${i + 1} fails with the start error`);
  }
  assertEquals(h.failures.length, 1, "onFailure is called once");
  assert(h.failures[0] === unschedulable);
  assertEquals(h.starts.length, 2, "one replacement attempt");
  assertEquals(h.connects.length, 2, "nothing to retry the connect on");
  assertEquals(h.logged, [
    "agent pod relay/relay-agent-1-pod exited (Completed); starting a new agent",
  ]);
  assertEquals(old.stops, 1);
});

// ----- stop -------------------------------------------------------------------------------

Deno.test("AgentSupervisor: stop stops the current agent and returns it", async () => {
  const h = new Harness();
  assertEquals(await within(h.supervisor.stop(), "stop before start"), undefined);
  const h2 = new Harness();
  const agent = fakeAgent(1);
  await h2.started(agent);
  assert((await within(h2.supervisor.stop(), "stop")) === agent);
  assertEquals(agent.stops, 1);
});

Deno.test("AgentSupervisor: a start racing with stop does not leave the new agent running", async () => {
  const h = new Harness();
  const starting = h.supervisor.start();
  const call = await h.start(0);
  assertEquals(await within(h.supervisor.stop(), "stop"), undefined, "no agent to stop yet");
  const agent = fakeAgent(1);
  call.resolve(agent);
  await within(starting, "start");
  await eventually(() => agent.stops > 0, "the agent that came up after stop is stopped");
});

Deno.test("AgentSupervisor: stop during a replacement waits for it and stops the new agent", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = h.supervisor.connect();
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("was deleted");
  const replacement = await h.start(1);
  const stopping = h.supervisor.stop();
  let stopped = false;
  stopping.then(() => stopped = true, () => stopped = true);
  await settle();
  assertEquals(stopped, false, "stop waits for the agent being started");
  const next = fakeAgent(2);
  replacement.resolve(next);
  assert((await within(stopping, "stop")) === next, "stop returns the agent it stopped");
  assert(next.stops >= 1, "the new agent is stopped");
  assertEquals(old.stops, 1, "the old agent was stopped when it was found gone");
  assertEquals(h.failures, []);
  // Let the connect that started the replacement finish, however it does (it may or may not
  // dial the new agent; either way that dial fails, as the agent is being deleted).
  let settled = false;
  const done = connecting.then(() => settled = true, () => settled = true);
  await eventually(() => settled || h.connects.length > 1, "the connect goes on or ends");
  h.connects[1]?.reject(new Error("relay is stopping"));
  await within(done, "the connect settles");
});

Deno.test("AgentSupervisor: a replacement that fails after stop does not call onFailure", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = h.supervisor.connect();
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.ask(0)).resolve("was deleted");
  const replacement = await h.start(1);
  const stopping = h.supervisor.stop();
  const aborted = new Error("relay is stopping");
  replacement.reject(aborted);
  assert((await within(stopping, "stop")) === old, "stop returns the agent still current");
  await within(assertRejects(() => connecting, Error, "relay is stopping"), "connect fails");
  assertEquals(h.failures, [], "a start cut short by stop is not a failure of the run");
});

Deno.test("AgentSupervisor: after stop a failed connect is not looked into", async () => {
  const h = new Harness();
  const agent = fakeAgent(1);
  await h.started(agent);
  const connecting = h.supervisor.connect();
  const call = await h.connect(0);
  await within(h.supervisor.stop(), "stop");
  const closed = new Error("port-forward closed");
  call.reject(closed);
  const error = await within(assertRejects(() => connecting, Error), "connect fails");
  assert(error === closed);
  assertEquals(h.asks.length, 0, "goneReason is not asked");
  assertEquals(h.starts.length, 1, "no new agent");
});

Deno.test("AgentSupervisor: a gone answer that arrives after stop starts no agent", async () => {
  const h = new Harness();
  const agent = fakeAgent(1);
  await h.started(agent);
  const connecting = h.supervisor.connect();
  const refused = new Error("pod not found");
  (await h.connect(0)).reject(refused);
  const ask = await h.ask(0);
  await within(h.supervisor.stop(), "stop");
  ask.resolve("was deleted");
  const error = await within(assertRejects(() => connecting, Error), "connect fails");
  assert(error === refused, "the original error");
  assertEquals(h.starts.length, 1, "no new agent after stop");
  assertEquals(h.logged, []);
  assertEquals(agent.stops, 1, "stop stopped the agent");
});

Deno.test("AgentSupervisor: a replacement that failed is not started again by a connect that failed alongside it", async () => {
  const h = new Harness();
  const old = fakeAgent(1);
  await h.started(old);
  const connecting = [h.supervisor.connect(), h.supervisor.connect()];
  // The second may fail as soon as its own question is answered: hold its outcome.
  const second = connecting[1].then(() => undefined, (e: unknown) => e);
  (await h.connect(0)).reject(new Error("pod not found"));
  (await h.connect(1)).reject(new Error("pod not found"));
  const ask0 = await h.ask(0);
  const ask1 = await h.ask(1);
  ask0.resolve("was deleted");
  const unschedulable = new Error("the agent pod is unschedulable");
  (await h.start(1)).reject(unschedulable);
  await within(assertRejects(() => connecting[0], Error), "the first connect fails");
  // The API server's answer to the second connect arrives only after the replacement failed.
  ask1.resolve("was deleted");
  await settle();
  const starts = h.starts.length;
  const failures = h.failures.length;
  h.starts[2]?.reject(new Error("cleanup")); // so the test ends either way
  assert(await within(second, "the second connect settles"), "the second connect failed");
  assertEquals(starts, 2, "one replacement attempt, however many connects failed");
  assertEquals(failures, 1, "onFailure once");
});
