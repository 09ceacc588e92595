/**
 * What the release workflow publishes besides archives: the workflows themselves (actionlint),
 * the krew manifest (krew's own validator, installing every platform from a loopback server),
 * the Homebrew formula and the agent image's Dockerfile.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { ROOT, run, serveDirectory, tool, writeFakeRelease } from "./distribution_helpers.ts";
import { DEFAULT_AGENT_IMAGE, VERSION } from "../lib/version.ts";
import {
  KREW_PLUGIN_NAME,
  releaseBaseUrl,
  render,
  renderAll,
  type RenderValues,
} from "../packaging/render.ts";
import { archiveName, RELEASE_TARGETS } from "../scripts/release/targets.ts";

const dirOf = (path: string) => path.slice(0, path.lastIndexOf("/"));

Deno.test("the GitHub workflows pass actionlint (with shellcheck on their run: scripts)", async () => {
  const shellcheck = await tool("shellcheck");
  const r = await run(await tool("actionlint"), ["-color=false"], {
    cwd: ROOT,
    env: { PATH: `${dirOf(shellcheck)}:${Deno.env.get("PATH")}` },
  });
  assertEquals(r.code, 0, r.stdout + r.stderr);
});

Deno.test("scripts/tools.sh is shellcheck-clean", async () => {
  const r = await run(await tool("shellcheck"), [`${ROOT}/scripts/tools.sh`]);
  assertEquals(r.code, 0, r.stdout + r.stderr);
});

Deno.test("the krew manifest passes validate-krew-manifest, installing every platform", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "relay-krew-test-" });
  const release = `${tmp}/release`;
  const sums = await writeFakeRelease({
    dir: release,
    version: VERSION,
    targets: RELEASE_TARGETS,
    binary: "#!/bin/sh\necho relay\n",
  });
  const server = serveDirectory(release);
  try {
    const [written] = await renderAll({ version: VERSION, baseUrl: server.url, sums }, tmp);
    assertEquals(written, `${tmp}/${KREW_PLUGIN_NAME}.yaml`);
    const krew = await tool("kubectl-krew");
    const r = await run(await tool("validate-krew-manifest"), ["-manifest", written], {
      // kubectl (for `kubectl krew install`) and the kubectl-krew plugin.
      env: { PATH: `${dirOf(krew)}:${Deno.env.get("PATH")}` },
    });
    assertEquals(r.code, 0, r.stdout + r.stderr);
    assertStringIncludes(r.stderr, `all ${RELEASE_TARGETS.length} spec.platforms installed fine`);
    // Every archive was fetched from the loopback server.
    for (const target of RELEASE_TARGETS) {
      assert(server.requests.includes(`/${archiveName(VERSION, target)}`), server.requests.join());
    }
  } finally {
    await server.close();
    await Deno.remove(tmp, { recursive: true });
  }
});

function fakeValues(): RenderValues {
  const sums = new Map(
    RELEASE_TARGETS.map((t, i) => [archiveName(VERSION, t), String(i + 1).repeat(64)]),
  );
  return { version: VERSION, baseUrl: releaseBaseUrl(VERSION), sums };
}

Deno.test("the released krew manifest points at the GitHub release, and validates", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "relay-krew-test-" });
  try {
    const [manifest] = await renderAll(fakeValues(), tmp);
    const text = await Deno.readTextFile(manifest);
    assertStringIncludes(text, `name: ${KREW_PLUGIN_NAME}\n`);
    assertStringIncludes(text, `version: "v${VERSION}"`);
    for (const [i, t] of RELEASE_TARGETS.entries()) {
      const url = `https://github.com/relay-dev/relay/releases/download/v${VERSION}/` +
        archiveName(VERSION, t);
      assertStringIncludes(text, `uri: "${url}"\n      sha256: "${String(i + 1).repeat(64)}"`);
    }
    const r = await run(await tool("validate-krew-manifest"), [
      "-manifest",
      manifest,
      "-skip-install",
    ]);
    assertEquals(r.code, 0, r.stdout + r.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the Homebrew formula is filled for every unix platform", async () => {
  const values = fakeValues();
  const template = await Deno.readTextFile(`${ROOT}/packaging/homebrew/relay.rb`);
  const formula = render(template, values);
  assert(!formula.includes("{{"), formula);
  assertStringIncludes(formula, `version "${VERSION}"`);
  for (const t of RELEASE_TARGETS.filter((t) => t.os !== "windows")) {
    const archive = archiveName(VERSION, t);
    assertStringIncludes(
      formula,
      `url "${values.baseUrl}/${archive}"\n      sha256 "${values.sums.get(archive)}"`,
    );
  }
  assertStringIncludes(formula, 'generate_completions_from_executable(bin/"relay", "completion")');
});

Deno.test("rendering fails on an archive SHA256SUMS lacks or an unknown placeholder", () => {
  const values = fakeValues();
  const sums = new Map(values.sums);
  sums.delete(archiveName(VERSION, RELEASE_TARGETS[4]));
  let error = "";
  try {
    render("{{VERSION}}", { ...values, sums });
  } catch (e) {
    error = (e as Error).message;
  }
  assertEquals(error, `SHA256SUMS does not list ${archiveName(VERSION, RELEASE_TARGETS[4])}`);
  try {
    render("{{NOPE}}", values);
  } catch (e) {
    error = (e as Error).message;
  }
  assertEquals(error, "template names an unknown placeholder {{NOPE}}");
});

Deno.test("the agent image is the linux binary on distroless/cc, as a numeric non-root user, with iptables", async () => {
  const dockerfile = await Deno.readTextFile(`${ROOT}/manifests/Dockerfile`);
  const instructions = dockerfile.split("\n").filter((l) => /^[A-Z]+ /.test(l));
  const stages = instructions.filter((l) => l.startsWith("FROM "));
  assertMatch(stages.at(-1)!, /^FROM gcr\.io\/distroless\/cc-debian(\d+):nonroot$/);
  // iptables comes from the same Debian release as the final image, unpacked without emulation.
  const release = /cc-debian(\d+)/.exec(stages.at(-1)!)![1];
  assertEquals(stages[0], `FROM --platform=$BUILDPLATFORM debian:${release}-slim AS netfilter`);
  assertStringIncludes(dockerfile, "COPY --from=netfilter /netfilter/usr/ /usr/");
  assertStringIncludes(dockerfile, 'ln -sf xtables-nft-multi "/netfilter/usr/sbin/$name"');
  assertStringIncludes(
    dockerfile,
    "\nCOPY --chmod=0755 ${TARGETARCH}/relay /usr/local/bin/relay\n",
  );
  const user = instructions.find((l) => l.startsWith("USER "));
  assertMatch(user ?? "", /^USER [1-9]\d*:[1-9]\d*$/);
  // The pod spec passes ["agent", ...] as args; the image only names the binary.
  assertEquals(instructions.at(-1), 'ENTRYPOINT ["/usr/local/bin/relay"]');

  // The workflow puts each linux binary where the Dockerfile's COPY looks, and pushes the
  // image the client defaults to.
  const workflow = await Deno.readTextFile(`${ROOT}/.github/workflows/release.yml`);
  assertStringIncludes(workflow, "for pair in amd64:x86_64 arm64:aarch64; do");
  assertStringIncludes(workflow, "platforms: linux/amd64,linux/arm64");
  assertStringIncludes(workflow, "file: manifests/Dockerfile");
  const image = /AGENT_IMAGE: (\S+)/.exec(workflow)?.[1];
  assertEquals(`${image}:${VERSION}`, DEFAULT_AGENT_IMAGE);
});
