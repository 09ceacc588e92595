/**
 * Every way a kubeconfig authenticates reaches both the API calls and the port-forward
 * WebSocket: each kubeconfig below makes relay create its agent and forward real bytes.
 */
import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert/strict";
import { createTestNamespace, ensureCluster, KUBECONFIG, kubectl, readLine } from "./harness.ts";
import { startRelay } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

interface AdminConfig {
  server: string;
  caData: string;
  certData: string;
  keyData: string;
}

async function adminConfig(): Promise<AdminConfig> {
  const config = JSON.parse(await Deno.readTextFile(KUBECONFIG));
  return {
    server: config.clusters[0].cluster.server,
    caData: config.clusters[0].cluster["certificate-authority-data"],
    certData: config.users[0].user["client-certificate-data"],
    keyData: config.users[0].user["client-key-data"],
  };
}

function kubeconfig(
  admin: AdminConfig,
  user: Record<string, unknown>,
  extra: { contexts?: unknown[]; current?: string } = {},
): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "local",
      cluster: { server: admin.server, "certificate-authority-data": admin.caData },
    }],
    users: [{ name: "u", user }],
    contexts: extra.contexts ?? [{ name: "c", context: { cluster: "local", user: "u" } }],
    "current-context": extra.current ?? "c",
  });
}

async function tempFile(dir: string, name: string, text: string, mode = 0o600): Promise<string> {
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, text, { mode });
  return path;
}

Deno.test({
  name:
    "story: relay authenticates as kubectl does — client cert file and data, bearer token, token file, exec plugin, two files in KUBECONFIG, --context, --as, and kubectl's --server/--token/--certificate-authority/--client-certificate/--cluster/--user flags, with no kubeconfig at all",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("fwd-auth");
    const echo = await createEchoWorkloads(ns.name, ["deploy"]);
    // A ServiceAccount allowed to do what relay does in this namespace, for the token forms.
    await kubectl(["create", "serviceaccount", "relay-user", "-n", ns.name]);
    await kubectl([
      "create",
      "rolebinding",
      "relay-user-edit",
      "-n",
      ns.name,
      "--clusterrole=edit",
      `--serviceaccount=${ns.name}:relay-user`,
    ]);
    const token = (await kubectl(["create", "token", "relay-user", "-n", ns.name])).trim();
    const admin = await adminConfig();
    const dir = await Deno.makeTempDir({ prefix: "relay-auth-" });
    const decode = (b64: string) =>
      new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const certFile = await tempFile(dir, "client.crt", decode(admin.certData));
    const keyFile = await tempFile(dir, "client.key", decode(admin.keyData));
    const tokenFile = await tempFile(dir, "token", token);
    const caFile = await tempFile(dir, "ca.crt", decode(admin.caData));
    // No kubeconfig anywhere: KUBECONFIG empty, and a home without ~/.kube/config.
    const noKubeconfig = { KUBECONFIG: "", HOME: dir };
    const plugin = await tempFile(
      dir,
      "plugin.sh",
      `#!/bin/sh\nprintf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s"}}' "$(cat ${tokenFile})"\n`,
      0o755,
    );
    // KUBECONFIG with two files: the cluster and context in one, the user in the other.
    const split = JSON.parse(kubeconfig(admin, { token }));
    const clusterHalf = await tempFile(
      dir,
      "cluster-half",
      JSON.stringify({ ...split, users: [] }),
    );
    const userHalf = await tempFile(
      dir,
      "user-half",
      JSON.stringify({ apiVersion: "v1", kind: "Config", users: split.users }),
    );

    const cases: Array<{ name: string; env: Record<string, string>; args?: string[] }> = [
      {
        name: "client certificate files",
        env: {
          KUBECONFIG: await tempFile(
            dir,
            "cert-files",
            kubeconfig(admin, { "client-certificate": certFile, "client-key": keyFile }),
          ),
        },
      },
      {
        name: "client certificate data",
        env: {
          KUBECONFIG: await tempFile(
            dir,
            "cert-data",
            kubeconfig(admin, {
              "client-certificate-data": admin.certData,
              "client-key-data": admin.keyData,
            }),
          ),
        },
      },
      {
        name: "bearer token",
        env: { KUBECONFIG: await tempFile(dir, "token-config", kubeconfig(admin, { token })) },
      },
      {
        name: "token file",
        env: { KUBECONFIG: await tempFile(dir, "token-file", kubeconfig(admin, { tokenFile })) },
      },
      {
        name: "exec plugin",
        env: {
          KUBECONFIG: await tempFile(
            dir,
            "exec",
            kubeconfig(admin, {
              exec: {
                apiVersion: "client.authentication.k8s.io/v1",
                command: plugin,
                interactiveMode: "Never",
              },
            }),
          ),
        },
      },
      { name: "two files in KUBECONFIG", env: { KUBECONFIG: `${clusterHalf}:${userHalf}` } },
      {
        name: "--context",
        env: {
          KUBECONFIG: await tempFile(
            dir,
            "contexts",
            kubeconfig(admin, { token }, {
              contexts: [
                { name: "broken", context: { cluster: "local", user: "nobody" } },
                { name: "good", context: { cluster: "local", user: "u" } },
              ],
              current: "broken",
            }),
          ),
        },
        args: ["--context", "good"],
      },
      {
        name: "--as",
        env: { KUBECONFIG },
        args: ["--as", `system:serviceaccount:${ns.name}:relay-user`],
      },
      {
        name: "kubectl's --server, --token and --certificate-authority, no kubeconfig",
        env: noKubeconfig,
        args: ["--server", admin.server, "--token", token, "--certificate-authority", caFile],
      },
      {
        name: "kubectl's --server and client certificate flags, no kubeconfig",
        env: noKubeconfig,
        args: [
          "-s",
          admin.server,
          "--certificate-authority",
          caFile,
          "--client-certificate",
          certFile,
          "--client-key",
          keyFile,
        ],
      },
      {
        name: "kubectl's --cluster and --user over a context whose user is missing",
        env: {
          KUBECONFIG: await tempFile(
            dir,
            "cluster-user",
            kubeconfig(admin, { token }, {
              contexts: [{ name: "broken", context: { cluster: "nowhere", user: "nobody" } }],
              current: "broken",
            }),
          ),
        },
        args: ["--cluster", "local", "--user", "u"],
      },
    ];
    try {
      for (const c of cases) {
        const relay = await startRelay(
          [...(c.args ?? []), "-n", ns.name, `ip/${echo.deployPodIP}`, ":8080"],
          { env: c.env },
        );
        try {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.ports[0] });
          assertMatch(await readLine(conn), new RegExp(`^pod=${echo.pods.deploy} `), c.name);
          conn.close();
        } finally {
          assertEquals(await relay.stop(), 0, `${c.name}: ${relay.stderr()}`);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
