/**
 * The README's set-up commands ("Try it on a local cluster"), run as a new user runs them on a
 * fresh machine: a clean clone, no Deno on PATH, empty Deno, npm and build caches. The README's
 * block is run by sh as written, with two substitutions: the clone URL becomes a clone of this
 * working tree, and `deno task demo` / `deno task test` get `--check`.
 *
 * Why `--check`, and not the whole run: the demo and the tests bring up the local cluster,
 * which is one per machine (network namespaces, routes, /tmp/relay-cluster), may already be up
 * and in use by someone else, and which `deno task test` brings down at the end; its first
 * build also takes about 10 minutes. `--check` runs every step up to the cluster: the
 * npm-installed Deno starts the task from the clone, installs the npm dependencies deno.lock
 * pins into an empty DENO_DIR, and checks what the rest needs (root, apt-get for the missing
 * packages, Go and the Go module proxy, kubectl). What it cannot show is that the build and
 * the cluster then work on a fresh machine; `.ci/run` does that on CI's fresh machine.
 *
 * The "fresh machine" is a PATH of symlinks: the commands of Debian's required packages (what
 * a minimal Debian has) plus the README's prerequisites (git, node, npm, go, kubectl) and
 * nothing else, so neither this machine's Deno nor a package the scripts install themselves
 * can stand in for a missing step. npm installs Deno under a temporary prefix and HOME, so
 * the machine's own Deno and caches are never touched.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { KUBECTL } from "../scripts/cluster/config.ts";
import { PACKAGES } from "../scripts/cluster/packages.ts";
import { DENO_VERSION, KUBECTL_MINOR, MIN_GO } from "../scripts/prerequisites.ts";

const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const CLONE_URL = "https://github.com/relay-dev/relay";

/** The commands of the README's set-up block, comments dropped: what the test runs. */
const README_COMMANDS = [
  `git clone ${CLONE_URL} && cd relay`,
  `npm install -g deno@${DENO_VERSION}`,
  "deno task demo",
  "deno task test",
];

/** Proxy, CA and registry settings: how a user's shell reaches the network, kept as they are. */
const NETWORK_ENV = new Set([
  "http_proxy",
  "https_proxy",
  "all_proxy",
  "no_proxy",
  "ssl_cert_file",
  "ssl_cert_dir",
  "node_extra_ca_certs",
  "deno_cert",
  "deno_tls_ca_store",
  "goproxy",
  "gonoproxy",
  "gonosumdb",
  "goprivate",
  "gosumdb",
  "npm_config_registry",
]);

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; clearEnv?: boolean; input?: string } = {},
): Promise<Result> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    env: options.env,
    clearEnv: options.clearEnv,
    stdin: options.input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.input));
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function must(cmd: string, args: string[], options: Parameters<typeof run>[2] = {}) {
  const r = await run(cmd, args, options);
  assertEquals(r.code, 0, `${cmd} ${args.join(" ")}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** The README's "Try it on a local cluster" section. */
async function readmeSetupSection(): Promise<string> {
  const readme = await Deno.readTextFile(`${REPO}/README.md`);
  const section = readme.split(/\n(?=## )/).find((s) => s.startsWith("## Try it on a local"));
  assert(section, 'README has no section "Try it on a local cluster"');
  return section;
}

/** The first fenced block of that section: the set-up commands. */
async function readmeSetupBlock(): Promise<string> {
  const block = /\n```[a-z]*\n([\s\S]*?)\n```/.exec(await readmeSetupSection())?.[1];
  assert(block, "the README's set-up section has no fenced block");
  return block;
}

function commandsOf(block: string): string[] {
  return block.split("\n").map((line) => line.replace(/\s+#.*$/, "").trim()).filter(Boolean);
}

/** An executable's absolute path as the current PATH finds it. */
async function which(name: string): Promise<string> {
  const path = (await run("sh", ["-c", `command -v '${name}'`])).stdout.trim();
  assert(path.startsWith("/"), `${name} is not on PATH; the README lists it as a prerequisite`);
  return path;
}

/**
 * The commands a minimal Debian has: those of its required packages (what debootstrap's
 * minbase installs) in the usual bin directories. On a machine without dpkg, every command
 * there, which is weaker (the scripts' own packages may be installed already).
 */
async function baseCommands(): Promise<{ commands: Map<string, string>; minimal: boolean }> {
  const commands = new Map<string, string>();
  const dirs = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
  const query = await run("dpkg-query", ["-W", "-f", "${binary:Package} ${Priority}\n"]).catch(() =>
    undefined
  );
  const minimal = query?.code === 0;
  const files: string[] = [];
  if (minimal) {
    const required = query.stdout.split("\n").filter((l) => l.endsWith(" required"))
      .map((l) => l.split(" ")[0]);
    files.push(...(await must("dpkg", ["-L", ...required])).split("\n"));
  } else {
    for (const dir of dirs) {
      try {
        for await (const entry of Deno.readDir(dir)) files.push(`${dir}/${entry.name}`);
      } catch {
        // no such directory here
      }
    }
  }
  for (const file of files) {
    const slash = file.lastIndexOf("/");
    const [dir, name] = [file.slice(0, slash), file.slice(slash + 1)];
    if (!dirs.includes(dir) || name === "deno" || commands.has(name)) continue;
    const info = await Deno.stat(file).catch(() => undefined);
    if (info?.isFile && (info.mode ?? 0) & 0o111) commands.set(name, file);
  }
  return { commands, minimal };
}

/**
 * A repository whose HEAD is this working tree as it is (a scratch clone, with uncommitted
 * changes and new files committed there), so the README's `git clone` of it is a clean clone
 * of what is being tested. On CI, a clean checkout, it is simply a clone of HEAD.
 */
async function snapshotRepo(dir: string): Promise<string> {
  // safe.directory: run by another user than the repository's owner, git would refuse it.
  const git = (...args: string[]) => must("git", ["-c", "safe.directory=*", ...args]);
  await git("clone", "--quiet", "--upload-pack=git -c safe.directory=* upload-pack", REPO, dir);
  const head = (await git("-C", REPO, "rev-parse", "HEAD")).trim();
  await git("-C", dir, "checkout", "--quiet", "-B", "snapshot", head);
  const diff = await git("-C", REPO, "diff", "HEAD", "--binary");
  if (diff) await must("git", ["-C", dir, "apply", "--binary", "-"], { input: diff });
  const untracked = await git("-C", REPO, "ls-files", "-z", "--others", "--exclude-standard");
  for (const path of untracked.split("\0").filter(Boolean)) {
    await Deno.mkdir(`${dir}/${path}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.copyFile(`${REPO}/${path}`, `${dir}/${path}`);
  }
  await git("-C", dir, "add", "-A");
  const id = ["-c", "user.name=first-run test", "-c", "user.email=first-run@test.invalid"];
  await git(...id, "-C", dir, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", "wip");
  return dir;
}

Deno.test("README: the set-up block is exactly the commands this test runs", async () => {
  assertEquals(commandsOf(await readmeSetupBlock()), README_COMMANDS);
  // The versions it asks for are the ones the checks hold the machine to.
  const section = (await readmeSetupSection()).replaceAll("\n", " ");
  assertStringIncludes(section, `Go ${MIN_GO.join(".")} or newer`);
  assertStringIncludes(section, `\`kubectl\` 1.${KUBECTL_MINOR} installed`);
  // Every Deno the README installs is the pinned one.
  const readme = await Deno.readTextFile(`${REPO}/README.md`);
  const installs = [...readme.matchAll(/npm install -g deno(@[0-9A-Za-z.-]+)?/g)].map((m) => m[0]);
  assert(installs.length > 0);
  for (const install of installs) assertEquals(install, `npm install -g deno@${DENO_VERSION}`);
});

Deno.test("CI installs the Deno and no Debian package that the README's path would not", async () => {
  const ci = await Deno.readTextFile(`${REPO}/.ci/run`);
  assertEquals(/^DENO_VERSION=(\S+)$/m.exec(ci)?.[1], DENO_VERSION);
  const list = /^PACKAGES=\(([^)]*)\)$/m.exec(ci)?.[1];
  assert(list, ".ci/run has no PACKAGES=(…) line");
  const known = new Set(PACKAGES.map(([pkg]) => pkg));
  assertEquals(list.split(/\s+/).filter((p) => p && !known.has(p)), []);
});

Deno.test({
  name: "README: the set-up commands work from a clean clone on a machine without Deno",
  // npm installs Deno; the README asks for it, and without it this cannot run at all.
  ignore: (await new Deno.Command("sh", { args: ["-c", "command -v npm"] }).output()).code !== 0,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "relay-first-run-" });
    try {
      const bin = `${tmp}/bin`;
      const npmPrefix = `${tmp}/npm-global`;
      const home = `${tmp}/home`;
      const denoDir = `${tmp}/deno-dir`;
      const runDir = `${tmp}/cluster-run-dir`;
      for (const dir of [bin, home, denoDir, `${tmp}/work`]) await Deno.mkdir(dir);
      const { commands: tools, minimal } = await baseCommands();
      for (const name of ["git", "node", "npm", "go"]) tools.set(name, await which(name));
      tools.set("kubectl", KUBECTL.startsWith("/") ? KUBECTL : await which(KUBECTL));
      for (const [name, target] of tools) await Deno.symlink(target, `${bin}/${name}`);

      const env: Record<string, string> = {
        PATH: `${bin}:${npmPrefix}/bin`,
        HOME: home,
        DENO_DIR: denoDir,
        npm_config_prefix: npmPrefix,
        RELAY_CLUSTER_DIR: runDir,
        NO_COLOR: "1",
        // Go's module cache is read-only by default; writable, the temporary HOME can be removed.
        GOFLAGS: "-modcacherw",
      };
      for (const [k, v] of Object.entries(Deno.env.toObject())) {
        if (NETWORK_ENV.has(k.toLowerCase())) env[k] = v;
      }

      const noDeno = await run("sh", ["-c", "command -v deno"], { env, clearEnv: true });
      assert(noDeno.code !== 0, `deno is on the fresh PATH: ${noDeno.stdout}`);

      // Named relay, as the README's `cd relay` expects of a clone of relay-dev/relay.
      const source = await snapshotRepo(`${tmp}/source/relay`);
      const script = (await readmeSetupBlock())
        .replace(`git clone ${CLONE_URL} `, `git clone --quiet ${source} `)
        .replace(/^deno task (demo|test)\b/gm, "deno task $1 --check");
      const r = await run("sh", ["-ec", script], { cwd: `${tmp}/work`, env, clearEnv: true });
      const out = `${r.stdout}\n${r.stderr}`;

      // The README's npm command installed Deno under the prefix, and both tasks ran on it.
      const prefix = await Deno.realPath(npmPrefix).catch(() => npmPrefix);
      const denos = [...r.stdout.matchAll(/^check: ok {3}deno (\S+) \((.*)\)$/gm)];
      // As root both tasks run; otherwise the first stops at its root check, and sh -e there.
      const root = Deno.uid() === 0;
      assertEquals(denos.length, root ? 2 : 1, out);
      for (const [, version, path] of denos) {
        assertEquals(version, DENO_VERSION);
        assert(path.startsWith(`${prefix}/`), `the task ran on ${path}, not npm's Deno`);
      }
      // Its npm dependencies came from the registry into the empty cache.
      await Deno.stat(`${denoDir}/npm/registry.npmjs.org/@kubernetes/client-node`);
      if (!root) {
        // Everything up to the cluster ran; the cluster itself needs root, and says so.
        assertEquals(r.code, 1, out);
        assertStringIncludes(r.stdout, "check: FAIL not root");
        return;
      }
      assertEquals(r.code, 0, out);
      for (const task of ["demo", "test"]) {
        assertStringIncludes(r.stdout, `check: ready for \`deno task ${task}\``);
      }
      // A fresh machine: nothing built, and the scripts' own packages still to install.
      assertStringIncludes(r.stdout, "would: build etcd, kube-apiserver");
      if (minimal) assertStringIncludes(r.stdout, "would: install with apt-get: iproute2");
      // --check left no cluster state and no build cache behind.
      for (const path of [runDir, `${home}/.cache/relay-cluster`]) {
        const left = await Deno.stat(path).then(() => true, () => false);
        assert(!left, `--check created ${path}`);
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
