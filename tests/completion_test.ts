/**
 * lib/completion.ts: `relay completion <shell>` prints a script, and the bash script, sourced
 * into a real bash, completes relay's subcommands and options by asking the program.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { ROOT, run } from "./distribution_helpers.ts";
import { COMPLETION_SHELLS, isCompletionRequest } from "../lib/completion.ts";
import { completionQuery, TARGET_KINDS } from "../lib/completion_cluster.ts";
import { kubeconfigYaml, makeTestPki, startFakeApiServer, writeTempFile } from "./kube_fixtures.ts";

// Deno's HTTP client keeps connections to the fake server alive past a test.
const opts = { sanitizeResources: false, sanitizeOps: false };

// A stand-in for relay's program: its own commands and options, completed by lib/completion.ts.
const PROGRAM = `
import { Command, Option } from "@commander-js/extra-typings";
import { isCompletionRequest, runCompletion } from "${ROOT}/lib/completion.ts";
const program = new Command().name("relay")
  .option("-n, --namespace <namespace>", "namespace of the target")
  .argument("[target]");
program.command("agent").description("run the in-cluster end").option("--port <port>", "port");
program.command("proxy").description("a proxy").option("--proxy-auth <auth>", "credentials");
program.addOption(new Option("--color <when>", "colour").choices(["auto", "never"]));
program.command("version").description("print relay's version");
if (isCompletionRequest(Deno.args)) await runCompletion(program, Deno.args);
`;

async function withRelay(body: (bin: string) => Promise<void>) {
  const tmp = await Deno.makeTempDir({ prefix: "relay-completion-test-" });
  try {
    await Deno.writeTextFile(`${tmp}/program.ts`, PROGRAM);
    await Deno.writeTextFile(
      `${tmp}/relay`,
      `#!/bin/sh\nexec deno run -A --config ${ROOT}/deno.json ${tmp}/program.ts "$@"\n`,
      { mode: 0o755 },
    );
    await body(tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("completion requests are recognised", () => {
  assert(isCompletionRequest(["completion", "bash"]));
  assert(isCompletionRequest(["complete", "--", "ag"]));
  assert(!isCompletionRequest(["svc/completion", "80"]));
  assert(!isCompletionRequest([]));
});

Deno.test("relay completion <shell> prints a script that asks relay for candidates", async () => {
  await withRelay(async (bin) => {
    for (const shell of COMPLETION_SHELLS) {
      const r = await run(`${bin}/relay`, ["completion", shell]);
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(r.stdout, `${shell} completion for relay`);
      assertStringIncludes(r.stdout, "relay complete --");
    }
    const bad = await run(`${bin}/relay`, ["completion", "tcsh"]);
    assert(bad.code !== 0);
    assertStringIncludes(bad.stderr, "tcsh");
  });
});

Deno.test("the bash completion completes subcommands, their options and --flag=values, but not agent, and sources twice", async () => {
  await withRelay(async (bin) => {
    // bash-completion's helper, reduced to what the script uses, so no package is needed.
    const script = `
      _get_comp_words_by_ref() { words=("\${COMP_WORDS[@]}"); cword=$COMP_CWORD;
        cur=\${COMP_WORDS[COMP_CWORD]}; prev=\${COMP_WORDS[COMP_CWORD-1]}; }
      source <(relay completion bash)
      source <(relay completion bash)
      complete -p relay
      COMP_WORDS=(relay ag); COMP_CWORD=1; __relay_complete 2>/dev/null
      echo "agent: \${COMPREPLY[*]}"
      COMP_WORDS=(relay ver); COMP_CWORD=1; __relay_complete 2>/dev/null
      echo "words: \${COMPREPLY[*]}"
      COMP_WORDS=(relay proxy --pro); COMP_CWORD=2; __relay_complete 2>/dev/null
      echo "options: \${COMPREPLY[*]}"
      COMP_WORDS=(relay --color=ne); COMP_CWORD=1; __relay_complete 2>/dev/null
      echo "value: \${COMPREPLY[*]}"
    `;
    const r = await run("bash", ["-c", script], {
      env: { PATH: `${bin}:${Deno.env.get("PATH")}` },
    });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stderr, "", "sourcing the script twice is quiet");
    assertStringIncludes(r.stdout, "complete -F __relay_complete relay");
    assertStringIncludes(r.stdout, "agent: \n", "the in-pod command is not offered");
    assertStringIncludes(r.stdout, "words: version\n");
    assertStringIncludes(r.stdout, "options: --proxy-auth\n");
    // bash replaces what follows the = of --flag=value: the value alone.
    assertStringIncludes(r.stdout, "value: never\n");
  });
});

Deno.test("relay completion <shell> through the real CLI: a script for bash, exit 2 for an unknown shell", async () => {
  const run = async (args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--unstable-net",
        new URL("../main.ts", import.meta.url).pathname,
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder();
    return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
  };
  const bash = await run(["completion", "bash"]);
  if (bash.code !== 0 || !bash.stdout.includes("relay")) {
    throw new Error(`completion bash: ${bash.code} ${bash.stderr}`);
  }
  const bad = await run(["completion", "tcsh"]);
  if (
    bad.code !== 2 || bad.stderr.trim().split("\n").length !== 1 || !bad.stderr.includes("tcsh")
  ) {
    throw new Error(`completion tcsh: ${bad.code} ${bad.stderr}`);
  }
});

Deno.test("completionQuery: which word asks the cluster, and where", () => {
  assertEquals(completionQuery(["-n", ""]), { wants: "namespaces" });
  assertEquals(completionQuery(["--namespace=sh"]), { wants: "namespaces" });
  assertEquals(
    completionQuery(["--context", "kind", "-n", "shop", "pod/ec"]),
    { wants: "names", kind: "pod", context: "kind", namespace: "shop" },
  );
  assertEquals(completionQuery(["deployment/"]), { wants: "names", kind: "deployment" });
  assertEquals(completionQuery(["--target", "de"]), {
    wants: "kinds",
    kinds: ["pod/", "deploy/", "sts/", "ds/", "rs/", "svc/"],
  });
  // kubectl's cluster flags among the words say which cluster to ask.
  assertEquals(
    completionQuery(["-s", "https://api:6443", "--token=t", "--cluster", "c", "-n", ""]),
    { wants: "namespaces", overrides: { server: "https://api:6443", token: "t", cluster: "c" } },
  );
  assertEquals(completionQuery(["--target=deploy/w"]), { wants: "names", kind: "deploy" });
  assertEquals(completionQuery([""])?.kinds, TARGET_KINDS);
  // A flag's value, a port, a flag and host/ names are not the cluster's to offer.
  for (const words of [["-l", ""], ["pod/x", "80"], ["--st"], ["host/re"], ["--steal", "x:"]]) {
    assertEquals(completionQuery(words), undefined, words.join(" "));
  }
  // A flag's value does not count until typed out.
  assertEquals(completionQuery(["-n"]), undefined);
});

Deno.test(
  "relay complete -- asks the cluster: namespaces after -n, kind/NAME after pod/, kinds without a space",
  opts,
  async () => {
    const p = await makeTestPki();
    const server = startFakeApiServer(p, (request) => {
      const path = new URL(request.url).pathname;
      const items = path === "/api/v1/namespaces"
        ? ["default", "shop"]
        : path === "/api/v1/namespaces/shop/pods"
        ? ["echo-1", "web-2"]
        : path === "/apis/apps/v1/namespaces/default/deployments"
        ? ["api"]
        : undefined;
      if (!items) return new Response("{}", { status: 404 });
      return Response.json({ items: items.map((name) => ({ metadata: { name } })) });
    });
    try {
      const kubeconfig = await writeTempFile(
        "config",
        kubeconfigYaml({
          server: server.url,
          caFile: p.caFile,
          users: { u: "token: t" },
          contexts: { a: { user: "u" } },
          current: "a",
        }),
      );
      const complete = async (...words: string[]) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "--unstable-net", `${ROOT}/main.ts`, "complete", "--", ...words],
          env: { KUBECONFIG: kubeconfig },
          stdout: "piped",
          stderr: "piped",
        }).output();
        return new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => l.split("\t")[0]);
      };
      assertEquals(await complete("-n", ""), ["default", "shop", ":4"]);
      assertEquals(await complete("-n", "shop", "pod/w"), ["pod/web-2", ":4"]);
      assertEquals(await complete("--target", "deploy/"), ["deploy/api", ":4"]);
      // Kinds keep the cursor after the slash (cobra's NoSpace, 2).
      assertEquals(await complete("sv"), ["svc/", ":6"]);
      // A namespace the API server does not know offers nothing, quietly.
      assertEquals(await complete("-n", "nope", "pod/"), [":4"]);
    } finally {
      await server.close();
    }
  },
);
