/**
 * Bad input, end to end: every malformed command line or input gets one line naming the bad
 * value, exit code 2, and nothing in the cluster — no agent Job, no pod, no ephemeral
 * container. Input that only the command line can get wrong is parsed in-process (fast);
 * what needs files, local ports or the API server runs the real CLI as a child process, and
 * a sample of the first kind runs that way too. tests/cli_parse_test.ts holds the grammar's
 * finer cases; this table covers each category once more with the whole program.
 */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import { parseCommandLine } from "../../lib/cli/program.ts";
import { describeError, EXIT_USAGE, exitCodeOf, UsageError } from "../../lib/errors.ts";
import {
  createTestNamespace,
  ensureCluster,
  KUBECONFIG,
  KUBECTL,
  kubectl,
  kubectlJson,
  readLine,
  runCommand,
  waitFor,
} from "./harness.ts";
import { inBatches } from "./agents.ts";
import { relayCommand, startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

/** The label every agent Job and pod carries. */
const AGENT_LABEL = "app.kubernetes.io/name";

/** One bad input: how to run it and what the one error line must say. */
interface BadInput {
  category: string;
  argv: string[];
  /** The bad value, which the line must contain verbatim. */
  bad: string;
  /** What the line must also say: what was expected, or why. */
  says?: RegExp;
  /** Run the real CLI as a child process (needed for files' effects, ports, the cluster). */
  child?: boolean;
  env?: Record<string, string>;
}

/** Files the -f, --patch-file and --kubeconfig rows read; made in a temporary directory. */
async function makeFiles(dir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {
    "targets-badport.txt": "svc/echo 8080:80\nsvc/echo 9090:\n",
    "targets-badkind.txt": "# one bad kind\ncronjob/nightly 80\n",
    "targets-empty.txt": "// nothing\n\n",
    "targets-dangling.txt": "svc/echo 80 --namespace\n",
    "patch-broken.yaml": "spec:\n  nodeSelector: {disk: ssd\n",
    "patch-list.json": '[{"op": "add"}]\n',
    "mirrord-off.yaml": "feature:\n  network:\n    incoming: off\n",
    "not-mirrord.yaml": "server:\n  port: 80\n",
    "mirrord-unknown.json": '{"target": "pod/echo-pod", "feature": {"network": {"incoming": ' +
      '{"mode": "steal", "filter": "x"}}}}\n',
    "kubeconfig-broken.yaml": "apiVersion: v1\nclusters: [{name: x, cluster: {server: \n",
  };
  const paths: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    paths[name] = `${dir}/${name}`;
    await Deno.writeTextFile(paths[name], text);
  }
  await Deno.mkdir(`${dir}/a-directory`);
  paths["a-directory"] = `${dir}/a-directory`;
  return paths;
}

function table(
  ns: string,
  files: Record<string, string>,
  busy: { tcp: number; udp: number },
  podIP: string,
): BadInput[] {
  return [
    // Target kinds.
    { category: "kind", argv: ["job/x", ":80"], bad: "job", says: /expected pod\/, svc\// },
    { category: "kind", argv: ["cronjob/nightly", ":80"], bad: "cronjob", child: true },
    { category: "kind", argv: ["secret/token", ":80"], bad: "secret", says: /unknown kind/ },
    { category: "kind", argv: ["deploy.batch/web", ":80"], bad: "deploy.batch" },
    { category: "kind", argv: ["ingress/web", ":80"], bad: "ingress" },
    // Ports.
    { category: "port", argv: ["svc/echo", "0"], bad: '"0"', says: /1–65535/, child: true },
    { category: "port", argv: ["svc/echo", "70000"], bad: "70000", says: /1–65535/ },
    { category: "port", argv: ["svc/echo", "8080:"], bad: "8080:", says: /remote port is missing/ },
    { category: "port", argv: ["svc/echo", "abc:80"], bad: "abc", says: /not a number/ },
    {
      category: "port",
      argv: ["-n", ns, `ip/${podIP}`, "abc"],
      bad: '"abc"',
      says: /give a number/,
      child: true,
    },
    // Named ports the target lacks (needs the API server).
    {
      category: "named port",
      argv: ["-n", ns, "svc/echo", ":nope"],
      bad: "nope",
      says: /it has greet=80/,
      child: true,
    },
    {
      category: "named port",
      argv: ["-n", ns, "pod/echo-pod", "8080:web"],
      bad: "web",
      says: /no container port named/,
      child: true,
    },
    {
      category: "named port",
      argv: ["-n", ns, "deploy/echo", ":metrics"],
      bad: "metrics",
      child: true,
    },
    { category: "named port", argv: ["-n", ns, "sts/echo-sts", ":grpc"], bad: "grpc", child: true },
    // Protocols.
    {
      category: "proto",
      argv: ["svc/echo", "80@sctp"],
      bad: "@sctp",
      says: /expected @tcp or @udp/,
    },
    { category: "proto", argv: ["svc/echo", "53@quic"], bad: "@quic", child: true },
    { category: "proto", argv: ["svc/echo", "53@"], bad: '"@"' },
    {
      category: "proto",
      argv: ["-n", ns, "svc/echo", ":9001@udp"],
      bad: "9001",
      says: /has no UDP \(it is TCP\)/,
      child: true,
    },
    // -L and -R.
    { category: "-L/-R", argv: ["-L", "7000"], bad: "7000", says: /expected \[local:\]host:port/ },
    { category: "-L/-R", argv: ["-L", "7000:db:0"], bad: "7000:db:0", child: true },
    { category: "-L/-R", argv: ["-L", "7000::5432"], bad: "7000::5432", says: /host is missing/ },
    { category: "-L/-R", argv: ["-L", "7000:no_such!:5432"], bad: "no_such!" },
    { category: "-L/-R", argv: ["-R", "9000"], bad: "9000", says: /needs --target/ },
    { category: "-L/-R", argv: ["-R", "0", "--target", "deploy/echo"], bad: '"0"', child: true },
    { category: "-L/-R", argv: ["-R", "9000:", "--target", "deploy/echo"], bad: "9000:" },
    { category: "-L/-R", argv: ["-R", "9000", "--target", "ip/10.0.0.1"], bad: "ip/10.0.0.1" },
    {
      category: "-L/-R",
      argv: ["-n", ns, "-f", files["mirrord-off.yaml"], "--target", "pod/echo-pod", "-R", "8080"],
      bad: "8080",
      says: /already in use.*incoming is off in .*mirrord-off\.yaml.*--steal or --mirror/,
      child: true,
    },
    {
      category: "-L/-R",
      argv: ["-n", ns, "--target", "pod/echo-pod", "-R", "8080", "--steal", "--mirror"],
      bad: "--steal and --mirror",
    },
    {
      category: "-f",
      argv: ["-n", ns, "-f", files["not-mirrord.yaml"], "--target", "pod/echo-pod", "-R", "8080"],
      bad: "not-mirrord.yaml",
      says: /not a mirrord config/,
      child: true,
    },
    {
      category: "-f",
      argv: ["-n", ns, "-f", files["mirrord-unknown.json"], "-R", "8080"],
      bad: "incoming.filter",
      says: /unknown key/,
      child: true,
    },
    {
      category: "patch",
      argv: ["-n", ns, "--patch", '{"spec":{"hostNetwork":true}}', "svc/echo", ":80"],
      bad: "hostNetwork",
      says: /node's network/,
      child: true,
    },
    {
      category: "-L/-R",
      argv: ["--target", "deploy/echo", "-R", "9000", "-R", "9000:9001"],
      bad: "9000",
      says: /reversed twice/,
    },
    {
      category: "-L/-R",
      argv: ["-n", ns, "--target", "pod/no-such-pod", "-R", "9000"],
      bad: "no-such-pod",
      says: /not found/,
      child: true,
    },
    {
      category: "-L/-R",
      argv: ["-n", ns, "--target", "deploy/echo", "-R", "5353@udp"],
      bad: "5353@udp",
      says: /UDP/,
      child: true,
    },
    {
      category: "-L/-R",
      argv: ["-n", ns, "--target", "deploy/echo", "--patch", "{}", "-L", "7000:echo:80"],
      bad: "--patch",
      says: /joins that pod/,
      child: true,
    },
    // Targets files.
    {
      category: "-f",
      argv: ["-f", `${files["a-directory"]}/missing.txt`],
      bad: "missing.txt",
      says: /no such file/,
      child: true,
    },
    { category: "-f", argv: ["-f", files["a-directory"]], bad: "a-directory", says: /directory/ },
    { category: "-f", argv: ["-f", files["targets-badport.txt"]], bad: "9090:", says: /:2:/ },
    { category: "-f", argv: ["-f", files["targets-badkind.txt"]], bad: "cronjob", says: /:2:/ },
    { category: "-f", argv: ["-f", files["targets-empty.txt"]], bad: "targets-empty.txt" },
    { category: "-f", argv: ["-f", files["targets-dangling.txt"]], bad: "--namespace" },
    // Patches: malformed, and well-formed but not an agent the cluster or relay can run.
    {
      category: "patch",
      argv: ["--patch", "{spec: [", "svc/echo", ":80"],
      bad: "--patch",
      says: /not JSON or YAML/,
    },
    {
      category: "patch",
      argv: ["--patch", "true", "svc/echo", ":80"],
      bad: "--patch",
      says: /expected an object/,
    },
    {
      category: "patch",
      argv: ["--patch-file", files["patch-broken.yaml"], "svc/echo", ":80"],
      bad: "patch-broken.yaml",
      child: true,
    },
    {
      category: "patch",
      argv: ["--patch-file", files["patch-list.json"], "svc/echo", ":80"],
      bad: "patch-list.json",
    },
    {
      category: "patch",
      argv: ["-n", ns, "--patch", '{"spec":{"restartPolicy":"Sometimes"}}', `ip/${podIP}`, ":80"],
      bad: '"Sometimes"',
      says: /check --patch/,
      child: true,
    },
    {
      category: "patch",
      argv: ["-n", ns, "--patch", '{"spec":{"containers":[]}}', `ip/${podIP}`, ":80"],
      bad: '"agent" container',
      child: true,
    },
    // The kubeconfig, its context, the namespace.
    {
      category: "kubeconfig/context/namespace",
      argv: ["--kubeconfig", "/nonexistent/relay-kubeconfig", "svc/echo", ":80"],
      bad: "/nonexistent/relay-kubeconfig",
      says: /does not exist/,
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["svc/echo", ":80"],
      env: { KUBECONFIG: "/nonexistent/a:/nonexistent/b" },
      bad: "/nonexistent/a",
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["--kubeconfig", files["kubeconfig-broken.yaml"], "svc/echo", ":80"],
      bad: "kubeconfig-broken.yaml",
      says: /cannot be read/,
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["--context", "no-such-context", "svc/echo", ":80"],
      bad: "no-such-context",
      says: /not found in the kubeconfig/,
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["--context", "relay-local-typo", "-n", ns, `ip/${podIP}`, ":80"],
      bad: "relay-local-typo",
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["-n", `${ns}-gone`, "svc/echo", ":80"],
      bad: `${ns}-gone`,
      says: /not found/,
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["-n", `${ns}-gone`, `ip/${podIP}`, ":80"],
      bad: `${ns}-gone`,
      says: /namespace .* not found/,
      child: true,
    },
    {
      category: "kubeconfig/context/namespace",
      argv: ["-n", ns, "--agent-namespace", `${ns}-nowhere`, `ip/${podIP}`, ":80"],
      bad: `${ns}-nowhere`,
      says: /not found/,
      child: true,
    },
    // Objects that do not exist.
    {
      category: "missing object",
      argv: ["-n", ns, "svc/no-such-svc", ":80"],
      bad: "svc/no-such-svc",
      says: /not found in namespace/,
      child: true,
    },
    {
      category: "missing object",
      argv: ["-n", ns, "deploy/no-such-deploy", ":80"],
      bad: "deploy/no-such-deploy",
      child: true,
    },
    {
      category: "missing object",
      argv: ["-n", ns, "pod/no-such-pod", ":80"],
      bad: "pod/no-such-pod",
      child: true,
    },
    {
      category: "missing object",
      argv: ["-n", ns, "sts/no-such-sts", ":80"],
      bad: "sts/no-such-sts",
      child: true,
    },
    {
      category: "missing object",
      argv: ["-n", ns, "svc/echo", ":80", "ds/no-such-ds", ":81"],
      bad: "ds/no-such-ds",
      child: true,
    },
    // Local addresses that cannot be bound.
    {
      category: "bind",
      argv: ["-n", ns, "svc/echo", `${busy.tcp}:80`],
      bad: `127.0.0.1:${busy.tcp}`,
      says: /already in use/,
      child: true,
    },
    {
      category: "bind",
      argv: ["-n", ns, `ip/${podIP}`, `${busy.udp}:9000@udp`],
      bad: `${busy.udp}`,
      says: /already in use/,
      child: true,
    },
    {
      category: "bind",
      argv: ["-n", ns, "--address", "192.0.2.77", "svc/echo", "8080:80"],
      bad: "192.0.2.77",
      says: /no such address/,
      child: true,
    },
    {
      category: "bind",
      argv: ["-n", ns, "-L", `${busy.tcp}:${podIP}:8080`],
      bad: `${busy.tcp}`,
      child: true,
    },
    {
      category: "bind",
      argv: ["--address", "example.com", "svc/echo", ":80"],
      bad: "example.com",
      says: /expected an IP address/,
    },
  ];
}

/** The one error line relay printed for `row`, after checking the exit code is 2. */
async function errorLine(row: BadInput): Promise<string> {
  if (!row.child) {
    let caught: unknown;
    try {
      await parseCommandLine(row.argv);
    } catch (error) {
      caught = error;
    }
    assert(caught instanceof UsageError, `not a UsageError: ${caught}`);
    assertEquals(exitCodeOf(caught), EXIT_USAGE);
    return describeError(caught);
  }
  const result = await runCommand(relayCommand(row.argv), {
    env: { KUBECONFIG, ...row.env },
  });
  assertEquals(result.code, EXIT_USAGE, `exit code ${result.code}:\n${result.stderr}`);
  assertEquals(result.stdout, "");
  const lines = result.stderr.trimEnd().split("\n");
  assertEquals(lines.length, 1, `one line, got:\n${result.stderr}`);
  return lines[0];
}

/**
 * What relay might have left in `namespace`: agent Jobs, pods and token Secrets, ephemeral
 * containers.
 */
async function leftovers(namespace: string): Promise<string[]> {
  const list = await kubectlJson<{
    items: {
      kind: string;
      metadata: { name: string; labels?: Record<string, string> };
      spec?: { ephemeralContainers?: unknown[] };
    }[];
  }>(["get", "jobs,pods,secrets", "-n", namespace]);
  return list.items.filter((item) =>
    item.metadata.labels?.[AGENT_LABEL] === "relay-agent" ||
    (item.spec?.ephemeralContainers?.length ?? 0) > 0
  ).map((item) => `${item.kind}/${item.metadata.name}`);
}

Deno.test({
  name:
    "story: 50+ bad command lines and inputs each get one line naming the bad value, exit code 2, and leave no Job, pod or ephemeral container",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    await ensureCluster();
    await using ns = await createTestNamespace("bad-input");
    const echo = await createEchoWorkloads(ns.name, ["pod", "deploy", "sts"]);
    const podIP = (await kubectl(
      ["get", "pod", echo.pods.pod, "-n", ns.name, "-o", "jsonpath={.status.podIP}"],
    )).trim();
    const dir = await Deno.makeTempDir({ prefix: "relay-bad-input-" });
    // Ports some other program holds, so relay's bind fails.
    using busyTcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const busyUdp = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    try {
      const rows = table(ns.name, await makeFiles(dir), {
        tcp: (busyTcp.addr as Deno.NetAddr).port,
        udp: (busyUdp.addr as Deno.NetAddr).port,
      }, podIP);
      assert(rows.length >= 50, `${rows.length} rows`);
      const perCategory = Map.groupBy(rows, (r) => r.category);
      for (const [category, group] of perCategory) {
        assert(group.length >= 3, `category ${category} has ${group.length} rows`);
      }
      assertEquals(perCategory.size, 10);
      assert(rows.filter((r) => r.child).length >= 25, "a real child process for a good share");

      const failures: string[] = [];
      await inBatches(rows, 3, async (row) => {
        const label = `[${row.category}] relay ${row.argv.join(" ")}`;
        try {
          const line = await errorLine(row);
          assert(line.includes(row.bad), `"${line}" does not name ${row.bad}`);
          if (row.says) assertMatch(line, row.says);
          assert(!/\bat .*:\d+:\d+/.test(line), `a stack trace: ${line}`);
          if (row.child && row.argv.includes(ns.name)) {
            const left = await leftovers(ns.name);
            assertEquals(left, [], `${label} left ${left.join(", ")}`);
          }
        } catch (error) {
          failures.push(`${label}: ${error instanceof Error ? error.message : error}`);
        }
      });
      await t.step("every row passed", () => assertEquals(failures, []));

      // And at the end, nothing anywhere the table pointed at.
      assertEquals(await leftovers(ns.name), []);
      for (const gone of [`${ns.name}-gone`, `${ns.name}-nowhere`]) {
        const result = await runCommand([
          KUBECTL,
          `--kubeconfig=${KUBECONFIG}`,
          "get",
          "namespace",
          gone,
        ]);
        assert(result.code !== 0, `namespace ${gone} exists`);
      }
    } finally {
      busyUdp.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "story: a hostname that does not resolve is not bad input — the forward starts and each connection to it fails with a clear line",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("bad-host");
    const name = "no-such-host.invalid";
    await using relay = await startRelay(["-n", ns.name, `host/${name}`, ":80"]);
    for (let i = 0; i < 2; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[0] });
      // The connection is closed with nothing said: the name did not resolve in the cluster.
      assertEquals(await readLine(conn), "");
      conn.close();
    }
    const failed = await (async () => {
      for (let tries = 0; tries < 50; tries++) {
        const lines = relay.stderr().split("\n").filter((l) => l.includes(name));
        if (lines.length >= 2) return lines;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      return relay.stderr().split("\n").filter((l) => l.includes(name));
    })();
    assertEquals(failed.length, 2, relay.stderr());
    for (const line of failed) {
      assertMatch(line, /connection to host\/no-such-host\.invalid:80 failed/);
    }
    assertEquals(await relay.stop(), 0, relay.stderr());
    // relay deleted the Job; the garbage collector then deletes its pod.
    await waitFor(
      "the agent's Job and pod to be gone",
      async () => (await leftovers(ns.name)).length === 0 || undefined,
      { timeoutMs: 30_000 },
    );
  },
});
