/**
 * The local test cluster ("cluster in a box"): `up`, `down`, `env`, `status`.
 *
 *   deno task cluster up     # idempotent; prints the export line when ready
 *   deno task cluster down   # leaves no process, namespace, route or mount behind
 *   deno task cluster env    # export KUBECONFIG=…
 */
import { dnsManifest, installKwokCrds, kubectl, nodeManifest } from "./cluster/addons.ts";
import { certFile, ensureCerts } from "./cluster/certs.ts";
import { NET, NODE_NAME, NODE_NETNS, PATHS, PORTS, REPO_DIR, RUN_DIR } from "./cluster/config.ts";
import {
  binDir,
  daemonsAlive,
  daemonSpecs,
  startDaemonOnce,
  stopDaemons,
  writeConfigs,
} from "./cluster/control_plane.ts";
import { API_SERVER_URL } from "./cluster/kubeconfig.ts";
import {
  createNodeNetwork,
  deleteClusterNetwork,
  listClusterNetns,
  nodeNetworkExists,
  pinBridgeMac,
} from "./cluster/network.ts";
import { ensurePackages } from "./cluster/packages.ts";
import { isAlive, must, run, stopProcess, waitUntil } from "./cluster/proc.ts";
import { KubeClient } from "./cluster/shim/kube.ts";
import { removeShimCgroups } from "./cluster/shim/cgroups.ts";

const log = (message: string) => console.error(`cluster: ${message}`);

const DAEMONS = daemonSpecs("").map((d) => d.name);

function adminClient(): KubeClient {
  return new KubeClient({
    server: API_SERVER_URL,
    caFile: certFile("ca", "crt"),
    certFile: certFile("admin", "crt"),
    keyFile: certFile("admin", "key"),
  });
}

async function apiReady(): Promise<boolean> {
  try {
    await adminClient().request("GET", "/readyz");
    return true;
  } catch {
    return false;
  }
}

/** The binaries' directory, building them first if any is missing. */
async function ensureBinaries(): Promise<string> {
  const dir = await binDir();
  const script = `${REPO_DIR}/scripts/build-cluster.sh`;
  const missing = (await must(["bash", script, "missing"])).trim().split("\n").filter(Boolean);
  if (missing.length > 0) {
    log(`building ${missing.join(", ")} (cached afterwards)`);
    const status = await new Deno.Command("bash", {
      args: [script],
      stdout: "inherit",
      stderr: "inherit",
    }).spawn().status;
    if (!status.success) throw new Error("scripts/build-cluster.sh failed");
  }
  return dir;
}

/** Whether the cluster is up already (every daemon alive, the API ready). */
async function isUp(): Promise<boolean> {
  return daemonsAlive(DAEMONS) && await nodeNetworkExists() && await apiReady();
}

async function up(): Promise<void> {
  const started = Date.now();
  if (await isUp()) {
    await pinBridgeMac();
    log("already up");
    console.log(`export KUBECONFIG=${PATHS.adminKubeconfig}`);
    return;
  }
  await ensurePackages(log);
  const bin = await ensureBinaries();
  const unusable = await unusableReason();
  if (unusable) {
    // Only here is a fresh cluster made: nothing worth keeping survived.
    log(`${unusable}: building a fresh cluster`);
    await down({ quiet: true });
    for (const stale of [PATHS.etcdData, PATHS.pods, PATHS.auditLog, PATHS.logs, PATHS.pids]) {
      await Deno.remove(stale, { recursive: true }).catch(() => {});
    }
  } else {
    // Partly up (a daemon died or was killed): other people's objects live in etcd and
    // their pods in the namespaces, so restart only what is dead.
    const dead = DAEMONS.filter((name) => !daemonsAlive([name]));
    log(`restarting ${dead.join(", ") || "nothing"} (keeping etcd data and pods)`);
    for (const name of dead) await stopStrays(bin, name);
  }
  for (const dir of [RUN_DIR, PATHS.logs, PATHS.pids, PATHS.pods]) {
    await Deno.mkdir(dir, { recursive: true });
  }
  await ensureCerts();
  await writeConfigs();
  if (unusable) await createNodeNetwork();
  else await pinBridgeMac();

  // startDaemonOnce leaves a live daemon alone, so these steps serve a fresh start and a
  // partial restart alike; every apply below is idempotent.
  const specs = new Map(daemonSpecs(bin).map((spec) => [spec.name, spec]));
  const start = (name: string) => startDaemonOnce(specs.get(name)!);
  start("etcd");
  await waitUntil("etcd", async () => {
    const response = await fetch(`http://127.0.0.1:${PORTS.etcdClient}/health`);
    return response.ok && (await response.json()).health === "true";
  }, 30_000);
  start("kube-apiserver");
  await waitUntil("kube-apiserver /readyz", apiReady, 60_000, 250);
  start("kube-controller-manager");
  start("kube-scheduler");
  start("kube-proxy");
  await installKwokCrds();
  await kubectl(["apply", "-f", "-"], nodeManifest());
  start("kwok");
  start("kubelet-shim");
  await waitUntil(
    `node ${NODE_NAME} Ready`,
    async () => {
      const out = await kubectl([
        "get",
        "node",
        NODE_NAME,
        "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
      ]);
      return out.trim() === "True";
    },
    60_000,
    500,
  );
  // The default ServiceAccount appears asynchronously; pods created before it are refused.
  await waitUntil(
    "default ServiceAccount",
    async () => {
      await kubectl(["get", "serviceaccount", "default", "-n", "default"]);
      return true;
    },
    30_000,
    250,
  );
  await kubectl(["apply", "-f", "-"], dnsManifest());
  await waitForDns();
  log(`up in ${((Date.now() - started) / 1000).toFixed(1)} s (run dir ${RUN_DIR})`);
  console.log(`export KUBECONFIG=${PATHS.adminKubeconfig}`);
}

/** Waits until cluster DNS answers from the node namespace; tolerant while the fixture is missing. */
async function waitForDns(): Promise<void> {
  const fixture = `${REPO_DIR}/tests/fixtures/dns_server.ts`;
  if (!await Deno.stat(fixture).then(() => true, () => false)) {
    log(`warning: ${fixture} does not exist yet; cluster DNS will not answer`);
    return;
  }
  await waitUntil(
    "cluster DNS (kube-dns) to answer",
    async () => {
      const out = await run([
        "ip",
        "netns",
        "exec",
        NODE_NETNS,
        "dig",
        "+short",
        "+time=1",
        "+tries=1",
        `@${NET.dnsServiceIp}`,
        "kubernetes.default.svc.cluster.local",
      ]);
      return out.code === 0 && out.stdout.trim() === NET.apiServiceIp;
    },
    60_000,
    500,
  );
}

/**
 * Why the cluster's state cannot be restarted in place (so `up` must build afresh), or
 * undefined when restarting the dead daemons is enough: etcd's data, the certificates and the
 * node namespace (which holds every pod's link) must all have survived.
 */
async function unusableReason(): Promise<string | undefined> {
  const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
  if (!await exists(`${PATHS.etcdData}/member`)) return "no etcd data";
  if (!await exists(certFile("ca", "crt"))) return "no cluster CA";
  if (!await nodeNetworkExists()) return `no node namespace ${NODE_NETNS}`;
  return undefined;
}

/**
 * Stops processes of the daemon `name` that its pid file does not name (an `up` that crashed,
 * a lost pid file), so the restarted one does not find its ports taken.
 */
async function stopStrays(bin: string, name: string): Promise<void> {
  const shim = `${REPO_DIR}/scripts/cluster/shim/main.ts`;
  for (const pid of await strayProcesses(bin)) {
    try {
      const cmdline = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
      const isIt = name === "kubelet-shim"
        ? cmdline.includes(shim)
        : cmdline[0] === `${bin}/${name}`;
      if (isIt) await stopProcess(pid, 2000);
    } catch {
      // gone meanwhile
    }
  }
}

/** Processes of this cluster that no pid file names any more (a crashed `up`, a lost pid). */
async function strayProcesses(bin: string): Promise<number[]> {
  const stray: number[] = [];
  const shim = `${REPO_DIR}/scripts/cluster/shim/main.ts`;
  for await (const entry of Deno.readDir("/proc")) {
    const pid = Number(entry.name);
    if (!Number.isInteger(pid) || pid === Deno.pid) continue;
    try {
      const cmdline = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
      if (cmdline[0]?.startsWith(`${bin}/`) || cmdline.includes(shim)) stray.push(pid);
    } catch {
      // gone meanwhile
    }
  }
  return stray;
}

async function down(options: { quiet?: boolean } = {}): Promise<void> {
  // The shim first: it stops pods' processes as a kubelet would, before their API goes away.
  await stopDaemons(DAEMONS);
  const bin = await binDir();
  for (const pid of await strayProcesses(bin)) await stopProcess(pid, 2000);
  removeShimCgroups();
  await deleteClusterNetwork();
  if (!options.quiet) log("down");
}

async function status(): Promise<void> {
  const upNow = await isUp();
  console.log(upNow ? "up" : "down");
  for (const name of DAEMONS) {
    const pid = await Deno.readTextFile(`${PATHS.pids}/${name}.pid`).then(Number, () => 0);
    console.log(`  ${name}: ${pid && isAlive(pid) ? `pid ${pid}` : "not running"}`);
  }
  console.log(`  namespaces: ${(await listClusterNetns()).join(" ") || "none"}`);
  if (!upNow) Deno.exitCode = 1;
}

/**
 * Serialises `up` and `down` across processes (test files, engineers, CI steps may race):
 * an exclusive lock on a file beside the run dir, released when this process exits.
 */
async function lockCluster(): Promise<void> {
  await Deno.mkdir(RUN_DIR, { recursive: true });
  const file = await Deno.open(`${RUN_DIR}/.lock`, { create: true, write: true });
  await file.lock(true);
}

const command = Deno.args[0];
try {
  if (command === "up" || command === "down") await lockCluster();
  switch (command) {
    case "up":
      await up();
      break;
    case "down":
      await down();
      break;
    case "env":
      console.log(`export KUBECONFIG=${PATHS.adminKubeconfig}`);
      break;
    case "status":
      await status();
      break;
    default:
      console.error("usage: deno task cluster up|down|env|status");
      Deno.exit(2);
  }
} catch (error) {
  log(`${command} failed: ${error instanceof Error ? error.message : error}`);
  log(`daemon logs: ${PATHS.logs}`);
  Deno.exit(1);
}
