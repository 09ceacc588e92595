/** bindAgentPortEarly (agent/early_listener.ts): which arguments it binds for, and on what. */
import { tokenDigest } from "../lib/contract.ts";
import { assert, assertEquals } from "./assert.ts";
import { bindAgentPortEarly } from "../agent/early_listener.ts";
import { startAgent } from "../agent/server.ts";

const TOKEN = "t";
const TOKEN_DIGEST = await tokenDigest(TOKEN);

/** A port that was free a moment ago. */
function freePort(): number {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = probe.addr as Deno.NetAddr;
  probe.close();
  return port;
}

Deno.test("bindAgentPortEarly: binds 127.0.0.1 on the port of --port N or --port=N", () => {
  for (const form of [(p: number) => ["--port", String(p)], (p: number) => [`--port=${p}`]]) {
    const port = freePort();
    const listener = bindAgentPortEarly([...form(port), "--idle-exit", "20s"]);
    assert(listener, `bound for ${form(port).join(" ")}`);
    try {
      const addr = listener.addr as Deno.NetAddr;
      assertEquals([addr.hostname, addr.port], ["127.0.0.1", port]);
    } finally {
      listener.close();
    }
  }
});

Deno.test("bindAgentPortEarly: leaves help, odd or repeated ports, and a busy port to the agent's own parser and bind", () => {
  const port = freePort();
  for (
    const args of [
      ["--help"],
      ["-h", "--port", String(port)],
      ["--port", "0"],
      ["--port", "70000"],
      ["--port", "http"],
      ["--port"],
      ["--port", String(port), `--port=${port}`],
    ]
  ) {
    const listener = bindAgentPortEarly(args);
    listener?.close();
    assertEquals(listener, undefined, args.join(" "));
  }
  const taken = Deno.listen({ hostname: "127.0.0.1", port });
  try {
    assertEquals(bindAgentPortEarly(["--port", String(port)]), undefined);
  } finally {
    taken.close();
  }
});

Deno.test("startAgent: serves on a listener bound before it started", async () => {
  const port = freePort();
  const listener = bindAgentPortEarly(["--port", String(port)]);
  assert(listener);
  const agent = startAgent({ tokenDigest: TOKEN_DIGEST, listener, log: () => {} });
  try {
    assertEquals(agent.port, port);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
  } finally {
    agent.stop("test over");
    assertEquals(await agent.finished, 0);
  }
});
