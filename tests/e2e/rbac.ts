/** manifests/rbac.yaml's Roles, and granting rules to a test user of its own. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { KUBECONFIG, KUBECTL, kubectl, REPO_DIR, runCommand, waitFor } from "./harness.ts";

/** One rule of a Role. */
export interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

/** The rules of the Role `name` in manifests/rbac.yaml, as shipped (bound to a placeholder). */
export async function shippedRules(name = "relay-user"): Promise<Rule[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(`${REPO_DIR}/manifests/rbac.yaml`))
    .map((d) => d.toJS());
  const role = docs.find((d) => d?.kind === "Role" && d.metadata.name === name);
  const binding = docs.find((d) => d?.kind === "RoleBinding" && d.roleRef.name === name);
  assert(role && binding, `rbac.yaml holds a Role ${name} and its RoleBinding`);
  assertEquals(binding.subjects[0].name, "REPLACE-ME", "the subject is a placeholder");
  assert(!docs.some((d) => d?.kind === "ClusterRole"), "nothing cluster-scoped");
  return role.rules as Rule[];
}

/** The rules with one verb on one resource left out. */
export function without(rules: Rule[], resource: string, verb: string): Rule[] {
  return rules.flatMap((rule) =>
    rule.resources.map((res) => ({
      apiGroups: rule.apiGroups,
      resources: [res],
      verbs: rule.verbs.filter((v) => !(res === resource && v === verb)),
    }))
  ).filter((rule) => rule.verbs.length > 0);
}

/** Every permission of `rules`, as `verb resource` pairs. */
export function permissionsOf(rules: Rule[]): { verb: string; resource: string }[] {
  return rules.flatMap((rule) =>
    rule.resources.flatMap((resource) => rule.verbs.map((verb) => ({ verb, resource })))
  );
}

/** Grants `rules` in `namespace` to a user of its own (Role + RoleBinding), once effective. */
export async function grant(namespace: string, user: string, rules: Rule[]): Promise<void> {
  const items = [
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "Role",
      metadata: { name: user },
      rules,
    },
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata: { name: user },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: user },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: user }],
    },
  ];
  await kubectl(["apply", "-n", namespace, "-f", "-"], {
    input: JSON.stringify({ apiVersion: "v1", kind: "List", items }),
  });
  // The authorizer learns of new bindings from an informer: wait until it grants the first rule.
  const [first] = rules;
  const [resource, subresource] = first.resources[0].split("/");
  const group = first.apiGroups[0] ? `.${first.apiGroups[0]}` : "";
  await waitFor(`${user}'s Role to take effect`, async () => {
    const result = await runCommand([
      KUBECTL,
      `--kubeconfig=${KUBECONFIG}`,
      "auth",
      "can-i",
      first.verbs[0],
      `${resource}${group}`,
      ...(subresource ? [`--subresource=${subresource}`] : []),
      "-n",
      namespace,
      "--as",
      user,
    ]);
    return result.stdout.trim() === "yes";
  }, { timeoutMs: 20_000 });
}
