/**
 * How -R takes a port the app serves: --steal, --mirror, or mirrord's config file given to
 * -f (JSON, YAML or TOML), told apart from krelay's targets file by content and name.
 */
import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { type CliIo, parseCommandLine } from "../lib/cli/program.ts";
import { UsageError } from "../lib/errors.ts";
import { formatReverseReadyLine } from "../lib/log.ts";
import type { Plan } from "../lib/plan.ts";

const FILES: Record<string, string> = {
  "mirrord.json": JSON.stringify({
    target: { path: "deploy/web", namespace: "shop" },
    feature: { network: { incoming: "steal", outgoing: true }, fs: "local" },
  }),
  "mirrord.yaml": "target: pod/web-0\nfeature:\n  network:\n    incoming:\n      mode: mirror\n" +
    "      port_mapping: [[80, 8080]]\n      ignore_ports: [9999]\n",
  "mirrord.toml": '[target]\npath = "deploy/web"\n\n[feature.network]\nincoming = "off"\n',
  "incoming-true.json": '{"feature": {"network": {"incoming": true}}}',
  "unknown-key.yaml":
    "feature:\n  network:\n    incoming:\n      mode: steal\n      stealing: yes\n",
  "http-filter.json": JSON.stringify({
    feature: {
      network: {
        incoming: { mode: "steal", http_filter: { header_filter: "^x-dev: me$", ports: [80] } },
      },
    },
  }),
  "filter-any-of.json": JSON.stringify({
    feature: { network: { incoming: { mode: "steal", http_filter: { any_of: [] } } } },
  }),
  "filter-mirror.yaml":
    "feature:\n  network:\n    incoming:\n      mode: mirror\n      http_filter:\n        path_filter: ^/api\n",
  "bad-mode.json": '{"feature": {"network": {"incoming": "borrow"}}}',
  "network-true.json":
    '{"target": "pod/echo", "feature": {"env": true, "fs": "read", "network": true}}',
  "network-false.json": '{"target": "pod/echo", "feature": {"network": false}}',
  "broken.json": "{broken\n",
  "not-mirrord.yaml": "server:\n  port: 80\n",
  "empty.json": "{}\n",
  "targets.txt": "svc/web 8080:80\n# comment\n-n other deploy/api 9000\n",
  "one-colon.txt": "svc/web 9090:\n",
};

const io: CliIo = {
  readTextFile: (path) =>
    path in FILES ? Promise.resolve(FILES[path]) : Promise.reject(new Deno.errors.NotFound(path)),
  readStdin: () => Promise.resolve(""),
};

async function plan(...argv: string[]): Promise<Plan> {
  const invocation = await parseCommandLine(argv, io);
  if (invocation.command !== "forward") throw new Error(`not a forward: ${invocation.command}`);
  return invocation.plan;
}

async function refused(argv: string[], says: RegExp): Promise<void> {
  await rejects(plan(...argv), (error: unknown) => {
    ok(error instanceof UsageError, `not a UsageError: ${error}`);
    ok(says.test(error.message), `"${error.message}" does not match ${says}`);
    ok(!error.message.includes("\n"), "one line");
    return true;
  });
}

Deno.test("-R takes a served port by mirroring unless told; --steal and --mirror say so", async () => {
  const auto = await plan("--target", "pod/web", "-R", "80:8080");
  strictEqual(auto.incoming, "auto");
  strictEqual(auto.incomingSource, undefined);
  const steal = await plan("--target", "pod/web", "-R", "80:8080", "--steal");
  strictEqual(steal.incoming, "steal");
  strictEqual(steal.incomingSource, "--steal");
  strictEqual((await plan("--target", "pod/web", "-R", "80", "--mirror")).incoming, "mirror");
});

Deno.test("--steal with --mirror, or either without -R, is exit 2 naming the flag", async () => {
  await refused(["--target", "pod/web", "-R", "80", "--steal", "--mirror"], /--steal and --mirror/);
  await refused(["svc/web", "80", "--steal"], /--steal needs -R/);
  await refused(["svc/web", "80", "--mirror"], /--mirror needs -R/);
});

Deno.test("-f reads a mirrord JSON config: target with its namespace, incoming steal", async () => {
  const p = await plan("-f", "mirrord.json", "-R", "80:8080");
  deepStrictEqual(p.agentTarget, { kind: "deploy", name: "web", namespace: "shop" });
  strictEqual(p.incoming, "steal");
  strictEqual(p.incomingSource, "feature.network.incoming in mirrord.json");
  deepStrictEqual(p.forwards, []);
});

Deno.test("feature.network: true is mirrord's defaults, false turns incoming off", async () => {
  const on = await plan("-f", "network-true.json", "-R", "80:8080");
  strictEqual(on.incoming, "auto");
  strictEqual(on.agentTarget?.name, "echo");
  strictEqual((await plan("-f", "network-false.json", "-R", "80:8080")).incoming, "listen");
});

Deno.test("a config file that does not parse says where, exit 2", async () => {
  await refused(["-f", "broken.json", "-R", "80"], /^-f broken.json: cannot parse it: .*line 2/);
});

Deno.test("-n wins over the config's target.namespace, as mirrord's flag does", async () => {
  const p = await plan("-n", "dev", "-f", "mirrord.json", "-R", "80:8080");
  deepStrictEqual(p.agentTarget, { kind: "deploy", name: "web", namespace: "dev" });
});

Deno.test("a mirrord config must be the only -f; --target once", async () => {
  await refused(
    ["-f", "mirrord.json", "-f", "mirrord.yaml", "-R", "80"],
    /^-f mirrord.json is a mirrord config, which must be the only -f \(given: mirrord.json, mirrord.yaml\)$/,
  );
  await refused(
    ["--target", "pod/a", "--target", "deploy/b", "-R", "80"],
    /^--target given 2 times \(pod\/a, deploy\/b\): relay joins one pod$/,
  );
});

Deno.test("-f reads a mirrord YAML config; keys port-forward does not use get one warning", async () => {
  const p = await plan("-f", "mirrord.yaml", "-R", "80:8080");
  strictEqual(p.incoming, "mirror");
  deepStrictEqual(p.agentTarget?.name, "web-0");
  strictEqual(p.warnings?.length, 1);
  ok(/port_mapping/.test(p.warnings![0]) && /ignore_ports/.test(p.warnings![0]), p.warnings![0]);
});

Deno.test("-f reads a mirrord TOML config; incoming off never steals or mirrors", async () => {
  const p = await plan("-f", "mirrord.toml", "-R", "9000");
  strictEqual(p.incoming, "listen");
  strictEqual(p.agentTarget?.kind, "deploy");
});

Deno.test("incoming: true steals, as in mirrord; --target and --mirror win over the file", async () => {
  strictEqual(
    (await plan("-f", "incoming-true.json", "--target", "pod/x", "-R", "80")).incoming,
    "steal",
  );
  const p = await plan("-f", "mirrord.json", "--target", "pod/other", "--mirror", "-R", "80");
  deepStrictEqual([p.agentTarget?.name, p.incoming], ["other", "mirror"]);
});

Deno.test("a mirrord config's bad key or value is exit 2 naming it", async () => {
  await refused(["-f", "unknown-key.yaml", "--target", "pod/x", "-R", "80"], /incoming\.stealing/);
  await refused(
    ["-f", "filter-any-of.json", "--target", "pod/x", "-R", "80"],
    /http_filter\.any_of is not supported/,
  );
  await refused(
    ["-f", "filter-mirror.yaml", "--target", "pod/x", "-R", "80"],
    /incoming is mirror/,
  );
  await refused(["-f", "bad-mode.json", "--target", "pod/x", "-R", "80"], /"borrow"/);
});

Deno.test("an HTTP filter from the file or the flags steals the matching requests", async () => {
  const fromFile = await plan(
    "-f",
    "http-filter.json",
    "--target",
    "pod/x",
    "-R",
    "80",
    "-R",
    "81",
  );
  deepStrictEqual([fromFile.incoming, fromFile.httpFilter, fromFile.httpFilterPorts], [
    "steal",
    { header: "^x-dev: me$" },
    [80],
  ]);
  const fromFlags = await plan("--target", "pod/x", "-R", "80", "--http-path-filter", "^/api");
  deepStrictEqual([fromFlags.incoming, fromFlags.httpFilter], ["steal", { path: "^/api" }]);
  strictEqual(fromFlags.incomingSource, "the HTTP filter");
  await refused(
    ["--target", "pod/x", "-R", "80", "--http-path-filter", "(unclosed"],
    /--http-path-filter "\(unclosed"/,
  );
  await refused(
    ["--target", "pod/x", "-R", "80", "--mirror", "--http-header-filter", "x"],
    /incoming is mirror \(--mirror\)/,
  );
  await refused(["svc/x", "80", "--http-path-filter", "^/"], /--http-path-filter needs -R/);
  const line = formatReverseReadyLine({
    place: "pod/x",
    remotePort: 80,
    localAddress: "127.0.0.1",
    localPort: 80,
    mode: "steal",
    filter: { path: "^/api" },
  });
  strictEqual(
    line,
    "Stealing pod/x:80 -> 127.0.0.1:80 (HTTP requests whose path matches ^/api; every other request and connection still reaches the app)",
  );
});

Deno.test("a config-named file that is no mirrord config is exit 2 naming the file", async () => {
  await refused(["-f", "not-mirrord.yaml"], /not-mirrord\.yaml: not a mirrord config.*server/);
  await refused(["-f", "empty.json"], /empty\.json: not a mirrord config .*; it is empty, and/);
});

Deno.test("a targets file stays a targets file, errors naming its line as before", async () => {
  const p = await plan("-f", "targets.txt");
  deepStrictEqual(p.forwards.map((f) => f.target.name), ["web", "api"]);
  strictEqual(p.incoming, "auto");
  await refused(["-f", "one-colon.txt"], /9090:/);
});

Deno.test("the ready line names the mode and how to change it", () => {
  const facts = {
    place: "pod/web-7f9c",
    remotePort: 80,
    localAddress: "127.0.0.1",
    localPort: 8080,
  };
  strictEqual(formatReverseReadyLine(facts), "Listening on pod/web-7f9c:80 -> 127.0.0.1:8080");
  strictEqual(
    formatReverseReadyLine({ ...facts, mode: "mirror" }),
    "Mirroring pod/web-7f9c:80 -> 127.0.0.1:8080 (the app still answers; steal with --steal or feature.network.incoming: steal)",
  );
  ok(
    formatReverseReadyLine({ ...facts, mode: "steal" }).startsWith("Stealing pod/web-7f9c:80 -> "),
  );
});
