/**
 * Asking the API server, before the agent exists, whether this user may do everything the
 * agent's lifecycle needs (SelfSubjectRulesReview and SelfSubjectAccessReview, which every
 * authenticated user may ask).
 * Without it a withheld permission shows up late and badly: a missing `delete jobs` only when
 * relay stops (leaving the Job behind), a missing `create pods/portforward` only on API
 * servers that check it for WebSocket upgrades (1.35+).
 */
import type { V1ResourceRule } from "@kubernetes/client-node";
import type { AuthorizationApi } from "./resources.ts";
import { KubeError } from "./errors.ts";

/** One RBAC permission, spelled as a Role rule spells it. */
export interface Permission {
  verb: string;
  /** "" for the core group. */
  group: string;
  resource: string;
  subresource?: string;
}

/**
 * What relay does to its agent in the agent's namespace: run it as a Job, wait for its pod,
 * port-forward to it, check on it, and delete both when done (manifests/rbac.yaml grants
 * these, and the reads target resolution needs, which fail with their own message).
 */
export const AGENT_PERMISSIONS: readonly Permission[] = [
  { verb: "create", group: "batch", resource: "jobs" },
  { verb: "delete", group: "batch", resource: "jobs" },
  // The agent's pod, listed and then watched until it runs.
  { verb: "list", group: "", resource: "pods" },
  { verb: "watch", group: "", resource: "pods" },
  // Asked when a tunnel drops: is the agent's pod gone, or was it only the network?
  { verb: "get", group: "", resource: "pods" },
  { verb: "get", group: "", resource: "pods", subresource: "portforward" },
  { verb: "create", group: "", resource: "pods", subresource: "portforward" },
];

/**
 * What relay does with --target, in the target's namespace: find the pod, add the agent as an
 * ephemeral container and port-forward to it (the second Role of manifests/rbac.yaml).
 */
export const TARGET_PERMISSIONS: readonly Permission[] = [
  { verb: "get", group: "", resource: "pods" },
  { verb: "list", group: "", resource: "pods" },
  { verb: "watch", group: "", resource: "pods" },
  { verb: "patch", group: "", resource: "pods", subresource: "ephemeralcontainers" },
  { verb: "get", group: "", resource: "pods", subresource: "portforward" },
  { verb: "create", group: "", resource: "pods", subresource: "portforward" },
];

/** The API calls the check makes; tests pass a stub. */
export type AccessReviewApi = Pick<
  AuthorizationApi,
  "createSelfSubjectRulesReview" | "createSelfSubjectAccessReview"
>;

/** `create pods/portforward`: how the message (and `kubectl auth can-i`) names a permission. */
export function describePermission(p: Permission): string {
  return `${p.verb} ${p.resource}${p.subresource ? `/${p.subresource}` : ""}`;
}

/**
 * Throws a KubeError naming every permission in `permissions` the API server says this user
 * lacks in `namespace`. A review that cannot be made (an old or unusual API server) counts as
 * allowed: the real call will then report whatever is wrong, so the check only ever helps.
 */
export async function checkPermissions(
  api: AccessReviewApi,
  namespace: string,
  permissions: readonly Permission[] = AGENT_PERMISSIONS,
): Promise<void> {
  // One rules review answers for every permission at once (one request where access reviews
  // take one each, each on its own connection); what it cannot settle is asked one by one.
  const granted = await grantedByRules(api, namespace, permissions);
  const denied = await Promise.all(permissions.map(async (p) => {
    if (granted.has(p)) return undefined;
    try {
      const review = await api.createSelfSubjectAccessReview({
        body: {
          apiVersion: "authorization.k8s.io/v1",
          kind: "SelfSubjectAccessReview",
          spec: {
            resourceAttributes: {
              namespace,
              verb: p.verb,
              group: p.group,
              resource: p.resource,
              subresource: p.subresource,
            },
          },
        },
      });
      return review.status?.allowed === false ? p : undefined;
    } catch {
      return undefined;
    }
  }));
  const missing = denied.filter((p): p is Permission => p !== undefined);
  if (missing.length > 0) {
    throw new KubeError(
      `forbidden: relay needs permission to ${missing.map(describePermission).join(", ")}` +
        ` in namespace ${namespace} to run its agent (see manifests/rbac.yaml)`,
      { status: 403 },
    );
  }
}

/**
 * The permissions a SelfSubjectRulesReview of `namespace` grants. Only RBAC-style rules are
 * read, matched as RBAC matches them; a rule limited to resource names grants nothing here, as
 * relay's objects have names of their own. An incomplete answer (a webhook authorizer) still
 * grants what it lists.
 */
async function grantedByRules(
  api: AccessReviewApi,
  namespace: string,
  permissions: readonly Permission[],
): Promise<Set<Permission>> {
  let rules: V1ResourceRule[];
  try {
    const review = await api.createSelfSubjectRulesReview({
      body: {
        apiVersion: "authorization.k8s.io/v1",
        kind: "SelfSubjectRulesReview",
        spec: { namespace },
      },
    });
    rules = review.status?.resourceRules ?? [];
  } catch {
    return new Set();
  }
  const matches = (list: string[] | undefined, value: string) =>
    (list ?? []).some((item) => item === "*" || item === value);
  return new Set(permissions.filter((p) => {
    const resource = p.subresource ? `${p.resource}/${p.subresource}` : p.resource;
    return rules.some((rule) =>
      !rule.resourceNames?.length && matches(rule.verbs, p.verb) &&
      matches(rule.apiGroups, p.group) &&
      (rule.resources ?? []).some((r) =>
        r === "*" || r === resource || (p.subresource !== undefined && r === `*/${p.subresource}`)
      )
    );
  }));
}

/** {@link checkPermissions} with a loaded kubeconfig's client. */
export function checkAccess(
  kube: { authorization: AccessReviewApi },
  namespace: string,
  permissions: readonly Permission[] = AGENT_PERMISSIONS,
): Promise<void> {
  return checkPermissions(kube.authorization, namespace, permissions);
}
