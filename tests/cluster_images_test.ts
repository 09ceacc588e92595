/**
 * The test cluster's image map (scripts/cluster/shim/images.ts): which local command the
 * kubelet shim runs for an image, as a table.
 */
import { assertEquals } from "./assert.ts";
import { imageRepository, resolveImage } from "../scripts/cluster/shim/images.ts";

Deno.test("image references reduce to their repository: no registry, tag or digest", () => {
  const cases: [string, string][] = [
    ["redis", "redis"],
    ["redis:7", "redis"],
    ["docker.io/library/redis:7", "redis"],
    ["ghcr.io/knight42/krelay-server:v0.2.0", "knight42/krelay-server"],
    ["localhost:5000/relay-test/echo@sha256:abc", "relay-test/echo"],
    ["relay-test/echo:latest", "relay-test/echo"],
  ];
  for (const [image, repository] of cases) {
    assertEquals(imageRepository(image), repository, image);
  }
});

Deno.test("krelay's server image runs the built krelay-server, and is missing until it is built", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const server = `${dir}/krelay-server`;
    const options = { repoDir: "/repo", deno: "/bin/deno", krelayServer: server };
    const image = "ghcr.io/knight42/krelay-server:v0.2.0";
    // Not built (the Go module proxy refused it): the pod waits for its image, as on a node
    // that cannot pull it.
    assertEquals(resolveImage(image, options), undefined);
    assertEquals(resolveImage(image, { repoDir: "/repo", deno: "/bin/deno" }), undefined);
    await Deno.writeTextFile(server, "");
    assertEquals(resolveImage(image, options), { entrypoint: [server] });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
