/**
 * The release build: the `deno compile` commands it runs (checked through --dry-run), how it
 * reports a runtime it cannot download, and the archives and SHA256SUMS it packages.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { ROOT, run } from "./distribution_helpers.ts";
import { VERSION } from "../lib/version.ts";
import { parseChecksums } from "../scripts/release/checksums.ts";
import {
  explainCompileFailure,
  RELAY_RUN_FLAGS,
  RELAY_V8_FLAGS,
} from "../scripts/release/compile.ts";
import { packageRelease } from "../scripts/release/package.ts";
import {
  archiveName,
  binaryName,
  RELEASE_TARGETS,
  targetByTriple,
} from "../scripts/release/targets.ts";

function release(args: string[], env: Record<string, string> = {}) {
  return run(Deno.execPath(), ["run", "-A", `${ROOT}/scripts/release.ts`, ...args], { env });
}

Deno.test("--dry-run prints one deno compile command per target, with every flag", async () => {
  const r = await release(["--dry-run"]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assertEquals(lines.length, RELEASE_TARGETS.length);
  for (const [i, target] of RELEASE_TARGETS.entries()) {
    const out = `dist/build/${target.denoTarget}/${binaryName(target)}`;
    assertEquals(
      lines[i],
      "deno compile --unstable-net --v8-flags=--initial-old-space-size=64,--expose-gc --allow-all " +
        "--frozen-lockfile --config deno.json " +
        `--include deno.json --include lib/kube/tls_warm_up_worker.ts --target ${target.denoTarget} --output ${out} main.ts`,
    );
  }
  assertEquals(
    RELEASE_TARGETS.map((t) => t.denoTarget).sort(),
    [
      "aarch64-apple-darwin",
      "aarch64-unknown-linux-gnu",
      "x86_64-apple-darwin",
      "x86_64-pc-windows-msvc",
      "x86_64-unknown-linux-gnu",
    ],
  );
});

Deno.test("--target picks targets, --out moves the output, an unknown target fails", async () => {
  const r = await release([
    "--dry-run",
    "--out",
    "out dir",
    "--target",
    "x86_64-pc-windows-msvc",
    "--target",
    "aarch64-apple-darwin",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assertEquals(lines.length, 2);
  assertStringIncludes(lines[0], "--output 'out dir/build/x86_64-pc-windows-msvc/relay.exe'");
  assertStringIncludes(lines[1], "--target aarch64-apple-darwin");

  const bad = await release(["--dry-run", "--target", "riscv64gc-unknown-linux-gnu"]);
  assertEquals(bad.code, 1);
  assertStringIncludes(bad.stderr, "unknown target 'riscv64gc-unknown-linux-gnu'");
});

Deno.test("--tag must name deno.json's version", async () => {
  const bad = await release(["--dry-run", "--tag", "v0.0.0-other"]);
  assertEquals(bad.code, 1);
  assertStringIncludes(
    bad.stderr,
    `tag v0.0.0-other does not match deno.json's version ${VERSION}`,
  );
  const good = await release(["--dry-run", "--tag", `v${VERSION}`]);
  assertEquals(good.code, 0, good.stderr);
});

Deno.test("a release build that cannot download the Deno runtime fails with one line", async () => {
  const out = await Deno.makeTempDir({ prefix: "relay-release-test-" });
  try {
    // The proxy is a closed loopback port: the runtime download fails here on any machine,
    // and nothing leaves it.
    const proxy = "http://127.0.0.1:9";
    const r = await release(
      ["--target", "x86_64-unknown-linux-gnu", "--out", out],
      { HTTPS_PROXY: proxy, HTTP_PROXY: proxy, https_proxy: proxy, http_proxy: proxy },
    );
    if (r.code === 0) {
      // A machine whose DENO_DIR already holds that runtime builds for real.
      const sums = parseChecksums(await Deno.readTextFile(`${out}/SHA256SUMS`));
      assert(sums.has(archiveName(VERSION, targetByTriple("x86_64-unknown-linux-gnu"))));
      return;
    }
    assertEquals(r.code, 1);
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, r.stderr);
    assertMatch(
      lines[0],
      /^release: could not download the Deno runtime for x86_64-unknown-linux-gnu \(https:\/\/dl\.deno\.land\/.*denort-x86_64-unknown-linux-gnu\.zip\): .+/,
    );
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("compile failures are told in one line", () => {
  const target = targetByTriple("aarch64-apple-darwin");
  const offline = [
    "Check main.ts",
    "Compile main.ts to dist/relay",
    "Download https://dl.deno.land/release/v2.9.6/denort-aarch64-apple-darwin.zip",
    "error: Writing deno compile executable to temporary file 'dist/relay.tmp-1'",
    "",
    "Caused by:",
    "    0: Setting up base binary.",
    "    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-aarch64-apple-darwin.zip): client error (Connect)",
    "    2: dns error",
    "    3: failed to lookup address information: Name or service not known",
    "",
    "Stack backtrace:",
    "   0: <unknown>",
  ].join("\n");
  assertEquals(
    explainCompileFailure(target, offline),
    "could not download the Deno runtime for aarch64-apple-darwin " +
      "(https://dl.deno.land/release/v2.9.6/denort-aarch64-apple-darwin.zip): " +
      "failed to lookup address information: Name or service not known. " +
      "deno compile needs internet access to fetch it, or DENORT_BIN set to a local denort.",
  );
  const typeError = "Check main.ts\nerror: TS2322 [ERROR]: Type 'string' is not assignable\n";
  assertEquals(
    explainCompileFailure(target, typeError),
    "deno compile failed for aarch64-apple-darwin: error: TS2322 [ERROR]: Type 'string' is not assignable",
  );
});

Deno.test("packaging makes an archive per target and a SHA256SUMS sha256sum accepts", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "relay-package-test-" });
  try {
    const build = `${tmp}/build`;
    for (const t of RELEASE_TARGETS) {
      await Deno.mkdir(`${build}/${t.denoTarget}`, { recursive: true });
      await Deno.writeTextFile(`${build}/${t.denoTarget}/${binaryName(t)}`, `bin ${t.denoTarget}`);
    }
    await Deno.writeTextFile(`${tmp}/LICENSE`, "license text\n");
    const out = `${tmp}/dist`;
    const written = await packageRelease({
      version: "1.2.3",
      targets: RELEASE_TARGETS,
      buildDir: build,
      outDir: out,
      extraFiles: [`${tmp}/LICENSE`],
      mtime: new Date("2025-01-02T03:04:06Z"),
    });
    const names = RELEASE_TARGETS.map((t) => archiveName("1.2.3", t));
    assertEquals(written, [...names, "SHA256SUMS"].map((n) => `${out}/${n}`));
    assertEquals(names, [
      "relay-1.2.3-linux-x86_64.tar.gz",
      "relay-1.2.3-linux-aarch64.tar.gz",
      "relay-1.2.3-darwin-x86_64.tar.gz",
      "relay-1.2.3-darwin-aarch64.tar.gz",
      "relay-1.2.3-windows-x86_64.zip",
    ]);

    const check = await run("sha256sum", ["-c", "SHA256SUMS"], { cwd: out });
    assertEquals(check.code, 0, check.stdout + check.stderr);
    assertEquals(check.stdout.trim().split("\n").length, RELEASE_TARGETS.length);

    for (const t of RELEASE_TARGETS) {
      const archive = `${out}/${archiveName("1.2.3", t)}`;
      const x = `${tmp}/x-${t.denoTarget}`;
      await Deno.mkdir(x);
      const unpack = t.os === "windows"
        ? await run("unzip", ["-q", archive, "-d", x])
        : await run("tar", ["-xzf", archive, "-C", x]);
      assertEquals(unpack.code, 0, unpack.stderr);
      assertEquals(await Deno.readTextFile(`${x}/${binaryName(t)}`), `bin ${t.denoTarget}`);
      assertEquals(await Deno.readTextFile(`${x}/LICENSE`), "license text\n");
      const mode = (await Deno.stat(`${x}/${binaryName(t)}`)).mode! & 0o777;
      assertEquals(mode.toString(8), "755");
    }
    const listing = await run("tar", ["-tvzf", `${out}/relay-1.2.3-linux-x86_64.tar.gz`], {
      env: { TZ: "UTC" },
    });
    assertMatch(listing.stdout, /^-rwxr-xr-x root\/root\s+\d+ 2025-01-02 03:04 relay$/m);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("`deno task relay` runs main.ts with the release binary's runtime flags", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  assertStringIncludes(config.tasks.relay, `--v8-flags=${RELAY_V8_FLAGS}`);
  assertEquals(config.tasks.relay, `deno run ${RELAY_RUN_FLAGS.join(" ")} main.ts`);
});
