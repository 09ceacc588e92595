import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  AGENT_PORT,
  agentJobManifest,
  type AgentPodApi,
  startAgentPod,
} from "../lib/kube/agent_pod.ts";
import { mergePatch } from "../lib/kube/merge_patch.ts";
import { KubeError } from "../lib/kube/errors.ts";
import { UsageError } from "../lib/errors.ts";
import { tokenDigest } from "../lib/contract.ts";
import type { V1Job, V1Pod } from "@kubernetes/client-node";
import { DEFAULT_AGENT_IMAGE } from "../lib/version.ts";

const DIGEST = await tokenDigest("the-session-token");
const base = { namespace: "ns", image: "img:1", sessionId: "s1", tokenDigest: DIGEST };

Deno.test("tokenDigest: the SHA-256 of the token's UTF-8, in lowercase hex", async () => {
  assertEquals(
    await tokenDigest("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

Deno.test("agentJobManifest: a hardened Job that runs the agent with its token's digest", () => {
  const job = agentJobManifest(base);
  assertEquals([job.metadata?.namespace, job.metadata?.generateName], ["ns", "relay-agent-"]);
  assertEquals([job.spec?.backoffLimit, job.spec?.ttlSecondsAfterFinished], [0, 60]);
  const template = job.spec!.template;
  assertEquals(template.metadata?.labels, {
    "app.kubernetes.io/name": "relay-agent",
    "relay.dev/session": "s1",
  });
  const spec = template.spec!;
  assertEquals(
    [spec.restartPolicy, spec.automountServiceAccountToken, spec.enableServiceLinks],
    ["Never", false, false],
  );
  assertEquals(spec.securityContext?.runAsNonRoot, true);
  assertEquals(spec.securityContext?.runAsUser, 65532);
  assertEquals(spec.securityContext?.seccompProfile?.type, "RuntimeDefault");
  // Only a safe sysctl, which every kubelet allows without a flag.
  assertEquals(spec.securityContext?.sysctls, [
    { name: "net.ipv4.ip_local_port_range", value: "1024 65535" },
  ]);
  const [c] = spec.containers;
  assertEquals([c.image, c.args], ["img:1", ["agent", "--port", String(AGENT_PORT)]]);
  // The spec holds the digest only: whoever may read pods or jobs learns no token, and the
  // pod needs nothing else to exist before it starts.
  assertEquals(c.env, [{ name: "RELAY_AGENT_TOKEN_SHA256", value: DIGEST }]);
  assert(!JSON.stringify(job).includes("the-session-token"), "no token anywhere in the Job");
  assertEquals(c.securityContext, {
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    capabilities: { drop: ["ALL"] },
  });
  assert(c.resources?.requests?.memory && c.resources.limits?.memory, "resources set");
});

Deno.test("agentJobManifest: --patch merges into the pod template and may move the Job", () => {
  const job = agentJobManifest({
    ...base,
    patch: {
      metadata: { namespace: "elsewhere", generateName: "mine-", labels: { team: "a" } },
      spec: { nodeSelector: { zone: "z1" }, automountServiceAccountToken: null },
    },
  });
  assertEquals([job.metadata?.namespace, job.metadata?.generateName], ["elsewhere", "mine-"]);
  const template = job.spec!.template;
  assertEquals(template.metadata?.labels?.team, "a");
  assertEquals(template.metadata?.labels?.["relay.dev/session"], "s1");
  assert(!("namespace" in (template.metadata ?? {})), "namespace moved to the Job");
  assertEquals(template.spec?.nodeSelector, { zone: "z1" });
  assertEquals(template.spec?.automountServiceAccountToken, undefined);
});

Deno.test("agentJobManifest: a patch that drops or changes the token's digest or the args is refused", () => {
  assertThrows(
    () =>
      agentJobManifest({
        ...base,
        patch: {
          spec: { containers: [{ name: "agent", image: "x", args: ["agent", "--port", "4646"] }] },
        },
      }),
    UsageError,
    "RELAY_AGENT_TOKEN_SHA256",
  );
  // Another digest, or one from elsewhere, is refused too.
  for (
    const env of [
      [{ name: "RELAY_AGENT_TOKEN_SHA256", value: "0".repeat(64) }],
      [{ name: "RELAY_AGENT_TOKEN_SHA256", valueFrom: { secretKeyRef: { name: "s", key: "k" } } }],
      [
        { name: "RELAY_AGENT_TOKEN_SHA256", value: DIGEST },
        { name: "RELAY_AGENT_TOKEN_SHA256", value: "0".repeat(64) },
      ],
    ]
  ) {
    assertThrows(
      () =>
        agentJobManifest({
          ...base,
          patch: {
            spec: {
              containers: [{ name: "agent", image: "x", args: ["agent", "--port", "4646"], env }],
            },
          },
        }),
      UsageError,
      "removes or changes the agent's RELAY_AGENT_TOKEN_SHA256 env",
    );
  }
  assertThrows(
    () => agentJobManifest({ ...base, patch: { spec: { containers: [{ name: "other" }] } } }),
    UsageError,
  );
});

Deno.test("agentJobManifest: a patch that shares the node's network or the pod with other processes is refused", () => {
  const agent = {
    name: "agent",
    image: "x",
    args: ["agent", "--port", "4646"],
    env: [{ name: "RELAY_AGENT_TOKEN_SHA256", value: DIGEST }],
  };
  for (const key of ["hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"]) {
    assertThrows(
      () => agentJobManifest({ ...base, patch: { spec: { [key]: true } } }),
      UsageError,
      `spec.${key}`,
    );
  }
  assertThrows(
    () =>
      agentJobManifest({
        ...base,
        patch: { spec: { containers: [agent, { name: "sidecar", image: "y" }] } },
      }),
    UsageError,
    "sidecar",
  );
  assertThrows(
    () =>
      agentJobManifest({
        ...base,
        patch: { spec: { initContainers: [{ name: "init-proxy", image: "y" }] } },
      }),
    UsageError,
    "init-proxy",
  );
  // The same containers, patched in again, are fine.
  agentJobManifest({ ...base, patch: { spec: { containers: [agent] } } });
});

Deno.test("agentJobManifest: a patch that leaves a field relay reads with the wrong type is refused by name", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ spec: { containers: "x" } }, 'spec.containers must be a list, not "x"'],
    [{ spec: { containers: [null] } }, "spec.containers[0] must be an object, not null"],
    [{ spec: { containers: [{ image: "y" }] } }, "spec.containers[0].name must be a string"],
    [{ spec: { initContainers: {} } }, "spec.initContainers must be a list, not {}"],
    [{ spec: 1 }, "spec must be an object, not 1"],
    [{ metadata: { labels: [] } }, "metadata.labels must be an object, not []"],
    [{ metadata: "m" }, 'metadata must be an object, not "m"'],
  ];
  for (const [patch, message] of cases) {
    assertThrows(() => agentJobManifest({ ...base, patch }), UsageError, message);
  }
});

Deno.test("mergePatch follows RFC 7386", () => {
  assertEquals(mergePatch({ a: "b", c: { d: "e", f: "g" } }, { a: "z", c: { f: null } }), {
    a: "z",
    c: { d: "e" },
  });
  assertEquals(mergePatch({ a: [1, 2] }, { a: [3] }), { a: [3] });
  assertEquals(mergePatch({ a: 1 }, ["x"]), ["x"]);
});

/**
 * A stub cluster whose agent pod is listed in `states[0]` and then goes through the rest as
 * watch events, recording calls.
 */
function stubApi(states: Partial<V1Pod>[]): AgentPodApi & { calls: string[] } {
  const calls: string[] = [];
  const pod = (state: Partial<V1Pod>) => ({ metadata: { name: "relay-agent-x1-abc" }, ...state });
  const api: AgentPodApi & { calls: string[] } = {
    calls,
    batch: {
      createNamespacedJob: ({ namespace, body }: { namespace: string; body: V1Job }) => {
        calls.push(`create job in ${namespace}`);
        return Promise.resolve({
          ...body,
          metadata: { ...body.metadata, name: "relay-agent-x1", uid: "u1" },
        });
      },
      deleteNamespacedJob: (
        { name, propagationPolicy }: { name: string; propagationPolicy?: string },
      ) => {
        calls.push(`delete job ${name} ${propagationPolicy}`);
        return Promise.resolve({});
      },
    } as unknown as AgentPodApi["batch"],
    core: {
      listNamespacedPod: () => Promise.resolve({ items: [pod(states[0])] }),
      listNamespacedEvent: () =>
        Promise.resolve({
          items: [{
            type: "Warning",
            reason: "FailedScheduling",
            message: "0/1 nodes are available",
          }],
        }),
    } as unknown as AgentPodApi["core"],
    watch: {
      watch: (_path, _params, onEvent) => {
        const stop = new AbortController();
        void (async () => {
          for (const state of states.slice(1)) {
            await new Promise((resolve) => setTimeout(resolve, 1));
            if (!stop.signal.aborted) onEvent("MODIFIED", pod(state));
          }
        })();
        return Promise.resolve(stop);
      },
    },
  };
  return api;
}

const running: Partial<V1Pod> = {
  status: {
    phase: "Running",
    containerStatuses: [{
      name: "agent",
      state: { running: {} },
      image: "",
      imageID: "",
      ready: true,
      restartCount: 0,
    }],
  },
};

Deno.test("startAgentPod: one Job with the token's digest, waits for Running; stop() deletes Job and pod once", async () => {
  const api = stubApi([{ status: { phase: "Pending" } }, running]);
  let created: V1Job | undefined;
  const createJob = api.batch.createNamespacedJob;
  api.batch.createNamespacedJob = (request) => {
    created = request.body;
    return createJob(request);
  };
  const agent = await startAgentPod(api, {
    namespace: "ns",
    podRunningTimeoutMs: 10_000,
  });
  assertEquals([agent.podName, agent.namespace, agent.port], ["relay-agent-x1-abc", "ns", 4646]);
  assertEquals(agent.token.length, 64);
  assertEquals(
    created?.spec?.template.spec?.containers[0].env,
    [{ name: "RELAY_AGENT_TOKEN_SHA256", value: await tokenDigest(agent.token) }],
  );
  await Promise.all([agent.stop(), agent.stop()]);
  await agent.stop();
  assertEquals(api.calls, ["create job in ns", "delete job relay-agent-x1 Background"]);
});

Deno.test("startAgentPod: requested() runs once the Job's request is made, before its answer", async () => {
  const api = stubApi([running]);
  const events: string[] = [];
  const createJob = api.batch.createNamespacedJob;
  api.batch.createNamespacedJob = async (request) => {
    events.push("request made");
    await new Promise((resolve) => setTimeout(resolve, 10));
    events.push("answered");
    return await createJob(request);
  };
  const agent = await startAgentPod(api, {
    namespace: "ns",
    podRunningTimeoutMs: 10_000,
    requested: () => events.push("requested"),
  });
  assertEquals(events, ["request made", "requested", "answered"]);
  await agent.stop();
});

Deno.test("startAgentPod: Pending past the timeout deletes the Job and names the reason", async () => {
  const api = stubApi([{
    status: {
      phase: "Pending",
      conditions: [{
        type: "PodScheduled",
        status: "False",
        reason: "Unschedulable",
        message: "no nodes",
      }],
    },
  }]);
  const error = await assertRejects(
    () => startAgentPod(api, { namespace: "ns", podRunningTimeoutMs: 0 }),
    KubeError,
    "Unschedulable",
  );
  assert(error.message.includes("FailedScheduling"), error.message);
  assertEquals(api.calls.includes("delete job relay-agent-x1 Background"), true);
});

Deno.test("startAgentPod: a hopeless image fails at once", async () => {
  const api = stubApi([{
    status: {
      phase: "Pending",
      containerStatuses: [{
        name: "agent",
        state: { waiting: { reason: "InvalidImageName", message: "bad ref" } },
        image: "",
        imageID: "",
        ready: false,
        restartCount: 0,
      }],
    },
  }]);
  await assertRejects(
    () => startAgentPod(api, { namespace: "ns", podRunningTimeoutMs: 60_000 }),
    KubeError,
    "InvalidImageName",
  );
  assertEquals(api.calls.at(-1), "delete job relay-agent-x1 Background");
});

Deno.test("startAgentPod: an agent that exits on an image the user chose asks whether it is relay's", async () => {
  const exited = {
    status: {
      phase: "Running",
      containerStatuses: [{
        name: "agent",
        state: { terminated: { reason: "Completed", exitCode: 0 } },
        image: "",
        imageID: "",
        ready: false,
        restartCount: 0,
      }],
    },
  };
  const error = await assertRejects(
    () =>
      startAgentPod(stubApi([exited]), {
        namespace: "ns",
        podRunningTimeoutMs: 60_000,
        image: "ghcr.io/knight42/krelay-server:v0.0.4",
      }),
    KubeError,
  );
  assertEquals(
    error.message,
    "agent pod relay-agent-x1-abc in namespace ns exited (Completed); is " +
      "ghcr.io/knight42/krelay-server:v0.0.4 relay's agent image? --agent-image (krelay's " +
      `--server.image) must run \`relay agent\`, as ${DEFAULT_AGENT_IMAGE} does; krelay's ` +
      "server image cannot",
  );
  // relay's own image exiting is not a question of which image.
  await assertRejects(
    () => startAgentPod(stubApi([exited]), { namespace: "ns", podRunningTimeoutMs: 60_000 }),
    KubeError,
    "exited (Completed)",
  ).then((e) => assertEquals(e.message.includes("agent image?"), false));
});

Deno.test("startAgentPod: a pod the kubelet rejects fails at once with the kubelet's reason", async () => {
  const api = stubApi([{
    status: {
      phase: "Failed",
      reason: "SysctlForbidden",
      message: 'Pod forbidden sysctl: "net.core.somaxconn" not allowlisted',
    },
  }]);
  await assertRejects(
    () => startAgentPod(api, { namespace: "ns", podRunningTimeoutMs: 60_000 }),
    KubeError,
    'is Failed (SysctlForbidden: Pod forbidden sysctl: "net.core.somaxconn" not allowlisted)',
  );
  assertEquals(api.calls.at(-1), "delete job relay-agent-x1 Background");
});

Deno.test("startAgentPod: a pod list the API server refuses fails at once, naming it", async () => {
  const api = stubApi([{ status: { phase: "Pending" } }]);
  api.core.listNamespacedPod = () => Promise.reject(Object.assign(new Error("no"), { code: 403 }));
  await assertRejects(
    () => startAgentPod(api, { namespace: "ns", podRunningTimeoutMs: 60_000 }),
    KubeError,
    "forbidden: cannot list pods in namespace ns",
  );
  assertEquals(api.calls.at(-1), "delete job relay-agent-x1 Background");
});

Deno.test("startAgentPod: stopping while it waits deletes the Job and rejects with the reason", async () => {
  const api = stubApi([{ status: { phase: "Pending" } }]);
  const stop = new AbortController();
  const started = startAgentPod(api, {
    namespace: "ns",
    podRunningTimeoutMs: 60_000,
    signal: stop.signal,
  });
  setTimeout(() => stop.abort(new Error("relay is stopping")), 5);
  await assertRejects(() => started, Error, "relay is stopping");
  assertEquals(api.calls.at(-1), "delete job relay-agent-x1 Background");
});

Deno.test("startAgentPod: a container whose config cannot be made (a Secret a patch names is missing) fails at once", async () => {
  const api = stubApi([{
    status: {
      phase: "Pending",
      containerStatuses: [{
        name: "agent",
        state: {
          waiting: { reason: "CreateContainerConfigError", message: 'secret "mine" not found' },
        },
        image: "",
        imageID: "",
        ready: false,
        restartCount: 0,
      }],
    },
  }]);
  await assertRejects(
    () => startAgentPod(api, { namespace: "ns", podRunningTimeoutMs: 60_000 }),
    KubeError,
    'CreateContainerConfigError (secret "mine" not found)',
  );
  assertEquals(api.calls.at(-1), "delete job relay-agent-x1 Background");
});
