/**
 * A laptop's distance from its cluster, for the benchmark: Toxiproxy (built by
 * scripts/build-cluster.sh) in front of the API server, adding half the round trip each way,
 * and a kubeconfig whose server is the proxy. This kernel has no netem qdisc, so the delay is
 * a proxy's; the cluster side (API server, kubelet, pods) is unchanged, as it would be.
 */
import { KUBECONFIG, REPO_DIR, runCommand } from "../../tests/e2e/harness.ts";

/** A running latency proxy and the kubeconfig that goes through it. */
export interface LatencyProxy {
  rttMs: number;
  kubeconfig: string;
  stop(): Promise<void>;
}

/** The Toxiproxy server, building it if needed; or why there is none. */
export async function findToxiproxy(): Promise<string | { skipped: string }> {
  const built = await runCommand(["bash", `${REPO_DIR}/scripts/build-cluster.sh`, "toxiproxy"]);
  const path = built.stdout.trim();
  if (built.code !== 0 || !path) {
    const why = built.stderr.trim().split("\n").pop() || `exit ${built.code}`;
    return { skipped: `scripts/build-cluster.sh toxiproxy failed: ${why}` };
  }
  return path;
}

/** Starts Toxiproxy with `rttMs` of round trip between the tools and the API server. */
export async function startLatencyProxy(server: string, rttMs: number): Promise<LatencyProxy> {
  const apiPort = await freePort();
  const child = new Deno.Command(server, {
    args: ["-host", "127.0.0.1", "-port", String(apiPort)],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* exited already */ }
    await child.status;
  };
  try {
    const api = `http://127.0.0.1:${apiPort}`;
    await waitForApi(api);
    const config = await Deno.readTextFile(KUBECONFIG);
    // The kubeconfig is JSON or YAML; either way one `server: https://HOST:PORT`.
    const server = /(["']?server["']?\s*:\s*["']?)https:\/\/([^"'\s]+)/.exec(config);
    if (!server) throw new Error(`no server in ${KUBECONFIG}`);
    const upstream = server[2];
    const listen = `127.0.0.1:${await freePort()}`;
    await post(`${api}/proxies`, { name: "apiserver", listen, upstream, enabled: true });
    for (const stream of ["upstream", "downstream"]) {
      await post(`${api}/proxies/apiserver/toxics`, {
        name: `latency_${stream}`,
        type: "latency",
        stream,
        toxicity: 1,
        attributes: { latency: rttMs / 2, jitter: 0 },
      });
    }
    // The API server's certificate names 127.0.0.1, so only the port changes.
    const kubeconfig = await Deno.makeTempFile({ prefix: `relay-bench-rtt${rttMs}-` });
    await Deno.writeTextFile(
      kubeconfig,
      config.replace(server[0], `${server[1]}https://${listen}`),
    );
    return {
      rttMs,
      kubeconfig,
      stop: async () => {
        await stop();
        await Deno.remove(kubeconfig).catch(() => {});
      },
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Median milliseconds of `kubectl get ns` with `kubeconfig`: the round trips it pays. */
export async function kubectlGetNsMs(
  kubectl: string,
  kubeconfig: string,
  runs = 3,
): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    const r = await runCommand([kubectl, `--kubeconfig=${kubeconfig}`, "get", "ns", "-o", "name"]);
    if (r.code !== 0) throw new Error(`kubectl get ns: ${r.stderr.trim()}`);
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
}

async function post(url: string, body: unknown): Promise<void> {
  const response = await fetch(url, { method: "POST", body: JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) throw new Error(`toxiproxy ${url}: ${response.status} ${text}`);
}

async function waitForApi(api: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const r = await fetch(`${api}/version`);
      await r.body?.cancel();
      if (r.ok) return;
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`toxiproxy did not start: ${error}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function freePort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return await Promise.resolve(port);
}
