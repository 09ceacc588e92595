/**
 * Out of file descriptors, for real: `relay agent` under `ulimit -n` is flooded with
 * connections until accept fails (EMFILE). It must say so, stay up, and accept a tunnel again
 * once descriptors are free: a failed accept is not the end of the tunnels it carries.
 */
import { tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals } from "./assert.ts";
import { RELAY_RUN_FLAGS } from "../scripts/release/compile.ts";
import { connDuplex } from "../lib/net/mod.ts";
import { connectTunnel } from "../lib/tunnel/mod.ts";

const TOKEN = "fd-limit-token";
const LIMIT = 64;
const MAIN = new URL("../main.ts", import.meta.url).pathname;

Deno.test("agent: under ulimit -n, a flood of connections makes accept fail; it says so, stays up, and accepts again", async () => {
  const agent = new Deno.Command("sh", {
    args: [
      "-c",
      `ulimit -n ${LIMIT} && exec "$0" run ${RELAY_RUN_FLAGS.join(" ")} "${MAIN}" agent ` +
      "--port 0 --idle-exit 0",
      Deno.execPath(),
    ],
    env: { RELAY_AGENT_TOKEN_SHA256: await tokenDigest(TOKEN) },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const stderrDone = (async () => {
    for await (const chunk of agent.stderr.pipeThrough(new TextDecoderStream())) stderr += chunk;
  })();
  const stdout = agent.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const flood: Deno.Conn[] = [];
  let exited = false;
  agent.status.then(() => (exited = true));
  try {
    let ready = "";
    while (!/listening on 127\.0\.0\.1:(\d+)/.test(ready)) {
      const { value, done } = await stdout.read();
      if (done) throw new Error(`the agent exited before listening: ${stderr}`);
      ready += value;
    }
    const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(ready)![1]);

    // Twice the agent's descriptors: the kernel completes each connection, the agent cannot
    // take them all.
    for (let i = 0; i < LIMIT * 2; i++) {
      flood.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    }
    const deadline = Date.now() + 15_000;
    while (!/cannot accept a tunnel/.test(stderr) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert(
      /cannot accept a tunnel: .*(Too many open files|EMFILE)/i.test(stderr),
      `no accept failure was reported:\n${stderr}`,
    );
    assert(!exited, `the agent exited out of descriptors:\n${stderr}`);

    // Descriptors free again: a real tunnel is accepted and works.
    for (const conn of flood.splice(0)) conn.close();
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const tunnel = await connectTunnel(connDuplex(conn), {
      token: TOKEN,
      handshakeTimeoutMs: 20_000,
    });
    assertEquals(typeof await tunnel.ping(), "number");
    tunnel.close("done");
    await tunnel.closed;
    assert(!exited, "the agent exited");
  } finally {
    for (const conn of flood) conn.close();
    if (!exited) agent.kill("SIGTERM");
    await agent.status;
    await stdout.cancel().catch(() => {});
    await stderrDone;
  }
});
