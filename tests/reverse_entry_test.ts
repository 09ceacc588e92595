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
import type { Tunnel } from "../lib/tunnel/types.ts";

/** A tunnel whose agent takes every port asked for, after `delayMs`; `close()` ends it. */
function fakeTunnel(asked: number[], delayMs = 5) {
  let close!: () => void;
  const closed = new Promise<void>((resolve) => close = resolve);
  const tunnel = {
    closeReason: null as string | null,
    closed,
    listen: async ({ port }: { port: number }) => {
      asked.push(port);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      return "listen";
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

async function setUp() {
  const invocation = await parseCommandLine(["--target", "deploy/web", "-R", "7777:9000"], {
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
  assertEquals(t.status.routes.map((r) => r.info.id), ["reverse/pod/web-2:7777"]);
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
