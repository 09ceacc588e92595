/**
 * The agent's netfilter rules for steal and mirror, against a recording iptables: which
 * rules it writes (the agent's own group exempt on OUTPUT), that removing a port removes
 * exactly its rules, and that a dead agent's chains are swept while a live one's stay.
 * The real rules in a real pod are proven by tests/e2e/steal_mirror_test.ts.
 */
import { deepStrictEqual, ok, rejects } from "node:assert/strict";
import { type IptablesRunner, podFamilies, PortRedirects, sweepStale } from "../agent/netfilter.ts";
import {
  appAddress,
  hasNetAdmin,
  listenersOn,
  parseListeners,
  podAddresses,
} from "../agent/port_owners.ts";
import { OpenError } from "../lib/tunnel/types.ts";

function recorder(fail?: (args: string[]) => string | undefined) {
  const calls: string[] = [];
  const run: IptablesRunner = (family, args) => {
    calls.push(`${family} ${args.join(" ")}`);
    const why = fail?.(args);
    return why ? Promise.reject(new Error(why)) : Promise.resolve("");
  };
  return { calls, run };
}

Deno.test("a stolen port is redirected from outside and from lo, except the agent's group", async () => {
  const { calls, run } = recorder();
  const redirects = new PortRedirects({
    agentPort: 4646,
    agentGid: 64646,
    families: ["ipv4"],
    run,
  });
  await redirects.add(80, 31000);
  const added = calls.filter((c) => c.includes(" -A ") || c.includes(" -N ") || c.includes(" -I "));
  deepStrictEqual(added, [
    "ipv4 -t nat -N RELAY-4646-IN",
    "ipv4 -t nat -N RELAY-4646-OUT",
    "ipv4 -t nat -I PREROUTING 1 -j RELAY-4646-IN",
    "ipv4 -t nat -I OUTPUT 1 -j RELAY-4646-OUT",
    "ipv4 -t nat -A RELAY-4646-IN -p tcp --dport 80 -j REDIRECT --to-ports 31000",
    "ipv4 -t nat -A RELAY-4646-OUT -o lo -p tcp --dport 80 -m owner ! --gid-owner 64646 -j REDIRECT --to-ports 31000",
  ]);
  calls.length = 0;
  await redirects.remove(80);
  deepStrictEqual(calls, [
    "ipv4 -t nat -D RELAY-4646-IN -p tcp --dport 80 -j REDIRECT --to-ports 31000",
    "ipv4 -t nat -D RELAY-4646-OUT -o lo -p tcp --dport 80 -m owner ! --gid-owner 64646 -j REDIRECT --to-ports 31000",
  ]);
  calls.length = 0;
  await redirects.removeAll();
  ok(calls.includes("ipv4 -t nat -X RELAY-4646-IN"), calls.join("\n"));
  ok(calls.includes("ipv4 -t nat -D OUTPUT -j RELAY-4646-OUT"), calls.join("\n"));
});

Deno.test("an agent in group 0 redirects nothing: it could not exempt its own connections", async () => {
  const { calls, run } = recorder();
  const redirects = new PortRedirects({ agentPort: 1, agentGid: 0, families: ["ipv4"], run });
  await rejects(
    redirects.add(80, 2),
    (e: unknown) => e instanceof OpenError && /group 0/.test(e.message),
  );
  deepStrictEqual(calls, []);
});

Deno.test("without NET_ADMIN the redirect is refused as forbidden, naming the capability", async () => {
  const { run } = recorder((args) =>
    args.includes("-N") ? "iptables: Permission denied (you must be root)" : undefined
  );
  const redirects = new PortRedirects({ agentPort: 1, agentGid: 5, families: ["ipv4"], run });
  await rejects(
    redirects.add(80, 2),
    (e: unknown) => e instanceof OpenError && e.code === "forbidden" && /NET_ADMIN/.test(e.message),
  );
});

Deno.test("a port another live session's agent redirects is refused; a dead agent's rules are removed", async () => {
  const table = "-N RELAY-20001-IN\n-N RELAY-20001-OUT\n" +
    "-A RELAY-20001-IN -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 31000\n" +
    "-A RELAY-20001-IN -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 31001\n";
  const setUp = (alive: boolean) => {
    const calls: string[] = [];
    const run: IptablesRunner = (_family, args) => {
      calls.push(args.join(" "));
      return Promise.resolve(args.includes("-S") ? table : "");
    };
    const redirects = new PortRedirects({
      agentPort: 4646,
      agentGid: 64646,
      families: ["ipv4"],
      run,
      listening: (port) => Promise.resolve(alive && port === 20001 ? ["0.0.0.0"] : []),
    });
    return { calls, redirects };
  };
  const live = setUp(true);
  await rejects(
    live.redirects.add(80, 32000),
    (e: unknown) =>
      e instanceof OpenError && e.code === "forbidden" &&
      /another relay session already steals or mirrors port 80/.test(e.message),
  );
  ok(!live.calls.some((c) => c.includes(" -A ") || c.includes("-X")), live.calls.join("\n"));
  // Another port of the same pod is free to take.
  await live.redirects.add(443, 32001);

  const dead = setUp(false);
  await dead.redirects.add(80, 32000);
  ok(dead.calls.includes("-t nat -X RELAY-20001-IN"), dead.calls.join("\n"));
  ok(dead.calls.some((c) => c.startsWith("-t nat -A RELAY-4646-IN")), dead.calls.join("\n"));
});

Deno.test("the sweep removes the chains of agents nobody listens for, and only those", async () => {
  const calls: string[] = [];
  const run: IptablesRunner = (_family, args) => {
    calls.push(args.join(" "));
    if (args.includes("-S")) {
      return Promise.resolve(
        "-P PREROUTING ACCEPT\n-N RELAY-20001-IN\n-N RELAY-20001-OUT\n-N RELAY-20002-IN\n" +
          "-N RELAY-20002-OUT\n-N KUBE-SERVICES\n-A PREROUTING -j RELAY-20001-IN\n",
      );
    }
    return args.includes("-D") && calls.filter((c) => c === args.join(" ")).length > 1
      ? Promise.reject(new Error("no such rule"))
      : Promise.resolve("");
  };
  const alive = (port: number) => Promise.resolve(port === 20002 ? ["127.0.0.1"] : []);
  deepStrictEqual(await sweepStale(["ipv4"], 4646, run, alive), [20001]);
  ok(calls.includes("-t nat -X RELAY-20001-IN") && calls.includes("-t nat -X RELAY-20001-OUT"));
  ok(!calls.some((c) => c.includes("20002") || c.includes("KUBE")), calls.join("\n"));
});

Deno.test("listeners are read from the kernel's tables, IPv4 and IPv6, and a live one is seen", async () => {
  const table = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
    "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0",
    "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0",
    "   2: 0100007F:0050 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0",
  ].join("\n");
  deepStrictEqual(parseListeners(table, 80), ["0.0.0.0"]);
  deepStrictEqual(parseListeners(table, 8080), ["127.0.0.1"]);
  const v6 = "  sl  local_address\n   0: 00000000000000000000000001000000:0050 " +
    "00000000000000000000000000000000:0000 0A 0";
  deepStrictEqual(parseListeners(v6, 80), ["::1"]);
  deepStrictEqual(appAddress(["::"]), "::1");
  deepStrictEqual(appAddress(["10.1.2.3"]), "10.1.2.3");
  deepStrictEqual(appAddress([]), undefined);
  // An app on every address is reached at the pod's own address, never from loopback, which
  // it may trust; one on loopback alone can only be reached there.
  const pod = { ipv4: "198.18.0.7" };
  deepStrictEqual(appAddress(["0.0.0.0"], pod), "198.18.0.7");
  deepStrictEqual(appAddress(["::"], pod), "198.18.0.7");
  deepStrictEqual(appAddress(["::"], { ...pod, ipv6: "fd00::7" }), "fd00::7");
  deepStrictEqual(appAddress(["127.0.0.1"], pod), "127.0.0.1");
  deepStrictEqual(appAddress(["::ffff:127.0.0.1"], pod), "127.0.0.1");
  deepStrictEqual(appAddress(["::1"], pod), "::1");
  const mine = podAddresses();
  ok(mine.ipv4 === undefined || !mine.ipv4.startsWith("127."), JSON.stringify(mine));
  using server = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  deepStrictEqual(await listenersOn(server.addr.port), ["127.0.0.1"]);
  ok(typeof await hasNetAdmin() === "boolean");
});

Deno.test("podFamilies: IPv6 with an address beyond lo; with ::1 alone, when ip6tables' nat answers", async () => {
  const lo = "00000000000000000000000000000001 01 80 10 80       lo";
  const global = "fd000000000000000000000000000007 02 40 00 80     eth0";
  const linkLocal = "fe800000000000000000000000000007 02 40 20 80     eth0";
  const works: IptablesRunner = () => Promise.resolve("");
  const fails: IptablesRunner = () =>
    Promise.reject(new Error("can't initialize ip6tables table `nat'"));
  const table = (...lines: string[]) => () => Promise.resolve(lines.join("\n") + "\n");
  deepStrictEqual(await podFamilies(fails, table(lo, global)), ["ipv4", "ipv6"]);
  // In-pod callers of localhost over ::1 are redirected too, where ip6tables can.
  deepStrictEqual(await podFamilies(works, table(lo, linkLocal)), ["ipv4", "ipv6"]);
  deepStrictEqual(await podFamilies(fails, table(lo, linkLocal)), ["ipv4"]);
  deepStrictEqual(await podFamilies(works, table()), ["ipv4"]);
  deepStrictEqual(await podFamilies(works, () => Promise.reject(new Deno.errors.NotFound())), [
    "ipv4",
  ]);
});
