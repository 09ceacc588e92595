/**
 * The agent's destination policy (issue: "the agent dials anything it is asked"): an agent
 * started with the session's destinations opens those and refuses the rest with `denied`,
 * including its own port, loopback and link-local addresses (cloud metadata) reached by
 * literal or by a name that resolves there; a rule that names them explicitly allows them.
 */
import { deepStrictEqual, ok, rejects, throws } from "node:assert/strict";
import { startAgent } from "../agent/mod.ts";
import { DestinationPolicy, guarded } from "../agent/policy.ts";
import { parseAgentArgs } from "../lib/cli/agent_args.ts";
import { type DestinationRule, parseDestinationRule, tokenDigest } from "../lib/contract.ts";
import { UsageError } from "../lib/errors.ts";
import { agentArgs } from "../lib/kube/agent_manifest.ts";
import { connDuplex } from "../lib/net/mod.ts";
import { connectTunnel, OpenError, type OpenRequest } from "../lib/tunnel/mod.ts";

const TOKEN = "policy-test-token";
const TOKEN_DIGEST = await tokenDigest(TOKEN);
const tcp = (host: string, port: number): OpenRequest => ({ protocol: "tcp", host, port });
const isDenied = (error: unknown) => error instanceof OpenError && error.code === "denied";

Deno.test("a policy admits the named destinations and denies the rest", () => {
  const rules: DestinationRule[] = [
    { protocol: "tcp", host: "10.96.0.7", port: 5432 },
    { protocol: "tcp", host: "redis.example", port: 6379 },
    { protocol: "tcp", host: "*", port: 8080 },
    { protocol: "udp", host: "fd00::53", port: 53 },
  ];
  const policy = new DestinationPolicy(rules);
  ok(policy.admit(tcp("10.96.0.7", 5432)));
  ok(policy.admit(tcp("Redis.Example", 6379)), "names compare without case");
  ok(policy.admit(tcp("198.18.4.4", 8080)), "any address on a workload's port");
  ok(policy.admit({ protocol: "udp", host: "fd00:0:0::53", port: 53 }), "IPv6 in any spelling");
  for (
    const request of [
      tcp("10.96.0.7", 5433),
      tcp("10.96.0.8", 5432),
      tcp("redis.example", 6380),
      { protocol: "udp" as const, host: "10.96.0.7", port: 5432 },
      tcp("169.254.169.254", 80),
    ]
  ) {
    throws(() => policy.admit(request), isDenied, JSON.stringify(request));
  }
  // Unrestricted (a hand-run agent) and `any` admit everything.
  deepStrictEqual(new DestinationPolicy(undefined).admit(tcp("1.2.3.4", 1)), undefined);
  deepStrictEqual(new DestinationPolicy("any").admit(tcp("1.2.3.4", 1)), null);
});

Deno.test("loopback and link-local addresses pass only a rule that names them", () => {
  for (
    const address of [
      "127.0.0.1",
      "127.9.9.9",
      "::1",
      "::",
      "0.0.0.0",
      "169.254.169.254",
      "fe80::1",
      "fd00:ec2::254",
      "::ffff:127.0.0.1",
    ]
  ) {
    ok(guarded(address), address);
  }
  for (const address of ["10.0.0.1", "198.18.0.5", "fd00::53", "2001:db8::1", "169.255.0.1"]) {
    ok(!guarded(address), address);
  }
  const wildcard = new DestinationPolicy([{ protocol: "tcp", host: "*", port: 80 }]);
  const request = tcp("metadata.internal", 80);
  const rule = wildcard.admit(request);
  throws(() => wildcard.screen(request, rule, ["169.254.169.254"]), isDenied);
  deepStrictEqual(wildcard.screen(request, rule, ["169.254.169.254", "10.0.0.9"]), ["10.0.0.9"]);
  const any = new DestinationPolicy("any");
  throws(
    () => any.screen(tcp("127.0.0.1", 4646), any.admit(tcp("127.0.0.1", 4646)), ["127.0.0.1"]),
    isDenied,
  );
  const named = new DestinationPolicy([
    { protocol: "tcp", host: "localhost", port: 5432 },
    { protocol: "tcp", host: "169.254.169.254", port: 80 },
  ]);
  const local = tcp("localhost", 5432);
  deepStrictEqual(named.screen(local, named.admit(local), ["127.0.0.1"]), ["127.0.0.1"]);
  const metadata = tcp("169.254.169.254", 80);
  deepStrictEqual(named.screen(metadata, named.admit(metadata), ["169.254.169.254"]), [
    "169.254.169.254",
  ]);
});

Deno.test("relay writes the agent's --allow flags and the agent reads them back", () => {
  const allow: DestinationRule[] = [
    { protocol: "tcp", host: "10.96.0.7", port: 5432 },
    { protocol: "udp", host: "*", port: 53 },
    { protocol: "tcp", host: "fd00::1", port: 80 },
  ];
  const args = agentArgs({ allow });
  deepStrictEqual(args.filter((_, i) => args[i - 1] === "--allow"), [
    "tcp/10.96.0.7/5432",
    "udp/*/53",
    "tcp/fd00::1/80",
  ]);
  const parsed = parseAgentArgs(args.slice(1));
  ok("run" in parsed);
  deepStrictEqual(parsed.run.allow, allow);
  deepStrictEqual(
    ("run" in parseAgentArgs(["--allow", "any"])) && parseAgentArgs(["--allow", "any"]),
    { run: { allow: "any" } },
  );
  throws(
    () => parseAgentArgs(["--allow", "tcp/x"]),
    (e: unknown) => e instanceof UsageError && /"tcp\/x"/.test(e.message),
  );
  deepStrictEqual(parseDestinationRule("sctp/x/1"), undefined);
});

Deno.test("an agent with a policy refuses its own port, metadata and unnamed hosts; opens what was named", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = (async () => {
    for await (const conn of target) conn.close();
  })();
  const agent = startAgent({
    tokenDigest: TOKEN_DIGEST,
    port: 0,
    idleExitMs: 0,
    log: () => {},
    // The test's destination is on loopback, so it is named by literal, as ip/127.0.0.1 would.
    allow: [
      { protocol: "tcp", host: "127.0.0.1", port: target.addr.port },
      { protocol: "tcp", host: "*", port: 80 },
    ],
    dialer: {
      resolve: (host) =>
        Promise.resolve(host === "metadata.google.internal" ? ["169.254.169.254"] : ["10.0.0.1"]),
    },
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: agent.port });
  const tunnel = await connectTunnel(connDuplex(conn), { token: TOKEN });
  try {
    const stream = await tunnel.open(tcp("127.0.0.1", target.addr.port));
    stream.reset();
    await rejects(tunnel.open(tcp("127.0.0.1", agent.port)), isDenied, "its own port");
    await rejects(tunnel.open(tcp("169.254.169.254", 80)), isDenied, "metadata by literal");
    await rejects(tunnel.open(tcp("metadata.google.internal", 80)), isDenied, "metadata by name");
    await rejects(tunnel.open(tcp("10.0.0.1", 22)), isDenied, "a port nobody named");
    await rejects(tunnel.open({ protocol: "udp", host: "10.0.0.1", port: 80 }), isDenied, "UDP");
  } finally {
    await tunnel.close("done");
    agent.stop("test over");
    await agent.finished;
    target.close();
    await accepted.catch(() => {});
  }
});
