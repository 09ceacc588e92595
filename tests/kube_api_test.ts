import { assert, assertEquals, assertRejects } from "./assert.ts";
import { ApiError, KubeApi } from "../lib/kube/api.ts";
import { coreApi } from "../lib/kube/resources.ts";
import { apiError, networkReason } from "../lib/kube/errors.ts";
import { UsageError } from "../lib/errors.ts";
import type { RawConnection } from "../lib/kube/config.ts";

/** A plain-http fake API server and a KubeApi pointed at it. */
function fake(handler: (request: Request) => Response | Promise<Response>) {
  const seen: { method: string; url: URL; type: string | null; body: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const body = await request.text();
    seen.push({
      method: request.method,
      url: new URL(request.url),
      type: request.headers.get("content-type"),
      body,
    });
    return handler(request);
  });
  const client = Deno.createHttpClient({});
  const conn: RawConnection = {
    server: new URL(`http://127.0.0.1:${server.addr.port}/prefix`),
    headers: new Headers({ Authorization: "Bearer t" }),
    client,
    tls: {},
  };
  const api = new KubeApi(() => Promise.resolve(conn));
  return {
    api,
    seen,
    close: async () => {
      client.close();
      await server.shutdown();
    },
  };
}

Deno.test("KubeApi: paths keep the server's prefix; queries, bodies and patch types are sent", async () => {
  const f = fake(() => Response.json({ kind: "Pod", metadata: { name: "web" } }));
  try {
    const core = coreApi(f.api);
    assertEquals((await core.readNamespacedPod({ name: "web", namespace: "shop" })).metadata, {
      name: "web",
    });
    await core.listNamespacedPod({ namespace: "shop", labelSelector: "app=web" });
    await core.patchNamespacedPodEphemeralcontainers({
      name: "web",
      namespace: "shop",
      body: [{ op: "add" }],
    });
    assertEquals(f.seen.map((s) => `${s.method} ${s.url.pathname}${s.url.search}`), [
      "GET /prefix/api/v1/namespaces/shop/pods/web",
      "GET /prefix/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb",
      "PATCH /prefix/api/v1/namespaces/shop/pods/web/ephemeralcontainers",
    ]);
    assertEquals(f.seen[2].type, "application/json-patch+json");
    assertEquals(JSON.parse(f.seen[2].body), [{ op: "add" }]);
  } finally {
    await f.close();
  }
});

Deno.test("KubeApi: a refusal is an ApiError with the status, read as relay's errors read it", async () => {
  const f = fake(() =>
    Response.json({ kind: "Status", message: 'services "redis" not found', code: 404 }, {
      status: 404,
    })
  );
  try {
    const error = await assertRejects(
      () => coreApi(f.api).readNamespacedService({ name: "redis", namespace: "shop" }),
      ApiError,
    );
    assertEquals(error.code, 404);
    const described = apiError(error, { verb: "get", resource: "services", namespace: "shop" });
    assert(described instanceof UsageError, described.message);
  } finally {
    await f.close();
  }
});

Deno.test("KubeApi: a watch's events arrive whole however the stream is cut", async () => {
  const events = [
    { type: "ADDED", object: { metadata: { name: "a" } } },
    { type: "MODIFIED", object: { metadata: { name: "ü-b" } } },
    { type: "DELETED", object: { metadata: { name: "a" } } },
  ];
  const bytes = new TextEncoder().encode(events.map((e) => JSON.stringify(e) + "\n").join(""));
  const f = fake(() =>
    new Response(
      new ReadableStream({
        start(controller) {
          // One byte at a time splits lines and the two-byte "ü" alike.
          for (let i = 0; i < bytes.length; i++) controller.enqueue(bytes.subarray(i, i + 1));
          controller.close();
        },
      }),
    )
  );
  try {
    const seen: string[] = [];
    const ended = Promise.withResolvers<unknown>();
    await f.api.watch("/api/v1/pods", { resourceVersion: "7" }, (type, object) => {
      seen.push(`${type} ${(object as { metadata: { name: string } }).metadata.name}`);
    }, (error) => ended.resolve(error));
    assertEquals(await ended.promise, undefined);
    assertEquals(seen, ["ADDED a", "MODIFIED ü-b", "DELETED a"]);
    assertEquals(f.seen[0].url.searchParams.get("watch"), "true");
    assertEquals(f.seen[0].url.searchParams.get("resourceVersion"), "7");
  } finally {
    await f.close();
  }
});

Deno.test("KubeApi: an API server that is not there is named by its network reason", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const client = Deno.createHttpClient({});
  const api = new KubeApi(() =>
    Promise.resolve({
      server: new URL(`http://127.0.0.1:${port}`),
      headers: new Headers(),
      client,
      tls: {},
    })
  );
  try {
    const error = await assertRejects(() => api.request("GET", "/version"), TypeError);
    assertEquals(networkReason(error), "tcp connect error: Connection refused (os error 111)");
  } finally {
    client.close();
  }
});
