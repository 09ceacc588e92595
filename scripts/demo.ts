/**
 * `deno task demo`: relay's main job, as a new user would see it. Brings the local cluster up,
 * runs redis inside it under the in-cluster name `redis.example`, starts
 * `relay host/redis.example 6379` exactly as a user types it, and talks to redis through it.
 *
 *   deno task demo [--check]
 *   --check   check the machine's prerequisites, say what the demo would do, and stop
 */
import { KUBECTL } from "./cluster/config.ts";
import { preflight } from "./prerequisites.ts";
import { RELAY_RUN_FLAGS } from "./release/compile.ts";

const REPO = new URL("..", import.meta.url).pathname;
const RUN_DIR = Deno.env.get("RELAY_CLUSTER_DIR") ?? "/tmp/relay-cluster";
const KUBECONFIG = `${RUN_DIR}/admin.kubeconfig`;
const env = { KUBECONFIG };

function say(line: string): void {
  console.log(`\x1b[1mdemo:\x1b[0m ${line}`);
}

async function run(cmd: string, args: string[], input?: string): Promise<string> {
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdin: input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
  }
  const out = await child.output();
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${text.decode(out.stderr)}`);
  }
  return text.decode(out.stdout);
}

const REDIS = `
apiVersion: apps/v1
kind: Deployment
metadata: { name: redis, namespace: default }
spec:
  selector: { matchLabels: { app: redis } }
  template:
    metadata: { labels: { app: redis } }
    spec:
      containers:
        - name: redis
          image: redis:7
          ports: [{ containerPort: 6379 }]
          readinessProbe: { tcpSocket: { port: 6379 } }
---
apiVersion: v1
kind: Service
metadata: { name: redis, namespace: default }
spec:
  selector: { app: redis }
  ports: [{ port: 6379 }]
---
# The cluster DNS answers extra names from this ConfigMap, like a real in-cluster name.
apiVersion: v1
kind: ConfigMap
metadata: { name: relay-dns-extra, namespace: kube-system }
data:
  hosts: |
    redis.example redis.default.svc.cluster.local
`;

await preflight("demo", Deno.args.includes("--check"));

say("bringing the local cluster up (the first run builds it: about 10 minutes)");
const up = await new Deno.Command(Deno.execPath(), {
  args: ["run", "--allow-all", "--unstable-net", `${REPO}scripts/cluster.ts`, "up"],
  stdout: "inherit",
  stderr: "inherit",
}).spawn().status;
if (!up.success) Deno.exit(1);

say("running redis in the cluster as redis.example");
await run(KUBECTL, ["apply", "-f", "-"], REDIS);
await run(KUBECTL, ["rollout", "status", "deployment/redis", "--timeout=120s"]);

say("$ relay host/redis.example 6379");
const relay = new Deno.Command(Deno.execPath(), {
  args: ["run", ...RELAY_RUN_FLAGS, `${REPO}main.ts`, "host/redis.example", "6379"],
  env,
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const lines = relay.stdout.pipeThrough(new TextDecoderStream()).getReader();
let seen = "";
while (!seen.includes("Forwarding from")) {
  const { value, done } = await lines.read();
  if (done) {
    say("relay exited before it was ready");
    Deno.exit(1);
  }
  seen += value;
  Deno.stdout.writeSync(new TextEncoder().encode(value));
}

let ok = false;
try {
  say("$ redis-cli -p 6379 SET greeting 'hello through relay'");
  console.log(
    (await run("redis-cli", ["-p", "6379", "SET", "greeting", "hello through relay"])).trim(),
  );
  say("$ redis-cli -p 6379 GET greeting");
  const got = (await run("redis-cli", ["-p", "6379", "GET", "greeting"])).trim();
  console.log(got);
  ok = got === "hello through relay";
} finally {
  relay.kill("SIGTERM");
  await relay.status;
}
say(
  ok
    ? "redis inside the cluster answered through relay; relay stopped and deleted its agent. The cluster stays up: `deno task cluster down` stops it."
    : "the redis command did not answer as expected",
);
Deno.exit(ok ? 0 : 1);
