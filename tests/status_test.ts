/** The session's counters and events, and the three outputs that read them. */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { assertValidEvent } from "./events_schema.ts";
import { duplexPair } from "../lib/net/mod.ts";
import { splice, type SpliceCounts } from "../lib/net/splice.ts";
import type { ByteChannel } from "../lib/net/types.ts";
import { MIRROR_DROPPED } from "../lib/contract.ts";
import { SessionStatus } from "../lib/status/session_status.ts";
import { writeJsonEvents } from "../lib/status/json_events.ts";
import { LiveView, size } from "../lib/status/live_view.ts";
import { PLAIN_EVENT_INTERVAL_MS, printNotableEvents } from "../lib/status/plain_events.ts";
import type { RouteInfo } from "../lib/status/events.ts";

const ROUTE: RouteInfo = {
  id: "tcp/127.0.0.1:8080",
  direction: "forward",
  protocol: "tcp",
  local: "127.0.0.1:8080",
  target: "svc/web:80",
};

Deno.test("splice: counts every byte each way as it passes", async () => {
  const [local, localEnd] = duplexPair();
  const [remote, remoteEnd] = duplexPair();
  const counts: SpliceCounts = { aToB: 0, bToA: 0 };
  const spliced = splice(localEnd, remoteEnd, counts);
  const send = async (side: typeof local, bytes: number) => {
    const writer = side.writable.getWriter();
    await writer.write(new Uint8Array(bytes));
    await writer.close();
  };
  const drain = async (side: typeof local) => {
    let n = 0;
    for await (const chunk of side.readable) n += chunk.byteLength;
    return n;
  };
  const [, , up, down] = await Promise.all([
    send(local, 70_000),
    send(remote, 1_234),
    drain(remote),
    drain(local),
  ]);
  await spliced;
  assertEquals([up, down], [70_000, 1_234]);
  assertEquals(counts, { aToB: 70_000, bToA: 1_234 });
});

Deno.test("splice: a chunk whose write fails is not counted as delivered", async () => {
  const chunks = [new Uint8Array(1_000), new Uint8Array(500)];
  const from: ByteChannel = {
    read: () => Promise.resolve(chunks.shift() ?? null),
    write: () => Promise.resolve(),
    closeWrite() {},
    abort() {},
  };
  let written = 0;
  let aborted = (_: null) => {};
  const to: ByteChannel = {
    read: () => new Promise((resolve) => aborted = resolve),
    write: () =>
      written++ === 0 ? Promise.resolve() : Promise.reject(new Error("connection reset")),
    closeWrite() {},
    abort: () => aborted(null),
  };
  const counts: SpliceCounts = { aToB: 0, bToA: 0 };
  await splice(from, to, counts);
  assertEquals(counts, { aToB: 1_000, bToA: 0 });
});

Deno.test("SessionStatus: a route counts open and closed connections, bytes each way, the last error", () => {
  let now = 1_000;
  const status = new SessionStatus(() => now);
  const events: string[] = [];
  status.subscribe((event) => events.push(JSON.stringify(event)));
  const route = status.ready(ROUTE);
  const a = status.connection(route, "127.0.0.1:5000");
  const b = status.connection(route, "10.0.0.7", false); // reverse: the local side is b
  a.counts.aToB += 10;
  a.counts.bToA += 20;
  b.counts.aToB += 300; // from the tunnel: received
  b.counts.bToA += 4; // from the local server: sent
  assertEquals([route.open, route.total], [2, 2]);
  assertEquals(route.bytes, { sent: 14, received: 320 });
  now += 250;
  a.end();
  b.end("refused: local port 3000");
  b.end("twice"); // ends once
  assertEquals(route.counters(), {
    id: ROUTE.id,
    open: 0,
    total: 2,
    failed: 1,
    bytes_sent: 14,
    bytes_received: 320,
    dropped: 0,
    last_error: "refused: local port 3000",
    last_error_time: new Date(1_250).toISOString(),
  });
  const closes = events.map((e) => JSON.parse(e)).filter((e) => e.phase === "close");
  assertEquals(closes.map((e) => [e.bytes_sent, e.bytes_received, e.duration_ms, e.error]), [
    [10, 20, 250, undefined],
    [4, 300, 250, "refused: local port 3000"],
  ]);
  for (const line of events) assertValidEvent(line);
});

Deno.test("SessionStatus: only a tunnel that comes up after one was lost is a reconnect", () => {
  const status = new SessionStatus();
  status.tunnelUp();
  status.tunnelUp();
  assertEquals([status.tunnels, status.reconnects], [2, 0]);
  status.tunnelDown("agent gone");
  status.tunnelUp();
  assertEquals([status.tunnels, status.reconnects], [2, 1]);
});

Deno.test("-o json: every event is one valid line, with stats at the end", () => {
  const status = new SessionStatus();
  const lines: string[] = [];
  const stop = writeJsonEvents(status, (line) => lines.push(line), 60_000);
  status.agentPhase("creating");
  status.agentPhase("started", "ns/relay-agent-x");
  status.tunnelUp();
  const route = status.ready(ROUTE);
  const udp = status.udpSession(status.ready({ ...ROUTE, id: "udp/127.0.0.1:53" }), "127.0.0.1:1");
  udp.end(undefined, 3);
  status.connection(route, "127.0.0.1:2").end();
  status.error("connection to svc/web failed: refused");
  status.tunnelDown("relay is stopping");
  status.agentPhase("deleted", "ns/relay-agent-x");
  stop();
  stop();
  const events = lines.map(assertValidEvent);
  assert(lines.every((line) => !line.includes("\n")));
  assertEquals(events.map((e) => e.event).at(-1), "stats");
  assertEquals(events.filter((e) => e.event === "stats").length, 1);
  const stats = events.at(-1) as { routes: { id: string; dropped: number }[] };
  assertEquals(stats.routes.map((r) => [r.id, r.dropped]), [[ROUTE.id, 0], [
    "udp/127.0.0.1:53",
    3,
  ]]);
});

/** A terminal that keeps what was written, interpreting only the view's erase sequence. */
function fakeTerminal(columns = 120) {
  let screen: string[] = [];
  const terminal = {
    color: false,
    columns: () => columns,
    write(text: string) {
      // "\r ESC[nA ESC[J": up n lines, clear to the end of the screen.
      // deno-lint-ignore no-control-regex
      const erase = /^\r\x1b\[(\d+)A\x1b\[J/.exec(text);
      if (erase) {
        screen = screen.slice(0, screen.length - Number(erase[1]));
        text = text.slice(erase[0].length);
      }
      if (text) screen.push(...text.replace(/\n$/, "").split("\n"));
    },
  };
  return { terminal, screen: () => screen };
}

Deno.test("live view: shows the agent's progress, then a row per route with its counters, under log lines", () => {
  let now = 0;
  const status = new SessionStatus(() => now);
  const { terminal, screen } = fakeTerminal();
  const view = new LiveView(status, terminal, () => now);
  view.start();
  status.agentPhase("scheduled", "ns/relay-agent-x");
  view.print("a log line\n");
  assertEquals(screen()[0], "a log line");
  assertStringIncludes(screen()[1], "creating → scheduled → pulling image");
  const route = status.ready(ROUTE);
  status.tunnelUp();
  const c = status.connection(route, "127.0.0.1:9");
  c.counts.aToB = 2_500;
  c.counts.bToA = 1_200_000;
  now = 2_000;
  view.print("another\n");
  now = 3_000;
  c.end("reset: agent gone");
  view.print("third\n");
  const shown = screen();
  assertEquals(shown.slice(0, 3), ["a log line", "another", "third"]);
  assertStringIncludes(shown[3], "ns/relay-agent-x");
  assertStringIncludes(shown[3], "tunnels 1 up");
  const row = shown.find((line) => line.startsWith("127.0.0.1:8080"))!;
  assertStringIncludes(row, "→ svc/web:80");
  assertStringIncludes(row, "1.2 MB");
  assertStringIncludes(row, "2.5 kB");
  assertStringIncludes(row, "reset: agent gone (0s ago)");
  view.stop();
  assertEquals(screen(), ["a log line", "another", "third"], "the view is erased on stop");
});

Deno.test("live view: localhost's two listeners of a port share a row, their counts added", () => {
  let now = 0;
  const status = new SessionStatus(() => now);
  const { terminal, screen } = fakeTerminal();
  const view = new LiveView(status, terminal, () => now);
  const v4 = status.ready(ROUTE);
  const v6 = status.ready({ ...ROUTE, id: "tcp/[::1]:8080", local: "[::1]:8080" });
  status.ready({ ...ROUTE, id: "tcp/127.0.0.1:9090", local: "127.0.0.1:9090" });
  status.tunnelUp();
  status.connection(v4, "127.0.0.1:9").counts.bToA = 1_000;
  const late = status.connection(v6, "[::1]:9");
  late.counts.bToA = 2_000;
  now = 5_000;
  late.end("refused: nobody there");
  view.start();
  const rows = screen().slice(2);
  assertEquals(rows.length, 2, rows.join("\n"));
  assertStringIncludes(rows[0], "localhost:8080");
  assertStringIncludes(rows[0], "3.0 kB");
  assertStringIncludes(rows[0], "refused: nobody there");
  assert(rows[1].startsWith("127.0.0.1:9090"), rows[1]);
  view.stop();
});

Deno.test("live view: rows are cut to the terminal's width, so the redraw stays in place", () => {
  const status = new SessionStatus();
  const { terminal, screen } = fakeTerminal(40);
  const view = new LiveView(status, terminal);
  status.ready({ ...ROUTE, target: "svc/a-very-long-service-name-indeed:8080" });
  view.start();
  assert(screen().every((line) => line.length <= 39), screen().join("\n"));
  view.stop();
  assertEquals(screen(), []);
});

Deno.test("size: bytes as people read them", () => {
  assertEquals([size(0), size(999), size(1_000), size(1_234_567), size(12_500_000_000)], [
    "0 B",
    "999 B",
    "1.0 kB",
    "1.2 MB",
    "13 GB",
  ]);
});

Deno.test("plain events: a mirrored copy the agent dropped is one line, naming the port and the caller", () => {
  const status = new SessionStatus();
  const lines: string[] = [];
  const stop = printNotableEvents(status, (line) => lines.push(line));
  const route = status.ready({
    id: "reverse/80",
    direction: "reverse",
    protocol: "tcp",
    local: "127.0.0.1:8080",
    target: "pod/web-1:80",
    mode: "mirror",
  });
  status.connection(route, "10.0.0.9", false).end(`stream reset by peer: ${MIRROR_DROPPED}`);
  status.connection(route, "10.0.0.9", false).end("stream reset by peer: connection reset");
  stop();
  assertEquals(lines, [
    "pod/web-1:80: the copy of a connection from 10.0.0.9 was dropped: it fell more than " +
    "4 MiB behind the caller (16 MiB across connections): the caller sent faster than the " +
    "tunnel or the local server took it. The app still answered it",
  ]);
  assertEquals(route.failed, 2);
  assertEquals(route.lastError?.message, "stream reset by peer: connection reset");
});

Deno.test("plain events: a lost tunnel is one line, a burst of them is counted into the next", () => {
  let now = 0;
  const status = new SessionStatus();
  const lines: string[] = [];
  const stop = printNotableEvents(status, (line) => lines.push(line), () => now);
  status.tunnelUp();
  status.tunnelDown("connection reset");
  status.tunnelDown("connection reset");
  status.tunnelDown("connection reset");
  now += PLAIN_EVENT_INTERVAL_MS;
  status.tunnelDown("api server gone");
  status.stopping = true;
  status.tunnelDown("relay is stopping");
  stop();
  assertEquals(lines, [
    "tunnel to the agent lost (connection reset); reconnecting",
    "tunnel to the agent lost (api server gone); reconnecting (and 2 more like it)",
  ]);
});
