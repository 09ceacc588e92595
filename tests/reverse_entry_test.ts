/**
 * The reverse entry against fake tunnels: how many times it asks an agent to listen, and what
 * it says, as tunnels close and new ones (a new agent, maybe in another pod) arrive.
 */
import { assertEquals } from "./assert.ts";
import { parseCommandLine } from "../lib/cli/program.ts";
import { createLogger } from "../lib/log.ts";
import { BufferPool } from "../lib/net/buffer_pool.ts";
import { reverseEntry } from "../lib/reverse/entry.ts";
import type { ServeContext } from "../lib/session/run.ts";
import { SessionStatus } from "../lib/status/session_status.ts";
import { OpenError, type Tunnel } from "../lib/tunnel/types.ts";
import { UsageError } from "../lib/errors.ts";

/** A tunnel whose agent takes every port asked for, after `delayMs`; `close()` ends it. */
function fakeTunnel(asked: number[], delayMs = 5, mode = "listen") {
  let close!: () => void;
  const closed = new Promise<void>((resolve) => close = resolve);
  const tunnel = {
    closeReason: null as string | null,
    closed,
    listen: async ({ port }: { port: number }) => {
      asked.push(port);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      return mode;
    },
  };
  return {
    tunnel: tunnel as unknown as Tunnel,
    close: () => {
      tunnel.closeReason = "closed by peer";
      close();
    },
  };
}

async function setUp(reverse = "7777:9000") {
  const invocation = await parseCommandLine(["--target", "deploy/web", "-R", reverse], {
    readTextFile: () => Promise.reject(new Error("no files here")),
    readStdin: () => Promise.resolve(""),
  });
  if (invocation.command !== "forward") throw new Error(invocation.command);
  const stdout: string[] = [];
  const errors: string[] = [];
  const logger = createLogger({
    sinks: { stdout: (line) => stdout.push(line), stderr: (line) => errors.push(line) },
  });
  const entry = reverseEntry(invocation.plan, logger);
  const stop = new AbortController();
  const status = new SessionStatus();
  let via = "pod/web-1";
  const context: ServeContext = {
    open: () => Promise.reject(new Error("no opens here")),
    stopped: false,
    buffers: new BufferPool(),
    get via() {
      return via;
    },
    signal: stop.signal,
    status,
  };
  return {
    entry,
    context,
    status,
    stdout,
    errors,
    stop: () => stop.abort(),
    movedTo: (pod: string) => via = pod,
  };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

/** Serving on a first tunnel that took the port: the session as the tests find it. */
async function servingOnFirstTunnel(t: Awaited<ReturnType<typeof setUp>>, asked: number[]) {
  const first = fakeTunnel(asked);
  t.entry.onTunnel!(first.tunnel);
  const serving = t.entry.serve(t.context);
  await settle();
  return { first, serving };
}

Deno.test("reverse: a new agent's tunnels take each -R once, and a new pod is announced", async () => {
  const t = await setUp();
  const asked: number[] = [];
  const { first, serving } = await servingOnFirstTunnel(t, asked);
  assertEquals(asked, [7777]);
  assertEquals(t.stdout.length, 1);

  // A rollout: the old tunnel closes as the new agent's two tunnels arrive, all at once.
  t.movedTo("pod/web-2");
  first.close();
  t.entry.onTunnel!(fakeTunnel(asked).tunnel);
  t.entry.onTunnel!(fakeTunnel(asked).tunnel);
  await settle();
  assertEquals(asked, [7777, 7777], "the new agent was asked more than once");
  assertEquals(t.errors, []);
  assertEquals(t.stdout.length, 2);
  assertEquals(t.stdout[1].includes("pod/web-2:7777"), true, t.stdout[1]);
  // One route for the port, its counters kept, now naming the new pod.
  assertEquals(t.status.routes.map((r) => [r.info.id, r.info.target]), [
    ["reverse/7777", "pod/web-2:7777"],
  ]);
  t.stop();
  await serving;
});

Deno.test("reverse: a tunnel replaced by the same agent takes the port again without a new line", async () => {
  const t = await setUp();
  const asked: number[] = [];
  const { first, serving } = await servingOnFirstTunnel(t, asked);
  first.close();
  t.entry.onTunnel!(fakeTunnel(asked).tunnel);
  await settle();
  assertEquals(asked, [7777, 7777]);
  assertEquals(t.stdout.length, 1);
  assertEquals(t.errors, []);
  t.stop();
  await serving;
});

Deno.test("reverse: with nothing on the local port, the line says what a mirrored port's callers get", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const absent = probe.addr.port;
  probe.close();
  const t = await setUp(`7777:${absent}`);
  t.entry.onTunnel!(fakeTunnel([], 5, "mirror").tunnel);
  const serving = t.entry.serve(t.context);
  await settle();
  const refused = await t.entry.onOpen!({ protocol: "tcp", host: "198.18.0.9", port: 7777 })
    .then(() => "opened", (error: Error) => error.message);
  assertEquals(refused.startsWith(`local port ${absent}: `), true, refused);
  assertEquals(t.errors.length, 1);
  assertEquals(
    t.errors[0].endsWith(
      "until something listens there, connections from 198.18.0.9 and others: the app still " +
        "answers them, but their copies are lost",
    ),
    true,
    t.errors[0],
  );
  t.stop();
  await serving;
});

Deno.test("reverse: a port below 1024 the agent may not bind is exit 2 pointing at --steal", async () => {
  const t = await setUp("80:8080");
  const tunnel = {
    closeReason: null,
    closed: new Promise(() => {}),
    listen: () =>
      Promise.reject(
        new OpenError("forbidden", "cannot listen on port 80 in the pod: Permission denied"),
      ),
  } as unknown as Tunnel;
  t.entry.onTunnel!(tunnel);
  const error = await t.entry.serve(t.context).then(() => undefined, (e: Error) => e);
  assertEquals(error instanceof UsageError, true, String(error));
  assertEquals(
    error!.message,
    "-R 80:8080: the agent may not listen on port 80 of pod/web-1 (ports below 1024 need " +
      "privileges in the pod); --steal takes it through a redirect instead",
  );
});
