/**
 * What `deno task demo` and `deno task test` need from the machine (the README's "Try it on a
 * local cluster" prerequisites), checked before either touches anything: a machine that lacks
 * something fails here in seconds, saying what to do, rather than minutes into a build.
 * With `--check` the task stops after the checks and says what its first run would do; that
 * run leaves the machine as it was but for download caches: Deno's, which it fills from
 * deno.lock to prove the npm registry answers, and one module's version in Go's.
 * tests/first_run_test.ts runs it on a clean clone on a PATH without Deno.
 */
import { KUBECTL, REPO_DIR, RUN_DIR } from "./cluster/config.ts";
import { missingPackages } from "./cluster/packages.ts";
import { run } from "./cluster/proc.ts";

/** The Deno the README installs (`npm install -g deno@…`) and .ci/run's DENO_VERSION. */
export const DENO_VERSION = "2.9.6";

/**
 * The oldest Go that builds the cluster: etcd v3.6.16's and krelay v0.2.0's go.mod say
 * `go 1.26.0`, and scripts/build-cluster.sh sets GOTOOLCHAIN=local, so an older Go refuses
 * rather than fetching a newer toolchain.
 */
export const MIN_GO: readonly [number, number] = [1, 26];

/** The kubectl minor version the README asks for: the cluster runs Kubernetes 1.33. */
export const KUBECTL_MINOR = 33;

/** A module the cluster build fetches first, asked for to see the Go module proxy answers. */
const GO_PROBE_MODULE = "k8s.io/kubernetes@v1.33.13";

type Task = "demo" | "test";

/** One line of the report: `fail` stops the task, `warn` only says so. */
export interface Finding {
  level: "ok" | "warn" | "fail";
  text: string;
}

/** The major and minor of a `go version` line ("go version go1.26.8 linux/amd64"). */
export function goVersion(line: string): [number, number] | undefined {
  const m = /\bgo(\d+)\.(\d+)/.exec(line.replace(/^go version /, ""));
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

async function found(command: string): Promise<boolean> {
  return (await run(["sh", "-c", `command -v '${command}'`])).code === 0;
}

/** A command's output, or undefined when it cannot be run or fails. */
async function output(argv: string[], env?: Record<string, string>): Promise<string | undefined> {
  try {
    const result = await run(argv, { env });
    return result.code === 0 ? result.stdout : undefined;
  } catch {
    return undefined;
  }
}

/** The cluster binaries scripts/build-cluster.sh would build, and where it caches them. */
async function clusterBuild(): Promise<{ missing: string[]; dir: string }> {
  const script = `${REPO_DIR}/scripts/build-cluster.sh`;
  const missing = (await output(["bash", script, "missing"])) ?? "";
  const dir = ((await output(["bash", script, "path"])) ?? "").trim();
  return { missing: missing.split("\n").filter(Boolean), dir };
}

/**
 * Checks the machine for `task`, returning what holds (and what does not) and what the run
 * would do. `deps` also installs Deno's npm dependencies from deno.lock, as `--check` does.
 */
export async function checkMachine(
  task: Task,
  options: { deps?: boolean } = {},
): Promise<{ findings: Finding[]; plan: string[] }> {
  const findings: Finding[] = [];
  const plan: string[] = [];
  const ok = (text: string) => findings.push({ level: "ok", text });
  const warn = (text: string) => findings.push({ level: "warn", text });
  const fail = (text: string) => findings.push({ level: "fail", text });

  const deno = `deno ${Deno.version.deno} (${Deno.execPath()})`;
  if (Deno.version.deno === DENO_VERSION) ok(deno);
  else warn(`${deno}: tested with ${DENO_VERSION} (npm install -g deno@${DENO_VERSION})`);

  // Network namespaces, routes, iptables and cgroups: the local cluster is Linux, as root.
  if (Deno.build.os !== "linux") fail(`${Deno.build.os}: the local cluster needs Linux`);
  else if (Deno.uid() !== 0) fail("not root: the local cluster creates network namespaces");
  else ok("Linux, root");

  const packages = await missingPackages();
  if (packages.length === 0) ok("Debian packages: all installed");
  else if (await found("apt-get")) {
    ok(`Debian packages: apt-get will install ${packages.join(" ")}`);
    plan.push(`install with apt-get: ${packages.join(" ")}`);
  } else fail(`missing ${packages.join(" ")}, and no apt-get to install them with`);

  const build = await clusterBuild();
  if (build.missing.length === 0) ok(`cluster binaries: built, in ${build.dir}`);
  else {
    plan.push(
      `build ${build.missing.join(", ")} with Go from the Go module proxy ` +
        `(once, about 10 minutes on 2 cores; cached in ${build.dir})`,
    );
  }
  // The tests' linters (scripts/tools.sh) are built with Go too, on a machine's first run.
  const needGo = build.missing.length > 0 || task === "test";
  const goLine = await output(["go", "version"]);
  const go = goLine === undefined ? undefined : goVersion(goLine);
  const want = `Go ${MIN_GO.join(".")} or newer`;
  if (!go) {
    (needGo ? fail : warn)(`no go on PATH: ${want} builds the cluster's binaries`);
  } else if (go[0] < MIN_GO[0] || (go[0] === MIN_GO[0] && go[1] < MIN_GO[1])) {
    (needGo ? fail : warn)(`${goLine!.trim()}: the cluster's binaries need ${want}`);
  } else if (build.missing.length > 0) {
    // What the build fetches first, through go's own proxy settings (GOPROXY, GONOPROXY, .netrc).
    const probe = await run(["go", "list", "-m", GO_PROBE_MODULE], {
      env: { GOTOOLCHAIN: "local" },
      cwd: "/",
    });
    if (probe.code === 0) ok(`${goLine!.trim()}; the Go module proxy answers`);
    else fail(`the Go module proxy did not answer for ${GO_PROBE_MODULE}: ${probe.stderr.trim()}`);
  } else ok(goLine!.trim());

  const kubectl = await output([KUBECTL, "version", "--client", "-o", "json"]);
  if (kubectl === undefined) {
    fail(`no kubectl at ${KUBECTL}: install kubectl 1.${KUBECTL_MINOR} or set RELAY_KUBECTL`);
  } else {
    let client: { gitVersion?: string; minor?: string } = {};
    try {
      client = JSON.parse(kubectl).clientVersion ?? {};
    } catch {
      // an unusual kubectl: said below as an unknown version
    }
    const text = `kubectl ${client.gitVersion} (${KUBECTL})`;
    if (Number.parseInt(client.minor ?? "") === KUBECTL_MINOR) ok(text);
    else warn(`${text}: the cluster is 1.${KUBECTL_MINOR}; RELAY_KUBECTL can name another kubectl`);
  }

  if (options.deps) {
    // What every later `deno run` would fetch on first use, from the versions deno.lock pins.
    const install = await run([Deno.execPath(), "install", "--quiet"], { cwd: REPO_DIR });
    if (install.code === 0) ok("npm dependencies: installed into Deno's cache from deno.lock");
    else fail(`deno install failed: ${install.stderr.trim()}`);
  }

  plan.push(`bring the local cluster up in ${RUN_DIR} (a cluster already up is reused)`);
  if (task === "demo") {
    plan.push(
      "run redis in it as redis.example, start `relay host/redis.example 6379` and SET and " +
        "GET a key through it; the cluster stays up",
    );
  } else {
    plan.push(
      "run every test under tests/, unit and end-to-end, then bring the cluster down " +
        "(`--keep` leaves it up) and check that nothing was left behind",
    );
  }
  return { findings, plan };
}

/**
 * The start of `deno task demo` and `deno task test`: checks the machine, prints what is
 * wrong (and with `checkOnly` everything, and the plan), and exits when something must be
 * fixed first, or when `checkOnly`.
 */
export async function preflight(task: Task, checkOnly: boolean): Promise<void> {
  const { findings, plan } = await checkMachine(task, { deps: checkOnly });
  const label = { ok: "ok  ", warn: "warn", fail: "FAIL" };
  for (const f of findings) {
    if (checkOnly || f.level !== "ok") console.log(`check: ${label[f.level]} ${f.text}`);
  }
  const failed = findings.filter((f) => f.level === "fail").length;
  if (checkOnly) {
    for (const step of plan) console.log(`would: ${step}`);
  }
  if (failed) {
    console.log(`check: ${failed} problem(s) to fix before \`deno task ${task}\` can run`);
    Deno.exit(1);
  }
  if (checkOnly) {
    console.log(`check: ready for \`deno task ${task}\``);
    Deno.exit(0);
  }
}
