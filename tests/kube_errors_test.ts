/** API-server failures as one sentence each, and the agent's permission check. */
import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import { assertRejects } from "./assert.ts";
import { exitCodeOf, UsageError } from "../lib/errors.ts";
import { type AccessReviewApi, AGENT_PERMISSIONS, checkPermissions } from "../lib/kube/access.ts";
import { apiError, KubeError, networkReason } from "../lib/kube/errors.ts";

/** What client-node throws for an HTTP error: an ApiException with `code` and a Status body. */
function apiException(code: number, message: string): Error {
  return Object.assign(
    new Error(`HTTP-Code: ${code}\nMessage: Unknown API Status Code!\nBody: …`),
    {
      code,
      body: JSON.stringify({ kind: "Status", message }),
    },
  );
}

const subject = { verb: "get", resource: "services", object: "svc/redis", namespace: "shop" };

Deno.test("apiError: 404, 403, 401, 409 and 500 become one sentence, never the raw exception", () => {
  const cases: [number, RegExp, number][] = [
    [404, /^svc\/redis not found in namespace shop$/, 2],
    [403, /^forbidden: cannot get services in namespace shop \(see manifests\/rbac\.yaml\)$/, 1],
    [401, /rejected the credentials \(401 Unauthorized\)/, 1],
    [409, /^cannot get svc\/redis in namespace shop: 409 conflict here$/, 1],
    [500, /^cannot get svc\/redis in namespace shop: 500 conflict here$/, 1],
  ];
  for (const [code, message, exit] of cases) {
    const error = apiError(apiException(code, "conflict here"), subject);
    assertMatch(error.message, message);
    assert(!error.message.includes("\n") && !error.message.includes("HTTP-Code"));
    assertEquals(exitCodeOf(error), exit, `${code}`);
  }
  assert(apiError(apiException(404, "x"), subject) instanceof UsageError);
});

Deno.test("apiError: an unreachable API server names the network reason, not 'fetch failed'", () => {
  const refused = new TypeError("fetch failed", {
    cause: Object.assign(new Error("connect ECONNREFUSED 10.0.0.1:6443"), { code: "ECONNREFUSED" }),
  });
  assertEquals(networkReason(refused), "connect ECONNREFUSED 10.0.0.1:6443");
  assertEquals(
    apiError(refused, subject).message,
    "cannot get svc/redis in namespace shop: cannot reach the API server: connect ECONNREFUSED 10.0.0.1:6443",
  );
  assertEquals(networkReason(new Error("other")), undefined);
});

/** A SelfSubjectAccessReview stub that denies `denied` ("verb resource[/sub]"). */
function reviews(denied: string[], seen: string[] = []): AccessReviewApi {
  return {
    createSelfSubjectRulesReview: () => Promise.reject(apiException(404, "not on this server")),
    createSelfSubjectAccessReview: ({ body }) => {
      const a = body.spec.resourceAttributes!;
      const name = `${a.verb} ${a.resource}${a.subresource ? `/${a.subresource}` : ""}`;
      seen.push(`${name} in ${a.namespace}`);
      return Promise.resolve({ ...body, status: { allowed: !denied.includes(name) } });
    },
  } as AccessReviewApi;
}

Deno.test("checkPermissions: asks for every agent permission and names each one withheld", async () => {
  const seen: string[] = [];
  await checkPermissions(reviews([], seen), "shop");
  assertEquals(seen.length, AGENT_PERMISSIONS.length);
  assert(seen.includes("create pods/portforward in shop"));
  assert(seen.includes("delete jobs in shop"));

  let caught: unknown;
  try {
    await checkPermissions(reviews(["delete jobs", "create pods/portforward"]), "shop");
  } catch (error) {
    caught = error;
  }
  assert(caught instanceof KubeError);
  assertEquals(
    caught.message,
    "forbidden: relay needs permission to delete jobs, create pods/portforward in namespace shop" +
      " to run its agent (see manifests/rbac.yaml)",
  );
});

Deno.test("checkPermissions: one rules review settles what RBAC grants; only the rest is asked one by one", async () => {
  const seen: string[] = [];
  const api = reviews(["delete jobs"], seen);
  api.createSelfSubjectRulesReview = ({ body }) =>
    Promise.resolve({
      ...body,
      status: {
        incomplete: false,
        nonResourceRules: [],
        resourceRules: [
          { verbs: ["create"], apiGroups: ["batch"], resources: ["jobs"] },
          { verbs: ["*"], apiGroups: [""], resources: ["pods", "secrets"] },
          { verbs: ["get", "create"], apiGroups: [""], resources: ["*/portforward"] },
          // Limited to names: relay's Jobs are not among them.
          { verbs: ["delete"], apiGroups: ["batch"], resources: ["jobs"], resourceNames: ["x"] },
        ],
      },
    });
  const error = await assertRejects(() => checkPermissions(api, "shop"), KubeError);
  assertEquals(seen, ["delete jobs in shop"]);
  assert(error.message.includes("permission to delete jobs in namespace shop"), error.message);
});

Deno.test("checkPermissions: a review the server cannot answer does not block the run", async () => {
  const failing = {
    createSelfSubjectRulesReview: () => Promise.reject(apiException(404, "no such API")),
    createSelfSubjectAccessReview: () => Promise.reject(apiException(404, "no such API")),
  } as unknown as AccessReviewApi;
  await checkPermissions(failing, "shop");
});
