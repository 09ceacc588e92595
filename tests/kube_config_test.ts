import { assert, assertEquals, assertThrows } from "./assert.ts";
import { loadKube } from "../lib/kube/config.ts";
import { UsageError } from "../lib/errors.ts";
import {
  kubeconfigYaml,
  makeTestPki,
  startFakeApiServer,
  type TestPki,
  writeTempFile,
} from "./kube_fixtures.ts";

const noEnv = (_: string) => undefined;
// Deno's HTTP client keeps connections to the fake server alive past a test.
const opts = { sanitizeResources: false, sanitizeOps: false };

let pkiPromise: Promise<TestPki> | undefined;
const pki = () => (pkiPromise ??= makeTestPki());

function podList(): Response {
  return Response.json({ kind: "PodList", apiVersion: "v1", metadata: {}, items: [] });
}

Deno.test("loadKube: a missing --kubeconfig is a usage error naming the file", () => {
  const error = assertThrows(
    () => loadKube({ kubeconfig: "/nonexistent/relay/kubeconfig", env: noEnv }),
    UsageError,
  );
  assert(error.message.includes("/nonexistent/relay/kubeconfig"));
});

Deno.test("loadKube: no kubeconfig anywhere is a usage error", () => {
  assertThrows(
    () => loadKube({ env: (n) => (n === "HOME" ? "/nonexistent-home" : undefined) }),
    UsageError,
    "no kubeconfig",
  ); // deno-fmt-ignore
});

Deno.test("loadKube: unknown context, namespace precedence", async () => {
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      caFile: (await pki()).caFile,
      users: { u1: "token: abc" },
      contexts: { a: { user: "u1", namespace: "team-a" }, b: { user: "u1" } },
      current: "a",
    }),
  );
  assertThrows(() => loadKube({ kubeconfig: file, context: "nope" }), UsageError, `context "nope"`);
  assertEquals(loadKube({ kubeconfig: file }).namespace, "team-a");
  assertEquals(loadKube({ kubeconfig: file, namespace: "x" }).namespace, "x");
  const b = loadKube({ kubeconfig: file, context: "b" });
  assertEquals([b.contextName, b.namespace], ["b", "default"]);
});

Deno.test("loadKube: insecure-skip-tls-verify and bad impersonation are refused up front", async () => {
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      clusterExtra: "    insecure-skip-tls-verify: true",
      users: { u1: "token: abc" },
      contexts: { a: { user: "u1" } },
      current: "a",
    }),
  );
  assertThrows(() => loadKube({ kubeconfig: file }), UsageError, "insecure-skip-tls-verify");
  const ok = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      caFile: (await pki()).caFile,
      users: { u1: "token: abc" },
      contexts: { a: { user: "u1" } },
      current: "a",
    }),
  );
  assertThrows(() => loadKube({ kubeconfig: ok, asGroups: ["g"] }), UsageError, "--as");
  assertThrows(() => loadKube({ kubeconfig: ok, as: "u", asGroups: ["g1", "g2"] }), UsageError);
});

Deno.test("loadKube: KUBECONFIG merges files, first wins, missing entries skipped", async () => {
  const first = await writeTempFile(
    "one",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      caFile: (await pki()).caFile,
      users: { u1: "token: first" },
      contexts: { shared: { user: "u1", namespace: "from-first" } },
      current: "shared",
    }),
  );
  const second = await writeTempFile(
    "two",
    kubeconfigYaml({
      server: "https://127.0.0.1:2",
      caFile: (await pki()).caFile,
      users: { u1: "token: second", u2: "token: two" },
      contexts: { shared: { user: "u1", namespace: "from-second" }, other: { user: "u2" } },
      current: "other",
    }),
  );
  const kube = loadKube({
    env: (n) => (n === "KUBECONFIG" ? `/nonexistent/x:${first}:${second}` : undefined),
  });
  assertEquals([kube.contextName, kube.namespace], ["shared", "from-first"]);
  const raw = await kube.rawConnection();
  assertEquals(raw.headers.get("authorization"), "Bearer first");
  kube.close();
  assertEquals(
    loadKube({
      kubeconfig: undefined,
      context: "other",
      env: (n) => (n === "KUBECONFIG" ? `${first}:${second}` : undefined),
    }).contextName, // deno-fmt-ignore
    "other",
  );
});

Deno.test(
  "loadKube: token, impersonation and CA reach API calls and raw connections",
  opts,
  async () => {
    const p = await pki();
    const server = startFakeApiServer(p, () => podList());
    try {
      const file = await writeTempFile(
        "config",
        kubeconfigYaml({
          server: server.url,
          caFile: p.caFile,
          users: { u1: "token: tok-123" },
          contexts: { a: { user: "u1" } },
          current: "a",
        }),
      );
      const kube = loadKube({ kubeconfig: file, as: "alice", asGroups: ["devs"] });
      await kube.core.listNamespacedPod({ namespace: kube.namespace });
      const api = server.seen[0];
      assertEquals(api.url.pathname, "/api/v1/namespaces/default/pods");
      assertEquals(api.headers.get("authorization"), "Bearer tok-123");
      assertEquals(api.headers.get("impersonate-user"), "alice");
      assertEquals(api.headers.get("impersonate-group"), "devs");

      const raw = await kube.rawConnection();
      assertEquals(raw.server.href, `${server.url}/`);
      assertEquals(raw.headers.get("authorization"), "Bearer tok-123");
      assertEquals(raw.headers.get("impersonate-user"), "alice");
      assertEquals(raw.headers.get("impersonate-group"), "devs");
      // The raw client trusts the kubeconfig's CA.
      const response = await fetch(`${server.url}/version`, {
        client: raw.client,
        headers: raw.headers,
      });
      assertEquals(response.status, 200);
      await response.body?.cancel();
      kube.close();
    } finally {
      await server.close();
    }
  },
);

Deno.test("loadKube: an exec plugin's token is used and re-run when expired", opts, async () => {
  const p = await pki();
  const server = startFakeApiServer(p, () => podList());
  try {
    const counter = await writeTempFile("count", "");
    const script = await writeTempFile(
      "plugin.sh",
      `#!/bin/sh\necho x >> ${counter}\nn=$(wc -l < ${counter} | tr -d ' ')\n` +
        `printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",` +
        `"status":{"token":"exec-%s","expirationTimestamp":"2000-01-01T00:00:00Z"}}' "$n"\n`,
      0o755,
    );
    const file = await writeTempFile(
      "config",
      kubeconfigYaml({
        server: server.url,
        caFile: p.caFile,
        users: {
          u1:
            `exec:\n  apiVersion: client.authentication.k8s.io/v1\n  command: ${script}\n  interactiveMode: Never`,
        },
        contexts: { a: { user: "u1" } },
        current: "a",
      }),
    );
    const kube = loadKube({ kubeconfig: file });
    await kube.core.listNamespacedPod({ namespace: "default" });
    assertEquals(server.seen[0].headers.get("authorization"), "Bearer exec-1");
    // Expired at once, so each use runs the plugin again: the token must be fresh.
    assertEquals((await kube.rawConnection()).headers.get("authorization"), "Bearer exec-2");
    kube.close();
  } finally {
    await server.close();
  }
});

Deno.test("loadKube: a token file and a client certificate are loaded", opts, async () => {
  const p = await pki();
  const tokenFile = await writeTempFile("token", "file-token");
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      caFile: p.caFile,
      users: {
        t: `tokenFile: ${tokenFile}`,
        c: `client-certificate: ${p.clientCertFile}\nclient-key: ${p.clientKeyFile}`,
      },
      contexts: { t: { user: "t" }, c: { user: "c" } },
      current: "t",
    }),
  );
  // kubectl's field is tokenFile (client-node only knows token-file).
  const withToken = loadKube({ kubeconfig: file });
  const raw = await withToken.rawConnection();
  assert(
    raw.headers.get("authorization") === "Bearer file-token",
    `token file not used: ${raw.headers.get("authorization")}`,
  );
  withToken.close();
  const withCert = loadKube({ kubeconfig: file, context: "c" });
  const rawCert = await withCert.rawConnection();
  assertEquals(rawCert.headers.get("authorization"), null);
  withCert.close();
});

Deno.test(
  "loadKube: kubectl's --server, --token and --certificate-authority reach a cluster without a kubeconfig",
  opts,
  async () => {
    const p = await pki();
    const server = startFakeApiServer(p, () => podList());
    try {
      const kube = loadKube({
        env: (n) => (n === "HOME" ? "/nonexistent-home" : undefined),
        overrides: { server: server.url, token: "flag-token", certificateAuthority: p.caFile },
      });
      await kube.core.listNamespacedPod({ namespace: "default" });
      assertEquals(server.seen[0].headers.get("authorization"), "Bearer flag-token");
      assertEquals(kube.namespace, "default");
      kube.close();
    } finally {
      await server.close();
    }
  },
);

Deno.test(
  "loadKube: --cluster and --user pick other entries; --token replaces the user's plugin",
  opts,
  async () => {
    const p = await pki();
    const server = startFakeApiServer(p, () => podList());
    try {
      const file = await writeTempFile(
        "config",
        kubeconfigYaml({
          server: "https://127.0.0.1:1",
          caFile: p.caFile,
          clusterExtra: `- name: c2\n  cluster:\n    server: ${server.url}\n` +
            `    certificate-authority: ${p.caFile}`,
          users: {
            u1: "token: one",
            u2: "token: two",
            plugin: "exec:\n  apiVersion: client.authentication.k8s.io/v1\n  command: /nonexistent",
          },
          contexts: { a: { user: "plugin" } },
          current: "a",
        }),
      );
      const other = loadKube({ kubeconfig: file, overrides: { cluster: "c2", user: "u2" } });
      await other.core.listNamespacedPod({ namespace: "default" });
      assertEquals(server.seen[0].headers.get("authorization"), "Bearer two");
      other.close();
      // The context's user runs a plugin that cannot run; --token is used instead of it.
      const token = loadKube({ kubeconfig: file, overrides: { cluster: "c2", token: "flag" } });
      await token.core.listNamespacedPod({ namespace: "default" });
      assertEquals(server.seen[1].headers.get("authorization"), "Bearer flag");
      token.close();
      assertThrows(
        () => loadKube({ kubeconfig: file, overrides: { cluster: "nope" } }),
        UsageError,
        `cluster "nope" not found in the kubeconfig`,
      );
      assertThrows(
        () => loadKube({ kubeconfig: file, overrides: { user: "nobody" } }),
        UsageError,
        `user "nobody" not found in the kubeconfig`,
      );
    } finally {
      await server.close();
    }
  },
);

Deno.test("loadKube: --as-uid goes with --as as Impersonate-Uid, and needs it", async () => {
  const file = await writeTempFile(
    "config",
    kubeconfigYaml({
      server: "https://127.0.0.1:1",
      caFile: (await pki()).caFile,
      users: { u1: "token: abc" },
      contexts: { a: { user: "u1" } },
      current: "a",
    }),
  );
  const kube = loadKube({ kubeconfig: file, as: "alice", asUid: "1234" });
  const { headers } = await kube.rawConnection();
  assertEquals([headers.get("impersonate-user"), headers.get("impersonate-uid")], [
    "alice",
    "1234",
  ]);
  kube.close();
  assertThrows(
    () => loadKube({ kubeconfig: file, asUid: "1234" }),
    UsageError,
    "--as-uid needs --as",
  );
});
