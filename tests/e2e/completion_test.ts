/**
 * Shell completion against the real API server: what TAB offers comes from the cluster the
 * typed words name.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { createTestNamespace, ensureCluster, KUBECONFIG } from "./harness.ts";
import { relayCommand } from "./relay_process.ts";
import { createEchoWorkloads } from "./workloads.ts";

/** What `relay complete -- WORDS` offers: the values, without descriptions or the directive. */
async function complete(...words: string[]): Promise<string[]> {
  const [command, ...args] = relayCommand(["complete", "--", ...words]);
  const out = await new Deno.Command(command, {
    args,
    env: { KUBECONFIG },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n")
    .filter((line) => line !== "" && !line.startsWith(":"))
    .map((line) => line.split("\t")[0]);
}

Deno.test({
  name:
    "story: pressing TAB after -n offers the cluster's namespaces, and after pod/ or deploy/ (also --target's) the names in that namespace",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ensureCluster();
    await using ns = await createTestNamespace("complete");
    await createEchoWorkloads(ns.name, ["pod", "deploy"]);
    const namespaces = await complete("-n", ns.name.slice(0, -2));
    assertEquals(namespaces.includes(ns.name), true, namespaces.join(" "));
    assertEquals(await complete("-n", ns.name, "pod/echo-pod"), ["pod/echo-pod"]);
    assertEquals(await complete("-n", ns.name, "--target", "deploy/"), ["deploy/echo"]);
    assertEquals(await complete("-n", ns.name, "svc/echo-h"), ["svc/echo-headless"]);
    // Without -n, the context's namespace: none of these are there.
    assertEquals(await complete("deploy/echo"), []);
  },
});
