/** The real CLI as a child process: what a user sees on stdout/stderr and the exit code. */
import { ok, strictEqual } from "node:assert/strict";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function relay(...args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-net", MAIN, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

const BAD: [args: string[], mentions: string][] = [
  [["svc/x", "70000"], '"70000"'],
  [["--bogus", "svc/x", "80"], "--bogus"],
  [["job/x", "80"], '"job"'],
  [["-f", "/nonexistent/targets.txt"], "/nonexistent/targets.txt"],
  [["-L", "8080:::1:80"], "8080:::1:80"],
  [["--patch", "{a: [", "svc/x", "80"], "--patch"],
];

for (const [args, mentions] of BAD) {
  Deno.test(`relay ${args.join(" ")}: one line on stderr, exit 2`, async () => {
    const { code, stdout, stderr } = await relay(...args);
    strictEqual(code, 2);
    strictEqual(stdout, "");
    strictEqual(stderr.trimEnd().split("\n").length, 1, stderr);
    ok(stderr.startsWith("error: "), stderr);
    ok(stderr.includes(mentions), stderr);
  });
}

Deno.test("a busy local port is exit 2 naming address:port, before any cluster work", async () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = busy.addr.port;
  const { code, stderr } = await relay("pod/x", `${port}`);
  strictEqual(code, 2);
  strictEqual(stderr.trimEnd().split("\n").length, 1, stderr);
  ok(stderr.includes(`127.0.0.1:${port}/tcp`), stderr);
  ok(stderr.includes("already in use"), stderr);
});

Deno.test("relay --help prints usage and examples on stdout, exit 0", async () => {
  const { code, stdout, stderr } = await relay("--help");
  strictEqual(code, 0);
  strictEqual(stderr, "");
  ok(stdout.startsWith("Usage: relay "), stdout);
  for (const needle of ["Examples:", "--address", "-L, --port-forward", "--patch-file", "agent"]) {
    ok(stdout.includes(needle), needle);
  }
});

Deno.test("relay -V and relay version print the version, exit 0", async () => {
  for (const args of [["-V"], ["--version"], ["version"]]) {
    const { code, stdout, stderr } = await relay(...args);
    strictEqual(code, 0);
    strictEqual(stderr, "");
    const agentLine = args[0] === "version" ? "agent image \\S+relay-agent:\\S+\\n" : "";
    ok(new RegExp(`^relay \\d+\\.\\d+\\.\\d+\\S*\\n${agentLine}$`).test(stdout), stdout);
  }
});

Deno.test("one Ctrl-C ends relay at once while an API server that never answers holds its first call", async () => {
  // Accepts connections and never says a word, as a hung API server or a black-holing proxy.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })().catch(() => {});
  const dir = await Deno.makeTempDir({ prefix: "relay-silent-" });
  try {
    const kubeconfig = `${dir}/config`;
    await Deno.writeTextFile(
      kubeconfig,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "c", cluster: { server: `http://127.0.0.1:${silent.addr.port}` } }],
        users: [{ name: "u", user: { token: "t" } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--unstable-net", MAIN, "--kubeconfig", kubeconfig, "pod/x", ":80"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    // Until its first call reaches the server, then a little longer.
    const deadline = Date.now() + 20_000;
    while (held.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    ok(held.length > 0, "relay never called the API server");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const signalled = Date.now();
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
    const { code } = await child.output();
    clearTimeout(timer);
    ok(Date.now() - signalled < 5_000, "relay did not stop on the first Ctrl-C");
    strictEqual(code, 0);
  } finally {
    silent.close();
    for (const conn of held) conn.close();
    await accepting;
    await Deno.remove(dir, { recursive: true });
  }
});
