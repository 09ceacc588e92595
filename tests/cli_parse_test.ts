/** The command line's grammar: good forms parse to the plan, bad input is a one-line exit 2. */
import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { type CliIo, parseCommandLine } from "../lib/cli/program.ts";
import { UsageError } from "../lib/errors.ts";
import type { Plan } from "../lib/plan.ts";

const FILES: Record<string, string> = {
  "targets.txt": [
    "# Each line is a target, as on the command line.",
    "// so is this a comment",
    "",
    "-n kube-system svc/kube-dns 10053:53@udp",
    "svc/nginx 8080:80 # a comment may end a line",
    "  host/redis.example 6379   // so may this",
  ].join("\n"),
  "empty.txt": "# nothing here\n\n// nor here\n",
  "noports.txt": "svc/nginx\n",
  "badport.txt": "svc/a 80\n\nsvc/b 8080:\n",
  "badflag.txt": "--context x svc/a 80\n",
  "dangling-n.txt": "svc/a 80 -n\n",
  "only-n.txt": "-n foo\n",
  "bad-n.txt": "-n Bad_NS pod/echo 9000\n",
  "badkind.txt": "job/x 80\n",
  "ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
  "c.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
  "k.pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
  "addresses.txt": "-l 127.0.0.2 ip/198.18.3.4 5000\n" +
    "--address=::1,127.0.0.1 -n team host/web 80\nsvc/db 5432\n",
  "noaddress.txt": "ip/198.18.3.4 5000 -l\n",
  "badflag2.txt": "--addressx 127.0.0.1 ip/198.18.3.4 5000\n",
  "patch.yaml": "metadata:\n  generateName: foo-\nspec:\n  nodeSelector:\n    disk: ssd\n",
  "list.yaml": "- a\n- b\n",
  "broken.yaml": "spec: [1, 2\n",
};

const io: CliIo = {
  readTextFile(path) {
    if (path === "dir") return Promise.reject(new Deno.errors.IsADirectory("dir"));
    if (!(path in FILES)) return Promise.reject(new Deno.errors.NotFound(path));
    return Promise.resolve(FILES[path]);
  },
  readStdin: () => Promise.resolve("svc/from-stdin 80\n"),
};

async function plan(...argv: string[]): Promise<Plan> {
  const invocation = await parseCommandLine(argv, io);
  if (invocation.command !== "forward") throw new Error(`not a forward: ${invocation.command}`);
  return invocation.plan;
}

/** Bad input, and a part of the message that must name the bad value or what was wanted. */
const BAD: [argv: string[], message: string | RegExp][] = [
  // ports
  [["svc/x", "0"], /remote port "0" is not a number 1–65535/],
  [["svc/x", "70000"], /"70000" is not a number 1–65535/],
  [["svc/x", "8080:70000"], /remote port "70000"/],
  [["svc/x", "70000:80"], /local port "70000" is not a number 0–65535/],
  [["svc/x", "abc!"], /remote "abc!" is neither a number 1–65535 nor a port name/],
  [["svc/x", "8080:"], /invalid port "8080:": the remote port is missing/],
  [["svc/x", ":"], /invalid port ":": the remote port is missing/],
  [["svc/x", "80@sctp"], /unknown protocol "@sctp", expected @tcp or @udp/],
  [["svc/x", "80@"], /unknown protocol "@"/],
  [["svc/x", "80@udp@tcp"], /unknown protocol "@udp@tcp"/],
  [["svc/x", "1:2:3"], /invalid port "1:2:3": too many ":"/],
  [["svc/x", "-1"], /unknown option '-1'/],
  [["svc/x", "a:80"], /local port "a" is not a number/],
  [["svc/x", "http-is-way-too-long"], /neither a number 1–65535 nor a port name/],
  [["svc/x", "Http"], /remote "Http" is neither/],
  [["svc/x", "a--b"], /remote "a--b"/],
  [["svc/x", "123456"], /"123456" is not a number 1–65535/],
  [["svc/x", "80", "80"], /local port 80\/tcp is used twice/],
  [["pod/a", "80", "pod/b", "80:8080"], /local port 80\/tcp is used twice: by pod\/a/],
  [["pod/a", "53:dns", "pod/b", "53@udp"], /local port 53\/udp is used twice/],
  // kinds and names
  [["job/x", "80"], /invalid target "job\/x": unknown kind "job", expected pod\/, svc\//],
  [["deployment.batch/x", "80"], /unknown kind "deployment.batch"/],
  [["service.apps/x", "80"], /unknown kind "service.apps"/],
  [["svc/", "80"], /invalid target "svc\/": the name after "\/" is missing/],
  [["svc/My_Service", "80"], /"My_Service" is not a valid svc name/],
  [["pod/a/b", "80"], /"a\/b" is not a valid pod name/],
  [["ip/not-an-ip", "80"], /"not-an-ip" is not an IP address, expected an IPv4 or IPv6 literal/],
  [["ip/256.1.1.1", "80"], /"256.1.1.1" is not an IP address/],
  [["ip/1.2.3", "80"], /"1.2.3" is not an IP address/],
  [["ip/::g", "80"], /"::g" is not an IP address/],
  [["host/bad..name", "80"], /"bad..name" is not a valid hostname/],
  [["host/-bad", "80"], /unknown option|not a valid hostname/],
  [["svc/x"], /target "svc\/x" has no ports/],
  [["svc/x", "80", "pod/y"], /target "pod\/y" has no ports/],
  [[], /nothing to forward/],
  [["8080:80"], /"8080:80" looks like a port, but a TARGET comes first: like svc\/NAME 8080:80/],
  [["5432", "svc/db", "5432"], /"5432" looks like a port/],
  [[":8080"], /":8080" looks like a port/],
  // flags
  [["--bogus", "svc/x", "80"], /unknown option '--bogus'/],
  [["-z", "svc/x", "80"], /unknown option '-z'/],
  [["svc/x", "80", "-n"], /argument missing/],
  [["-n", "Bad_NS", "svc/x", "80"], /invalid --namespace "Bad_NS": expected a namespace name/],
  [["--agent-namespace", "UPPER", "svc/x", "80"], /invalid --agent-namespace "UPPER"/],
  [["--tunnels", "0", "svc/x", "80"], /invalid --tunnels "0": expected a number 1–64/],
  [["--tunnels", "two", "svc/x", "80"], /invalid --tunnels "two"/],
  [
    ["--request-timeout", "soon", "svc/x", "80"],
    /invalid --request-timeout "soon": expected a duration/,
  ],
  [["--request-timeout", "-1s", "svc/x", "80"], /invalid --request-timeout "-1s"/],
  [["--request-timeout", "5x", "svc/x", "80"], /invalid --request-timeout "5x"/],
  [["--pod-running-timeout", "1d", "svc/x", "80"], /invalid --pod-running-timeout "1d"/],
  [
    ["--udp-idle-timeout", "0", "svc/x", "80"],
    /invalid --udp-idle-timeout "0": expected a duration above 0/,
  ],
  [
    ["--agent-image", "a", "--server.image", "b", "svc/x", "80"],
    /--agent-image "a" and --server.image "b" disagree/,
  ],
  [
    ["--agent-namespace", "a", "--server.namespace", "b", "svc/x", "80"],
    /--agent-namespace "a" and --server.namespace "b" disagree/,
  ],
  [
    ["--pod-running-timeout", "0", "svc/x", "80"],
    /invalid --pod-running-timeout "0": expected a duration above 0/,
  ],
  [["-v=abc", "svc/x", "80"], /invalid -v "abc": expected a level/],
  [["--v=", "svc/x", "80"], /invalid --v "": expected a level/],
  [["--agent-image", "has space", "svc/x", "80"], /invalid --agent-image "has space"/],
  [["--kubeconfig", "", "svc/x", "80"], /--kubeconfig is empty/],
  [["version", "extra"], /"relay version" takes no arguments, got "extra"/],
  [["agent", "--token", "x"], /relay agent: unknown option '--token'/],
  [["agent", "--port"], /^relay agent: option '--port' argument missing$/],
  [["agent", "serve"], /^relay agent: too many arguments: 'serve'$/],
  [["agent", "--", "serve"], /^relay agent: too many arguments: 'serve'$/],
  [["agent", "-p", "1"], /^relay agent: unknown option '-p'$/],
  [["agent", "-port", "1"], /^relay agent: unknown option '-port'$/],
  [["agent", "--bogus=1"], /^relay agent: unknown option '--bogus'$/],
  [["agent", "--help=yes"], /^relay agent: option '--help' does not take an argument$/],
  [["agent", "--idle-exit", "--port", "1"], /^relay agent: option '--idle-exit' argument missing$/],
  [["agent", "--allow", "tcp/x"], /relay agent: invalid --allow "tcp\/x": expected PROTOCOL/],
  [["agent", "--port", "99999"], /invalid --port "99999": port "99999" is not a number 0–65535/],
  [
    ["agent", "--connect-timeout", "0"],
    /invalid --connect-timeout "0": expected a duration above 0/,
  ],
  // addresses
  [
    ["--address", "example.com", "svc/x", "80"],
    /invalid --address "example.com": expected an IP address or localhost/,
  ],
  [
    ["-l", "127.0.0.1,", "svc/x", "80"],
    /invalid --address "127.0.0.1,": an empty address in the list/,
  ],
  [["-l", "300.0.0.1", "svc/x", "80"], /invalid --address "300.0.0.1"/],
  [["-l", "localhost,nope", "svc/x", "80"], /invalid --address "nope"/],
  // -L
  [["-L", "8080"], /invalid -L "8080": the port is missing, expected \[local:\]host:port/],
  [["-L", "8080:web"], /invalid -L "8080:web": the port is missing after "web"/],
  [["-L", "foo:bar:baz"], /invalid -L "foo:bar:baz": the local port "foo" is not a number/],
  [["-L", "8080:web:0"], /invalid -L "8080:web:0": port "0" is not a number 1–65535/],
  [["-L", "8080:web:http"], /port "http" is not a number/],
  [["-L", "70000:web:80"], /local port "70000" is not a number 0–65535/],
  [["-L", "8080:web:80@sctp"], /invalid -L "8080:web:80@sctp": unknown protocol "@sctp"/],
  [
    ["-L", "8080:::1:80"],
    /invalid -L "8080:::1:80": too many ":" \(write an IPv6 host in brackets\)/,
  ],
  [["-L", "8080:[::1:80"], /invalid -L "8080:\[::1:80": expected \[IPv6\]:port/],
  [["-L", "8080::80"], /invalid -L "8080::80": the host is missing/],
  [["-L", "8080:bad_host!:80"], /"bad_host!" is not a valid hostname/],
  [["-L", "8080:web:80", "-L", "8080:db:5432"], /local port 8080\/tcp is used twice/],
  // -R
  [["-R", "8080"], /-R 8080 needs --target/],
  [
    ["-R", "0", "--target", "deploy/web"],
    /invalid -R "0": remote port "0" is not a number 1–65535/,
  ],
  [["-R", "8080:0", "--target", "deploy/web"], /invalid -R "8080:0": local port "0"/],
  [["-R", "8080:", "--target", "deploy/web"], /invalid -R "8080:": expected remote\[:local\]/],
  [["-R", "1:2:3", "--target", "deploy/web"], /invalid -R "1:2:3": expected remote\[:local\]/],
  [["-R", "80@sctp", "--target", "deploy/web"], /invalid -R "80@sctp": unknown protocol "@sctp"/],
  [["-R", "80", "-R", "80:81", "--target", "deploy/web"], /remote port 80\/tcp is reversed twice/],
  [["-R", "80", "--target", "host/x"], /invalid --target "host\/x": expected a pod or workload/],
  [["-R", "80", "--target", "job/x"], /invalid --target "job\/x": expected a pod or workload/],
  // -f
  [["-f", "missing.txt"], /cannot read -f "missing.txt": no such file/],
  [["-f", "dir"], /cannot read -f "dir": is a directory/],
  [["-f", "empty.txt"], /targets file empty.txt has no targets/],
  [["-f", "noports.txt"], /noports.txt:1: target "svc\/nginx" has no ports/],
  [["-f", "badport.txt"], /badport.txt:3: invalid port "8080:"/],
  [["-f", "badflag.txt"], /badflag.txt:1: unknown flag "--context"/],
  [["-f", "dangling-n.txt"], /dangling-n.txt:1: "-n" needs a namespace/],
  [["-f", "only-n.txt"], /only-n.txt:1: no target on the line, only its flags/],
  [["-f", "bad-n.txt"], /bad-n.txt:1: invalid -n "Bad_NS": expected a namespace name/],
  [["-f", "badkind.txt"], /badkind.txt:1: invalid target "job\/x"/],
  [["-f", "noaddress.txt"], /noaddress.txt:1: "-l" needs an address/],
  [["-f", "badflag2.txt"], /badflag2.txt:1: unknown flag "--addressx"/],
  [["-f", "targets.txt", "svc/nginx", "8080:80"], /local port 8080\/tcp is used twice/],
  // patches
  [["--patch", "{spec: [1", "svc/x", "80"], /invalid --patch: not JSON or YAML/],
  [
    ["--patch", "[1,2]", "svc/x", "80"],
    /invalid --patch: expected an object such as \{"spec":\{…\}\}, got a list/,
  ],
  [["--patch", "42", "svc/x", "80"], /got a number/],
  [["--patch", "", "svc/x", "80"], /got nothing/],
  [["-p", "just text", "svc/x", "80"], /invalid --patch: expected an object.*got a string/],
  [
    ["--patch-file", "nope.yaml", "svc/x", "80"],
    /cannot read --patch-file "nope.yaml": no such file/,
  ],
  [
    ["--patch-file", "list.yaml", "svc/x", "80"],
    /invalid --patch-file "list.yaml": expected an object/,
  ],
  [
    ["--patch-file", "broken.yaml", "svc/x", "80"],
    /invalid --patch-file "broken.yaml": not JSON or YAML/,
  ],
  [
    ["--patch", "{}", "--patch-file", "patch.yaml", "svc/x", "80"],
    /--patch and --patch-file both given/,
  ],
  // kubectl's flags over the kubeconfig
  [
    ["--insecure-skip-tls-verify", "svc/x", "80"],
    /--insecure-skip-tls-verify is not supported: .*--certificate-authority/,
  ],
  [["--insecure-skip-tls-verify=true", "svc/x", "80"], /--insecure-skip-tls-verify is not/],
  [
    ["--tls-server-name", "kubernetes", "svc/x", "80"],
    /--tls-server-name "kubernetes" is not supported: .*--server URL's host/,
  ],
  [["--server", "10.0.0.1:6443", "svc/x", "80"], /invalid --server "10.0.0.1:6443"/],
  [["--client-certificate", "c.pem", "svc/x", "80"], /--client-certificate and --client-key/],
  [["--token", "", "svc/x", "80"], /--token is empty/],
  [
    ["--certificate-authority", "nope.pem", "svc/x", "80"],
    /cannot read --certificate-authority "nope.pem": no such file/,
  ],
  [
    ["--client-certificate", "c.pem", "--client-key", "list.yaml", "svc/x", "80"],
    /invalid --client-key "list.yaml": not a PEM file/,
  ],
];

Deno.test(`${BAD.length} bad inputs are one-line UsageErrors with exit code 2`, async (t) => {
  ok(BAD.length >= 50);
  for (const [argv, message] of BAD) {
    await t.step(argv.join(" ") || "(no arguments)", async () => {
      let caught: unknown;
      try {
        await parseCommandLine(argv, io);
      } catch (error) {
        caught = error;
      }
      ok(caught instanceof UsageError, `expected a UsageError, got ${caught}`);
      strictEqual(caught.exitCode, 2);
      ok(!caught.message.includes("\n"), `one line: ${caught.message}`);
      if (typeof message === "string") ok(caught.message.includes(message), caught.message);
      else ok(message.test(caught.message), `${message} !~ ${caught.message}`);
    });
  }
});

Deno.test("host/ target with one port forwards to the same local port over tcp", async () => {
  const p = await plan("host/redis.example", "6379");
  deepStrictEqual(p.forwards, [{
    target: { kind: "host", name: "redis.example" },
    ports: [{ remote: 6379 }],
    source: "argv",
  }]);
  deepStrictEqual(p.reverses, []);
  deepStrictEqual(p.options.addresses, ["localhost"]);
  strictEqual(p.options.tunnels, 2);
  strictEqual(p.options.podRunningTimeoutMs, 60_000);
  strictEqual(p.options.requestTimeoutMs, 0);
  strictEqual(p.udpIdleTimeoutMs, 60_000);
  strictEqual(p.options.verbose, false);
});

Deno.test("several ports, named ports and a random local port", async () => {
  deepStrictEqual((await plan("ip/198.18.3.4", "5000", "6000")).forwards[0].ports, [
    { remote: 5000 },
    { remote: 6000 },
  ]);
  deepStrictEqual((await plan("svc/my-service", "8080:http")).forwards[0].ports, [
    { localPort: 8080, remote: "http" },
  ]);
  const p = await plan("-n", "kube-system", "deploy/x", ":8080");
  deepStrictEqual(p.forwards[0], {
    target: { kind: "deploy", name: "x", namespace: "kube-system" },
    ports: [{ localPort: 0, remote: 8080 }],
    source: "argv",
  });
  strictEqual(p.options.namespace, "kube-system");
});

Deno.test("several targets in one command line", async () => {
  const p = await plan("pod/p", "5353:53", "sts/s", "9000", "ds/d", "1", "rs/r", "2");
  deepStrictEqual(p.forwards.map((f) => [f.target.kind, f.target.name, f.ports]), [
    ["pod", "p", [{ localPort: 5353, remote: 53 }]],
    ["sts", "s", [{ remote: 9000 }]],
    ["ds", "d", [{ remote: 1 }]],
    ["rs", "r", [{ remote: 2 }]],
  ]);
});

Deno.test("protocols: the same port over udp and tcp is two distinct listeners", async () => {
  const p = await plan("svc/kube-dns", "5353:53@udp", "ip/198.18.0.7", "9000@udp", "9000@tcp");
  deepStrictEqual(p.forwards[0].ports, [{ localPort: 5353, remote: 53, protocol: "udp" }]);
  deepStrictEqual(p.forwards[1].ports, [
    { remote: 9000, protocol: "udp" },
    { remote: 9000, protocol: "tcp" },
  ]);
  deepStrictEqual((await plan("svc/x", "80@UDP")).forwards[0].ports[0].protocol, "udp");
});

Deno.test("kubectl's spellings map to krelay's kinds; a bare name is a pod", async () => {
  const cases: [string, string][] = [
    ["mypod", "pod"],
    ["pods/a", "pod"],
    ["po/a", "pod"],
    ["pod.v1./a", "pod"],
    ["service/a", "svc"],
    ["services/a", "svc"],
    ["service./a", "svc"],
    ["services.v1/a", "svc"],
    ["deployment/a", "deploy"],
    ["deployments/a", "deploy"],
    ["deployment.apps/a", "deploy"],
    ["deployments.v1.apps/a", "deploy"],
    ["Deployment/a", "deploy"],
    ["statefulset/a", "sts"],
    ["statefulsets.apps/a", "sts"],
    ["daemonset/a", "ds"],
    ["daemonsets/a", "ds"],
    ["replicaset/a", "rs"],
    ["replicasets.apps/a", "rs"],
  ];
  for (const [written, kind] of cases) {
    strictEqual((await plan(written, "80")).forwards[0].target.kind, kind, written);
  }
});

Deno.test("ip/ takes IPv4 and IPv6 literals, brackets optional", async () => {
  strictEqual((await plan("ip/fd00::7", "80")).forwards[0].target.name, "fd00::7");
  strictEqual((await plan("ip/[fd00::7]", "80")).forwards[0].target.name, "fd00::7");
  strictEqual(
    (await plan("ip/::ffff:198.18.0.1", "80")).forwards[0].target.name,
    "::ffff:198.18.0.1",
  );
  deepStrictEqual((await plan("-n", "ns", "ip/10.0.0.1", "80")).forwards[0].target, {
    kind: "ip",
    name: "10.0.0.1",
  });
});

Deno.test("--address: IPs, localhost kept for the listeners to expand, comma lists, repeated, deduplicated", async () => {
  deepStrictEqual((await plan("--address", "0.0.0.0", "pod/my-pod", "5353:53")).options.addresses, [
    "0.0.0.0",
  ]);
  deepStrictEqual((await plan("-l", "localhost,localhost", "svc/x", "80")).options.addresses, [
    "localhost",
  ]);
  deepStrictEqual(
    (await plan("-l", "127.0.0.1,::1", "-l", "[fd00::1]", "-l", "127.0.0.1", "svc/x", "80"))
      .options.addresses,
    ["127.0.0.1", "::1", "fd00::1"],
  );
});

Deno.test("-f: krelay's targets file, with per-line -n, comments and blank lines", async () => {
  const p = await plan("-n", "default", "-f", "targets.txt");
  deepStrictEqual(p.forwards, [
    {
      target: { kind: "svc", name: "kube-dns", namespace: "kube-system" },
      ports: [{ localPort: 10053, remote: 53, protocol: "udp" }],
      source: "targets.txt:4",
    },
    {
      target: { kind: "svc", name: "nginx", namespace: "default" },
      ports: [{ localPort: 8080, remote: 80 }],
      source: "targets.txt:5",
    },
    {
      // A host/ name is relative to its line's namespace, as the others are.
      target: { kind: "host", name: "redis.example", namespace: "default" },
      ports: [{ remote: 6379 }],
      source: "targets.txt:6",
    },
  ]);
  const stdin = await plan("-f", "-");
  deepStrictEqual(stdin.forwards[0].source, "stdin:1");
  deepStrictEqual(stdin.forwards[0].target, { kind: "svc", name: "from-stdin" });
});

Deno.test("-f: a line's -l/--address listens there, as krelay's do", async () => {
  const p = await plan("-f", "addresses.txt");
  deepStrictEqual(p.forwards.map((f) => f.addresses), [
    ["127.0.0.2"],
    ["::1", "127.0.0.1"],
    undefined,
  ]);
  deepStrictEqual(p.forwards[1].target, { kind: "host", name: "web", namespace: "team" });
});

Deno.test("-f: several targets files add up, in order", async () => {
  const p = await plan("-n", "default", "-f", "targets.txt", "-f", "-");
  deepStrictEqual(p.forwards.map((f) => f.source), [
    "targets.txt:4",
    "targets.txt:5",
    "targets.txt:6",
    "stdin:1",
  ]);
});

Deno.test("-L: mirrord's [local:]host:port[@udp], repeatable and mixed with targets", async () => {
  const p = await plan("-L", "8080:py-serv:80", "-L", "9090:10.1.2.3:90", "svc/x", "7000");
  deepStrictEqual(p.forwards.map((f) => [f.target, f.ports, f.source]), [
    [{ kind: "svc", name: "x" }, [{ remote: 7000 }], "argv"],
    [{ kind: "host", name: "py-serv" }, [{ localPort: 8080, remote: 80 }], "-L 8080:py-serv:80"],
    [{ kind: "ip", name: "10.1.2.3" }, [{ localPort: 9090, remote: 90 }], "-L 9090:10.1.2.3:90"],
  ]);
  deepStrictEqual((await plan("-L", "db.internal:5432")).forwards[0].ports, [{ remote: 5432 }]);
  deepStrictEqual((await plan("-L", "5353:[fd00::53]:53@udp")).forwards[0], {
    target: { kind: "ip", name: "fd00::53" },
    ports: [{ localPort: 5353, remote: 53, protocol: "udp" }],
    source: "-L 5353:[fd00::53]:53@udp",
  });
  deepStrictEqual((await plan("-L", "[::1]:80")).forwards[0].ports, [{ remote: 80 }]);
  deepStrictEqual((await plan("-L", ":web:80")).forwards[0].ports, [{ localPort: 0, remote: 80 }]);
});

Deno.test("-R: remote[:local][@udp] with --target", async () => {
  const p = await plan(
    "-R",
    "8080",
    "-R",
    "9090:3000",
    "-R",
    "53:5353@udp",
    "--target",
    "deploy/web",
  );
  deepStrictEqual(p.reverses, [
    { remotePort: 8080, localPort: 8080, protocol: "tcp", source: "-R 8080" },
    { remotePort: 9090, localPort: 3000, protocol: "tcp", source: "-R 9090:3000" },
    { remotePort: 53, localPort: 5353, protocol: "udp", source: "-R 53:5353@udp" },
  ]);
  deepStrictEqual(p.agentTarget, { kind: "deploy", name: "web" });
  deepStrictEqual(p.forwards, []);
});

Deno.test("agent pod flags: patch (JSON or YAML), image aliases, namespace", async () => {
  deepStrictEqual(
    (await plan("--patch", '{"spec":{"nodeSelector":{"a":"b"}}}', "svc/x", "80")).options.patch,
    { spec: { nodeSelector: { a: "b" } } },
  );
  deepStrictEqual((await plan("-p", "spec: {priority: 1}", "svc/x", "80")).options.patch, {
    spec: { priority: 1 },
  });
  deepStrictEqual((await plan("--patch-file", "patch.yaml", "svc/x", "80")).options.patch, {
    metadata: { generateName: "foo-" },
    spec: { nodeSelector: { disk: "ssd" } },
  });
  strictEqual((await plan("--agent-image", "img:1", "svc/x", "80")).options.agentImage, "img:1");
  strictEqual((await plan("--server.image", "img:2", "svc/x", "80")).options.agentImage, "img:2");
  strictEqual(
    (await plan("--agent-namespace", "tools", "svc/x", "80")).options.agentNamespace,
    "tools",
  );
  strictEqual(
    (await plan("--server.namespace", "tools", "svc/x", "80")).options.agentNamespace,
    "tools",
  );
});

Deno.test("kubectl's flags", async () => {
  const p = await plan(
    "--kubeconfig",
    "/tmp/kc",
    "--context",
    "kind",
    "--as",
    "alice",
    "--as-group",
    "dev",
    "--as-group",
    "ops",
    "--as-uid",
    "1234",
    "--request-timeout",
    "30s",
    "--pod-running-timeout",
    "2m",
    "--tunnels",
    "4",
    "--udp-idle-timeout",
    "1m30s",
    "-v",
    "svc/x",
    "80",
  );
  strictEqual(p.options.kubeconfig, "/tmp/kc");
  strictEqual(p.options.context, "kind");
  strictEqual(p.options.as, "alice");
  deepStrictEqual(p.options.asGroups, ["dev", "ops"]);
  strictEqual(p.options.asUid, "1234");
  strictEqual(p.options.requestTimeoutMs, 30_000);
  strictEqual(p.options.podRunningTimeoutMs, 120_000);
  strictEqual(p.options.tunnels, 4);
  strictEqual(p.udpIdleTimeoutMs, 90_000);
  strictEqual(p.options.verbose, true);
  strictEqual((await plan("--request-timeout", "5", "svc/x", "80")).options.requestTimeoutMs, 5000);
  strictEqual(
    (await plan("--request-timeout", "1m", "svc/x", "80")).options.requestTimeoutMs,
    60_000,
  );
  strictEqual(
    (await plan("--request-timeout", "500ms", "svc/x", "80")).options.requestTimeoutMs,
    500,
  );
  strictEqual((await plan("-v=6", "svc/x", "80")).options.verbose, true);
  strictEqual((await plan("-v", "4", "svc/x", "80")).options.verbose, true);
  strictEqual((await plan("-v=0", "svc/x", "80")).options.verbose, false);
  // pflag's -X=VALUE for short flags.
  strictEqual((await plan("-n=shop", "svc/x", "80")).options.namespace, "shop");
  deepStrictEqual((await plan("-l=::1", "svc/x", "80")).options.addresses, ["::1"]);
});

Deno.test("kubectl's flags over the kubeconfig: --cluster, --user, -s, --token and TLS files", async () => {
  const p = await plan(
    "--cluster=c2",
    "--user",
    "u2",
    "-s=https://10.0.0.1:6443",
    "--token",
    "t0k",
    "--certificate-authority",
    "ca.pem",
    "--client-certificate",
    "c.pem",
    "--client-key",
    "k.pem",
    "svc/x",
    "80",
  );
  deepStrictEqual(p.options.kubeOverrides, {
    cluster: "c2",
    user: "u2",
    server: "https://10.0.0.1:6443",
    token: "t0k",
    certificateAuthority: "ca.pem",
    clientCertificate: "c.pem",
    clientKey: "k.pem",
  });
  strictEqual((await plan("svc/x", "80")).options.kubeOverrides, undefined);
  // kubectl's explicit default is harmless.
  strictEqual(
    (await plan("--insecure-skip-tls-verify=false", "svc/x", "80")).options.kubeOverrides,
    undefined,
  );
  // relay proxy takes them too.
  const proxy = await plan("proxy", "--server", "https://api:6443");
  strictEqual(proxy.options.kubeOverrides?.server, "https://api:6443");
});

Deno.test("flags may come after targets, as kubectl allows", async () => {
  const p = await plan("svc/x", "80", "-n", "web", "--address", "::1");
  deepStrictEqual(p.forwards[0].target, { kind: "svc", name: "x", namespace: "web" });
  deepStrictEqual(p.options.addresses, ["::1"]);
});

Deno.test("--help, -V, version and agent are not forwards", async () => {
  const help = await parseCommandLine(["--help"], io);
  ok(help.command === "print" && help.text.includes("Examples:"));
  ok(help.command === "print" && help.text.includes("--port-forward"));
  const version = await parseCommandLine(["-V"], io);
  ok(version.command === "print" && /^relay \d+\.\d+\.\d+/.test(version.text));
  const word = await parseCommandLine(["version"], io);
  ok(word.command === "print" && version.command === "print");
  deepStrictEqual(word.text.split("\n")[0], version.text.trim());
  ok(/\nagent image \S+relay-agent:\S+\n$/.test(word.text), word.text);
  deepStrictEqual(
    await parseCommandLine(
      ["agent", "--port", "0", "--idle-exit", "0", "--udp-idle-timeout", "1m"],
      io,
    ),
    { command: "agent", options: { port: 0, idleExitMs: 0, udpIdleMs: 60_000 } },
  );
  deepStrictEqual(await parseCommandLine(["agent"], io), { command: "agent", options: {} });
  deepStrictEqual(
    await parseCommandLine(
      ["agent", "--port=7", "--port", "8", "--allow=tcp/a/1", "--allow", "udp/b/2", "--"],
      io,
    ),
    {
      command: "agent",
      options: {
        port: 8,
        allow: [
          { protocol: "tcp", host: "a", port: 1 },
          { protocol: "udp", host: "b", port: 2 },
        ],
      },
    },
  );
  const agentHelp = await parseCommandLine(["agent", "--help"], io);
  ok(agentHelp.command === "print" && agentHelp.text.includes("RELAY_AGENT_TOKEN_SHA256"));
});
