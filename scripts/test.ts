/**
 * The one test command (`deno task test`): builds the cluster's binaries if needed, brings
 * the cluster up, runs every test under tests/ (unit and end-to-end), brings the cluster
 * down and checks that nothing was left behind. Ignored tests fail the run: a test that
 * cannot run proves nothing.
 *
 *   deno task test [--keep] [--check] [-- extra deno test args]
 *   --keep   leave the cluster up afterwards (and skip the leftovers check)
 *   --check  check the machine's prerequisites, say what the run would do, and stop
 */
import { NET, NODE_NETNS, POD_NETNS_PREFIX, REPO_DIR } from "./cluster/config.ts";
import { binDir } from "./cluster/control_plane.ts";
import { preflight } from "./prerequisites.ts";
import { ignoredCount } from "./test_summary.ts";

const dashDash = Deno.args.indexOf("--");
const own = dashDash >= 0 ? Deno.args.slice(0, dashDash) : Deno.args;
const keep = own.includes("--keep");
const extra = dashDash >= 0 ? Deno.args.slice(dashDash + 1) : [];

/** Runs a command with inherited stdio; returns its exit code. */
async function step(argv: string[]): Promise<number> {
  const status = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd: REPO_DIR,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  return status.code;
}

/** Runs deno test, showing its output as it comes and keeping a copy to read the summary. */
async function runTests(): Promise<{ code: number; output: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "--allow-all", "--unstable-net", ...extra, "tests/"],
    cwd: REPO_DIR,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  let output = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    await Deno.stdout.write(chunk);
    output += decoder.decode(chunk, { stream: true });
  }
  return { code: (await child.status).code, output };
}

/** What `down` must not leave behind; each entry is one finding. */
async function leftovers(): Promise<string[]> {
  const found: string[] = [];
  const netns = await Array.fromAsync(Deno.readDir("/run/netns")).catch(() => []);
  for (const entry of netns) {
    if (entry.name === NODE_NETNS || entry.name.startsWith(POD_NETNS_PREFIX)) {
      found.push(`network namespace ${entry.name}`);
    }
  }
  const hostNet = (await Deno.stat("/proc/self/ns/net")).ino;
  const bin = await binDir();
  const shim = `${REPO_DIR}/scripts/cluster/shim/main.ts`;
  for (const entry of await Array.fromAsync(Deno.readDir("/proc"))) {
    const pid = Number(entry.name);
    if (!Number.isInteger(pid) || pid === Deno.pid) continue;
    try {
      const cmdline = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
      if (cmdline.length <= 1 && !cmdline[0]) continue; // a zombie or a kernel thread
      const net = (await Deno.stat(`/proc/${pid}/ns/net`)).ino;
      if (cmdline[0].startsWith(`${bin}/`) || cmdline.includes(shim) || net !== hostNet) {
        found.push(`process ${pid}: ${cmdline.join(" ").trim()}`);
      }
    } catch {
      // exited meanwhile
    }
  }
  const mounts = await Deno.readTextFile("/proc/self/mounts");
  for (const line of mounts.split("\n")) {
    if (/\/run\/netns\/relay-|relay-cluster/.test(line)) found.push(`mount ${line.split(" ")[1]}`);
  }
  const routes = await new Deno.Command("ip", { args: ["route", "show", "table", "all"] }).output();
  const routeText = new TextDecoder().decode(routes.stdout);
  if (routeText.includes(NET.reserved)) found.push(`route ${NET.reserved}`);
  const links = await new Deno.Command("ip", { args: ["-o", "link"] }).output();
  if (new TextDecoder().decode(links.stdout).includes(NET.hostVeth)) {
    found.push(`link ${NET.hostVeth}`);
  }
  return found;
}

await preflight("test", own.includes("--check"));

const cluster = [Deno.execPath(), "run", "--allow-all", "--unstable-net", "scripts/cluster.ts"];
const results: [string, boolean, string][] = [];

const upCode = await step([...cluster, "up"]);
results.push(["cluster up", upCode === 0, upCode === 0 ? "" : `exit ${upCode}`]);

if (upCode === 0) {
  const { code, output } = await runTests();
  const summary = output.split("\n").reverse().find((line) => /\d+ passed/.test(line)) ?? "";
  results.push(["deno test", code === 0, summary.trim() || `exit ${code}`]);
  const ignored = ignoredCount(summary);
  results.push([
    "no ignored tests",
    ignored === 0,
    ignored ? `${ignored} test(s) or step(s) ignored: every test must run` : "",
  ]);
}

if (!keep) {
  const downCode = await step([...cluster, "down"]);
  results.push(["cluster down", downCode === 0, downCode === 0 ? "" : `exit ${downCode}`]);
  const left = await leftovers();
  results.push(["down leaves nothing behind", left.length === 0, left.join("; ")]);
}

console.log("\n== relay test summary ==");
for (const [name, ok, detail] of results) {
  console.log(`${ok ? "ok    " : "FAILED"} ${name}${detail ? ` — ${detail}` : ""}`);
}
const failed = results.filter(([, ok]) => !ok).length;
console.log(failed ? `${failed} check(s) failed` : "all checks passed");
Deno.exit(failed ? 1 : 0);
