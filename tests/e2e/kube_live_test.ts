/**
 * lib/kube against the real API server of the local test cluster, below the CLI.
 * Works in a namespace of its own and deletes it afterwards.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { loadKube } from "../../lib/kube/config.ts";
import { dialPortForward } from "../../lib/kube/portforward.ts";
import { resolveTarget } from "../../lib/kube/resolve.ts";
import { startAgentPod } from "../../lib/kube/agent_pod.ts";
import { KubeError } from "../../lib/kube/errors.ts";
import { UsageError } from "../../lib/errors.ts";
import { isReadyPod } from "../../lib/kube/pods.ts";

import { ensureCluster, KUBECONFIG as kubeconfig } from "./harness.ts";

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await fn();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}`);
}

Deno.test({
  name: "live: resolve, port-forward, agent Job lifecycle, impersonation",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    const kube = loadKube({ kubeconfig });
    const namespace = `relay-kube-${crypto.randomUUID().slice(0, 8)}`;
    await kube.core.createNamespace({ body: { metadata: { name: namespace } } });
    try {
      const labels = { app: "echo" };
      await kube.apps.createNamespacedDeployment({
        namespace,
        body: {
          metadata: { name: "echo" },
          spec: {
            replicas: 1,
            selector: { matchLabels: labels },
            template: {
              metadata: { labels },
              spec: {
                containers: [{
                  name: "echo",
                  image: "relay-test/echo:latest",
                  ports: [{ name: "greet", containerPort: 8080 }],
                  readinessProbe: { tcpSocket: { port: 8080 as never }, periodSeconds: 1 },
                }],
              },
            },
          },
        },
      });
      await kube.core.createNamespacedService({
        namespace,
        body: {
          metadata: { name: "echo" },
          spec: {
            selector: labels,
            ports: [{ name: "greet", port: 80, targetPort: 8080 as never }],
          },
        },
      });
      const pod = await until("a Ready echo pod", async () => {
        const pods = await kube.core.listNamespacedPod({ namespace, labelSelector: "app=echo" });
        return pods.items.find(isReadyPod);
      });

      const svc = await kube.core.readNamespacedService({ name: "echo", namespace });
      const [viaSvc] = await resolveTarget(kube, { kind: "svc", name: "echo", namespace }, [
        { remote: "greet" },
      ]);
      assertEquals(await viaSvc.destination(), { host: svc.spec!.clusterIP!, port: 80 });
      const [viaDeploy] = await resolveTarget(kube, { kind: "deploy", name: "echo", namespace }, [
        { remote: "greet" },
      ]);
      assertEquals(await viaDeploy.destination(), { host: pod.status!.podIP!, port: 8080 });
      await assertRejects(
        () => resolveTarget(kube, { kind: "sts", name: "nope", namespace }, [{ remote: 1 }]),
        UsageError,
        `sts/nope not found in namespace ${namespace}`,
      );

      // Port-forward through the real API server and kubelet: the echo greets, then echoes.
      const duplex = await dialPortForward(kube, {
        namespace,
        pod: pod.metadata!.name!,
        port: 8080,
      });
      const reader = duplex.readable.getReader();
      let text = "";
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      assert(text.startsWith(`pod=${pod.metadata!.name}`), `greeting: ${text}`);
      const writer = duplex.writable.getWriter();
      await writer.write(new TextEncoder().encode("ping\n"));
      let echoed = "";
      while (!echoed.includes("ping\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        echoed += new TextDecoder().decode(value);
      }
      assertEquals(echoed, "ping\n");
      await writer.close();

      await assertRejects(
        () => dialPortForward(kube, { namespace, pod: "no-such-pod", port: 1 }),
        UsageError,
        "not found",
      );
      const nobody = loadKube({ kubeconfig, as: "relay-nobody", asGroups: ["relay-nobodies"] });
      await assertRejects(
        () => dialPortForward(nobody, { namespace, pod: pod.metadata!.name!, port: 8080 }),
        KubeError,
        `cannot create/get pods/portforward in namespace ${namespace}`,
      );
      nobody.close();

      // The agent's Job: Running, port-forwardable, and gone after stop().
      const agent = await startAgentPod(kube, { namespace, podRunningTimeoutMs: 60_000 });
      const tunnel = await dialPortForward(kube, {
        namespace,
        pod: agent.podName,
        port: agent.port,
      });
      await tunnel.writable.close();
      await agent.stop();
      await until("the agent Job to go", async () => {
        const jobs = await kube.batch.listNamespacedJob({ namespace });
        return jobs.items.length === 0 ? true : undefined;
      });
    } finally {
      await kube.core.deleteNamespace({ name: namespace });
      kube.close();
    }
  },
});
