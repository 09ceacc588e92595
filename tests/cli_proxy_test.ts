/**
 * `relay proxy` on the command line: its plan (port, credentials, forwards beside it, the
 * session's flags), and bad input as one line and exit 2, an open proxy above all.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { type CliIo, parseCommandLine } from "../lib/cli/program.ts";
import { parseProxyAuth } from "../lib/cli/proxy.ts";
import { UsageError } from "../lib/errors.ts";
import { isLoopback } from "../lib/net/address.ts";
import type { Plan } from "../lib/plan.ts";

const io: CliIo = {
  readTextFile: (path) => Promise.reject(new Deno.errors.NotFound(path)),
  readStdin: () => Promise.resolve(""),
};

async function plan(...argv: string[]): Promise<Plan> {
  const invocation = await parseCommandLine(argv, io);
  if (invocation.command !== "forward") throw new Error(`not a session: ${invocation.command}`);
  return invocation.plan;
}

Deno.test("relay proxy: port 1080 on localhost, no forwards, no credentials", async () => {
  const p = await plan("proxy");
  assertEquals(p.proxy, { port: 1080 });
  assertEquals(p.forwards, []);
  assertEquals(p.options.addresses, ["localhost"]);
});

Deno.test("relay proxy: the session's flags, forwards beside it, a free port", async () => {
  const p = await plan(
    "proxy",
    "-n",
    "shop",
    "--port",
    "0",
    "-l",
    "localhost",
    "--agent-namespace",
    "relay",
    "--patch",
    '{"metadata":{"labels":{"a":"b"}}}',
    "--tunnels",
    "3",
    "-v=4",
    "svc/db",
    "5432",
    "host/redis.example",
    "6379",
  );
  assertEquals(p.proxy, { port: 0 });
  assertEquals(p.options.namespace, "shop");
  assertEquals(p.options.agentNamespace, "relay");
  assertEquals(p.options.addresses, ["localhost"]);
  assertEquals(p.options.patch, { metadata: { labels: { a: "b" } } });
  assertEquals([p.options.tunnels, p.options.verbose], [3, true]);
  assertEquals(p.forwards.map((f) => `${f.target.kind}/${f.target.name}`), [
    "svc/db",
    "host/redis.example",
  ]);
  assertEquals(p.forwards[0].target.namespace, "shop");
});

Deno.test("relay proxy: beyond loopback with --proxy-auth; its password kept whole", async () => {
  const p = await plan("proxy", "-l", "0.0.0.0", "--proxy-auth", "alice:pa:ss word");
  assertEquals(p.proxy, { port: 1080, auth: { user: "alice", password: "pa:ss word" } });
  assertEquals((await plan("proxy", "-l", "::1,127.0.0.2")).proxy?.auth, undefined);
});

Deno.test("relay proxy --help describes it; relay --help lists it", async () => {
  const help = await parseCommandLine(["proxy", "--help"], io);
  assert(help.command === "print");
  assertStringIncludes(help.text, "Usage: relay proxy [flags]");
  assertStringIncludes(help.text, "--proxy-auth <user:password>");
  assertStringIncludes(help.text, "curl --socks5-hostname 127.0.0.1:1080");
  assert(!help.text.includes("--steal"), "the forwarding form's own flags are not the proxy's");
  const root = await parseCommandLine(["--help"], io);
  assert(root.command === "print");
  assertMatch(root.text, /\n {2}proxy \[options\].*SOCKS5 and HTTP proxy/);
});

/** Bad input and a part of its one-line message (never the password). */
const BAD: [argv: string[], message: string | RegExp][] = [
  [
    ["proxy", "-l", "0.0.0.0"],
    /^relay proxy -l 0\.0\.0\.0: listening beyond loopback needs --proxy-auth/,
  ],
  [["proxy", "-l", "127.0.0.1,192.168.1.5"], "relay proxy -l 192.168.1.5: "],
  [["proxy", "-l", "::"], "relay proxy -l ::: "],
  [["proxy", "--port", "70000"], 'relay proxy: --port "70000" is not a number 0–65535'],
  [["proxy", "--port", "http"], '--port "http"'],
  [["proxy", "--port", "-1"], "-1"],
  [
    ["proxy", "--proxy-auth", "alice"],
    'invalid --proxy-auth: expected USER:PASSWORD (no ":" in it)',
  ],
  [["proxy", "--proxy-auth", ":pw"], "the user before the first colon is empty"],
  [["proxy", "--proxy-auth", "alice:"], 'the password after "alice:" is empty'],
  [["proxy", "--proxy-auth", `${"u".repeat(256)}:pw`], "the user is 256 bytes; SOCKS5 allows 255"],
  [["proxy", "--proxy-auth", `u:${"p".repeat(300)}`], "the password is 300 bytes"],
  [["proxy", "--proxy-auth", "u:a\tb"], "control characters"],
  [["-n", "shop", "proxy"], 'flags go after "proxy" (relay proxy -n NS …), but --namespace'],
  [["proxy", "--steal"], "unknown option '--steal'"],
  [["proxy", "svc/db"], 'target "svc/db" has no ports'],
  [["proxy", "5432"], '"5432" looks like a port'],
];

Deno.test(`relay proxy: ${BAD.length} bad inputs are one-line UsageErrors, exit 2`, async (t) => {
  for (const [argv, message] of BAD) {
    await t.step(argv.join(" ").slice(0, 60), async () => {
      let caught: unknown;
      try {
        await parseCommandLine(argv, io);
      } catch (error) {
        caught = error;
      }
      assert(caught instanceof UsageError, `expected a UsageError, got ${caught}`);
      assertEquals(caught.exitCode, 2);
      assert(!caught.message.includes("\n"), caught.message);
      if (typeof message === "string") assertStringIncludes(caught.message, message);
      else assertMatch(caught.message, message);
      assert(!/pw|ppp/.test(caught.message), `no password in: ${caught.message}`);
    });
  }
});

Deno.test("relay proxy: an open proxy is refused by the real CLI, one line, exit 2", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-net",
      new URL("../main.ts", import.meta.url).pathname,
      "proxy",
      "-l",
      "0.0.0.0",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assertEquals(output.code, 2);
  assertEquals(output.stdout.length, 0);
  assertEquals(stderr.trimEnd().split("\n").length, 1, stderr);
  assertMatch(stderr, /^error: relay proxy -l 0\.0\.0\.0: .*--proxy-auth/);
});

Deno.test("relay proxy: a busy --port is exit 2 naming it, before any cluster work", async () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-net",
      new URL("../main.ts", import.meta.url).pathname,
      "proxy",
      "--port",
      String(busy.addr.port),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    // No cluster at all: the bind fails first.
    env: { KUBECONFIG: "/nonexistent/kubeconfig" },
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assertEquals(output.code, 2, stderr);
  assertEquals(
    stderr,
    `error: relay proxy: cannot listen on 127.0.0.1:${busy.addr.port}: the address is already ` +
      `in use (choose another --port, or --port 0 for a free one)\n`,
  );
});

Deno.test("--proxy-auth and loopback, directly", () => {
  assertEquals(parseProxyAuth("a:b"), { user: "a", password: "b" });
  assertEquals(parseProxyAuth("ü:ß"), { user: "ü", password: "ß" });
  for (const address of ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1", "[::1]"]) {
    assert(isLoopback(address), address);
  }
  for (const address of ["0.0.0.0", "::", "10.0.0.1", "::2", "fe80::1", "128.0.0.1"]) {
    assert(!isLoopback(address), address);
  }
});
