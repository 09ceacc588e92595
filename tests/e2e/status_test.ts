/**
 * What relay shows while it runs, end to end against the local cluster: the `-o json` events a
 * script waits on, and the live view a person watches on a terminal (under tmux).
 */
import { assert, assertEquals } from "../assert.ts";
import { assertValidEvent } from "../events_schema.ts";
import {
  createTestNamespace,
  ensureCluster,
  KUBECONFIG,
  readAll,
  runCommand,
  waitFor,
} from "./harness.ts";
import { relayCommand } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

type Event = Record<string, unknown> & { event: string; phase?: string };

/** relay with `-o json`: its events as they come, each checked against the schema. */
function startJsonRelay(args: string[]) {
  const [cmd, ...rest] = relayCommand(["-o", "json", ...args]);
  const child = new Deno.Command(cmd, {
    args: rest,
    env: { KUBECONFIG },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const events: Event[] = [];
  const lines: string[] = [];
  const reading = (async () => {
    let pending = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        lines.push(line);
        events.push(assertValidEvent(line) as Event);
      }
    }
    assertEquals(pending, "", "stdout ends with a whole line");
  })();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  return {
    events,
    lines,
    /** Fails the wait at once, with what relay said, if relay has exited. */
    async checkRunning() {
      if (exited) throw new Error(`relay exited early: ${await stderr}`);
    },
    async stop() {
      if (!exited) child.kill("SIGTERM");
      const { code } = await status;
      await reading;
      return { code, stderr: await stderr };
    },
  };
}

Deno.test({
  name:
    "story: a script runs relay -o json, waits for its ready event, and each connection's close event counts exactly the bytes it sent and received; every line follows docs/events.schema.json",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("events");
    await createEchoWorkloads(ns.name, ["deploy"]);
    const relay = startJsonRelay(["-n", ns.name, "svc/echo", "0:9000@tcp", "0:9000@udp"]);
    let stopped = false;
    try {
      type Route = { id: string; local: string; protocol: string };
      // localhost, the default: 127.0.0.1 and ::1, one ready event each.
      const routes = await waitFor("four ready events", async () => {
        await relay.checkRunning();
        const found = relay.events.filter((e) => e.event === "ready");
        return found.length === 4 ? found.map((e) => e.route as Route) : undefined;
      }, { timeoutMs: 90_000 });
      assertEquals(
        routes.map((r) => `${r.protocol} ${r.local.replace(/\d+$/, "P")}`).sort(),
        ["tcp 127.0.0.1:P", "tcp [::1]:P", "udp 127.0.0.1:P", "udp [::1]:P"],
      );
      const ready = routes.find((r) => r.protocol === "tcp")!;
      const udp = routes.find((r) => r.protocol === "udp")!;
      const port = Number(ready.local.split(":").pop());
      const sizes = [1, 70_000, 1_000_000];
      for (const size of sizes) {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        const payload = new Uint8Array(size).map((_, i) => i % 251);
        const [echoed] = await Promise.all([
          readAll(conn),
          (async () => {
            for (let at = 0; at < size;) at += await conn.write(payload.subarray(at));
            await conn.closeWrite();
          })(),
        ]);
        assertEquals(echoed.length, size, "the echo came back whole");
      }
      const closes = await waitFor("three close events", () => {
        const found = relay.events.filter((e) => e.event === "connection" && e.phase === "close");
        return found.length === sizes.length ? found : undefined;
      }, { timeoutMs: 10_000 });
      assertEquals(
        closes.map((e) => [e.route, e.bytes_sent, e.bytes_received, e.error]),
        sizes.map((size) => [ready.id, size, size, undefined]),
      );
      const opens = relay.events.filter((e) => e.event === "connection" && e.phase === "open");
      assertEquals(opens.length, sizes.length);
      // One UDP session: a datagram out and its echo back.
      const socket = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
      try {
        const to = {
          transport: "udp" as const,
          hostname: "127.0.0.1",
          port: Number(udp.local.split(":").pop()),
        };
        await socket.send(new Uint8Array(100), to);
        const [reply] = await socket.receive();
        assertEquals(reply.length, 100);
      } finally {
        socket.close();
      }
      const { code, stderr } = await relay.stop();
      stopped = true;
      assertEquals(code, 0, stderr);
      const kinds = relay.events.map((e) => `${e.event}${e.phase ? ` ${e.phase}` : ""}`);
      const steps = [
        "agent creating",
        "agent started",
        "tunnel up",
        "udp_session start",
        "udp_session end",
        "agent deleted",
      ];
      for (const step of steps) {
        assert(kinds.includes(step), `no ${step} event in ${kinds.join(", ")}`);
      }
      const stats = relay.events.at(-1)!;
      assertEquals(stats.event, "stats");
      const total = sizes.reduce((a, b) => a + b, 0);
      assertEquals(
        (stats.routes as Record<string, unknown>[]).map((r) => [
          r.id,
          r.total,
          r.bytes_sent,
          r.bytes_received,
        ]),
        [
          [ready.id, 3, total, total],
          [ready.id.replace("127.0.0.1", "[::1]"), 0, 0, 0],
          [udp.id, 1, 100, 100],
          [udp.id.replace("127.0.0.1", "[::1]"), 0, 0, 0],
        ],
      );
      assert(!relay.lines.some((l) => l.startsWith("Forwarding from")), "stdout is only events");
    } finally {
      if (!stopped) await relay.stop();
    }
  },
});

/** tmux, the terminal for the live view; skipped with the reason when it is not installed. */
const TMUX = (await runCommand(["sh", "-c", "command -v tmux"])).stdout.trim();

Deno.test({
  name:
    "story: on a terminal, relay shows a live view under its ready lines whose counters move with the traffic, and Ctrl-C leaves the terminal clean",
  ignore: !TMUX,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("view");
    await createEchoWorkloads(ns.name, ["deploy"]);
    const session = `relay-view-${crypto.randomUUID().slice(0, 8)}`;
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const command = relayCommand(["-n", ns.name, "svc/echo", `${port}:9000@tcp`])
      .map((word) => `'${word}'`).join(" ");
    const tmux = (...args: string[]) =>
      runCommand([TMUX, "-L", session, "-f", "/dev/null", ...args]);
    const screen = async () => (await tmux("capture-pane", "-p", "-t", session)).stdout;
    await tmux(
      "new-session",
      "-d",
      "-s",
      session,
      "-x",
      "150",
      "-y",
      "30",
      `env KUBECONFIG=${KUBECONFIG} NO_COLOR=1 ${command}; echo relay-exited-$?; sleep 60`,
    ); // deno-fmt-ignore
    try {
      // localhost's 127.0.0.1 and ::1 listeners share the row.
      const row = (text: string) => text.split("\n").find((l) => l.startsWith(`localhost:${port}`));
      let last = "";
      await waitFor("the view's row for the forward", async () => {
        const text = last = await screen();
        return text.includes(`Forwarding from 127.0.0.1:${port} -> svc/echo:9000`) &&
          text.includes("LOCAL") && row(text) !== undefined;
      }, { timeoutMs: 90_000 }).catch((error) => {
        throw new Error(`${error.message}; the screen:\n${last}`);
      });
      assert(/\s0\s+0\s+0 B\s+0 B/.test(row(await screen())!), await screen());
      for (let i = 0; i < 3; i++) {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(new Uint8Array(2_000));
        await conn.closeWrite();
        await readAll(conn);
      }
      // OPEN 0, TOTAL 3, 6.0 kB each way.
      await waitFor("the row to count three connections and their bytes", async () => {
        const line = row(await screen()) ?? "";
        return /\s0\s+3\s+6\.0 kB\s+6\.0 kB/.test(line) ? line : undefined;
      }, { timeoutMs: 10_000 });
      await tmux("send-keys", "-t", session, "C-c");
      const end = await waitFor("relay to exit", async () => {
        const text = await screen();
        return text.includes("relay-exited-") ? text : undefined;
      }, { timeoutMs: 30_000 });
      assert(end.includes("relay-exited-0"), end);
      assert(end.includes("deleted agent pod"), end);
      assert(!end.includes("LOCAL") && row(end) === undefined, `the view is erased:\n${end}`);
    } finally {
      await tmux("kill-server");
    }
  },
});
