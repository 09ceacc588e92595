/**
 * scripts/install.sh against a fake release served on loopback: real archives, real checksums,
 * run by the machine's POSIX sh into temporary directories.
 */
import { assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import {
  listDir,
  ROOT,
  run,
  serveDirectory,
  tool,
  writeFakeRelease,
} from "./distribution_helpers.ts";
import { VERSION } from "../lib/version.ts";
import { RELEASE_TARGETS } from "../scripts/release/targets.ts";

const INSTALL_SH = `${ROOT}/scripts/install.sh`;
const UNIX_TARGETS = RELEASE_TARGETS.filter((t) => t.os !== "windows");

// A `relay` that is relay: main.ts run by deno, so the installed command really answers.
const RELAY_WRAPPER = `#!/bin/sh\nexec deno run -A --unstable-net ${ROOT}/main.ts "$@"\n`;

interface Fixture {
  readonly tmp: string;
  /** Served at the server's root: one release. */
  readonly releaseDir: string;
  /** The install target; holds one unrelated file, to see it is left as it was. */
  readonly installDir: string;
  readonly url: string;
  /** Paths the server was asked for. */
  readonly requests: readonly string[];
  close(): Promise<void>;
}

async function fixture(binary = '#!/bin/sh\necho stand-in "$@"\n'): Promise<Fixture> {
  const tmp = await Deno.makeTempDir({ prefix: "relay-install-test-" });
  const releaseDir = `${tmp}/release`;
  await writeFakeRelease({ dir: releaseDir, version: VERSION, targets: RELEASE_TARGETS, binary });
  const installDir = `${tmp}/bin`;
  await Deno.mkdir(installDir);
  await Deno.writeTextFile(`${installDir}/unrelated`, "keep me\n");
  const server = serveDirectory(releaseDir);
  return {
    tmp,
    releaseDir,
    installDir,
    url: server.url,
    requests: server.requests,
    close: async () => {
      await server.close();
      await Deno.remove(tmp, { recursive: true });
    },
  };
}

function install(f: Fixture, env: Record<string, string> = {}, pathPrefix: string[] = []) {
  return run("/bin/sh", [INSTALL_SH], {
    clearEnv: true,
    env: {
      PATH: [...pathPrefix, Deno.env.get("PATH") ?? "/usr/bin:/bin"].join(":"),
      HOME: f.tmp,
      RELAY_DOWNLOAD_URL: f.url,
      RELAY_INSTALL_DIR: f.installDir,
      ...env,
    },
  });
}

async function assertUntouched(f: Fixture) {
  assertEquals(await listDir(f.installDir), ["unrelated"]);
  assertEquals(await Deno.readTextFile(`${f.installDir}/unrelated`), "keep me\n");
}

Deno.test("install.sh is POSIX sh and shellcheck-clean", async () => {
  const r = await run(await tool("shellcheck"), ["--shell=sh", INSTALL_SH]);
  assertEquals(r.code, 0, r.stdout + r.stderr);
});

Deno.test("install.sh installs the latest release, which runs as relay and kubectl relay", async () => {
  const f = await fixture(RELAY_WRAPPER);
  try {
    const r = await install(f);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stderr, `installed ${f.installDir}/relay (${VERSION})`);
    assertStringIncludes(r.stderr, `linked ${f.installDir}/kubectl-relay -> relay`);
    assertEquals(await listDir(f.installDir), ["kubectl-relay", "relay", "unrelated"]);
    assertEquals(await Deno.readLink(`${f.installDir}/kubectl-relay`), "relay");

    const env = { PATH: `${f.installDir}:${Deno.env.get("PATH")}` };
    const version = await run(`${f.installDir}/relay`, ["--version"], { env });
    assertEquals(version.code, 0, version.stderr);
    assertStringIncludes(version.stdout, VERSION);

    const plugin = await run("/usr/bin/kubectl", ["relay", "--help"], { env });
    assertEquals(plugin.code, 0, plugin.stderr);
    assertMatch(plugin.stdout, /Usage: relay/);
    assertStringIncludes(plugin.stdout, "agent");
  } finally {
    await f.close();
  }
});

Deno.test("install.sh installs the archive for each unix platform it detects", async () => {
  const f = await fixture();
  try {
    for (const target of UNIX_TARGETS) {
      const uname = await fakeUname(f.tmp, target.os === "linux" ? "Linux" : "Darwin", target.arch);
      const dir = `${f.tmp}/bin-${target.os}-${target.arch}`;
      const r = await install(f, { RELAY_INSTALL_DIR: dir }, [uname]);
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(
        r.stderr,
        `downloading relay ${VERSION} for ${target.os}/${target.arch}`,
      );
      assertEquals(await listDir(dir), ["kubectl-relay", "relay"]);
    }
  } finally {
    await f.close();
  }
});

Deno.test("install.sh pins RELAY_VERSION and creates a missing install directory", async () => {
  const f = await fixture();
  try {
    const old = `${f.releaseDir}/v0.0.9`;
    await writeFakeRelease({
      dir: old,
      version: "0.0.9",
      targets: RELEASE_TARGETS,
      binary: "#!/bin/sh\necho old\n",
    });
    const dir = `${f.tmp}/new/bin`;
    const r = await install(f, {
      RELAY_VERSION: "v0.0.9",
      RELAY_DOWNLOAD_URL: `${f.url}/v0.0.9`,
      RELAY_INSTALL_DIR: dir,
    });
    assertEquals(r.code, 0, r.stderr);
    assertEquals((await run(`${dir}/relay`, [])).stdout, "old\n");
  } finally {
    await f.close();
  }
});

Deno.test("install.sh refuses an archive whose checksum does not match", async () => {
  const f = await fixture();
  try {
    const sums = await Deno.readTextFile(`${f.releaseDir}/SHA256SUMS`);
    await Deno.writeTextFile(
      `${f.releaseDir}/SHA256SUMS`,
      sums.replace(/^[0-9a-f]{64}/gm, "0".repeat(64)),
    );
    const r = await install(f);
    assertEquals(r.code, 1);
    assertMatch(
      r.stderr,
      /checksum mismatch for relay-.*\.tar\.gz: expected 0{64}, got [0-9a-f]{64}/,
    );
    await assertUntouched(f);
  } finally {
    await f.close();
  }
});

Deno.test("install.sh fails clearly when an asset is missing", async () => {
  const f = await fixture();
  try {
    const archive = `relay-${VERSION}-linux-x86_64.tar.gz`;
    await Deno.remove(`${f.releaseDir}/${archive}`);
    const r = await install(f);
    assertEquals(r.code, 1);
    assertStringIncludes(r.stderr, `error: download failed: ${f.url}/${archive}`);
    await assertUntouched(f);

    await Deno.remove(`${f.releaseDir}/SHA256SUMS`);
    const noSums = await install(f);
    assertEquals(noSums.code, 1);
    assertStringIncludes(noSums.stderr, `error: download failed: ${f.url}/SHA256SUMS`);
    await assertUntouched(f);
  } finally {
    await f.close();
  }
});

Deno.test("install.sh fails clearly on an unknown platform", async () => {
  const f = await fixture();
  try {
    const sunos = await install(f, {}, [await fakeUname(f.tmp, "SunOS", "x86_64")]);
    assertEquals(sunos.code, 1);
    assertStringIncludes(sunos.stderr, "error: unsupported operating system: SunOS");
    await assertUntouched(f);

    const riscv = await install(f, {}, [await fakeUname(f.tmp, "Linux", "riscv64")]);
    assertEquals(riscv.code, 1);
    assertStringIncludes(riscv.stderr, "error: unsupported CPU architecture: riscv64");
    await assertUntouched(f);
    // Nothing was even fetched for a platform relay is not built for.
    assertEquals(f.requests, []);
  } finally {
    await f.close();
  }
});

Deno.test("install.sh leaves another kubectl-relay alone unless told to replace it", async () => {
  const f = await fixture();
  try {
    // krelay, installed by krew, in a directory earlier on PATH.
    const krewBin = `${f.tmp}/krew-bin`;
    await Deno.mkdir(krewBin);
    await Deno.writeTextFile(`${krewBin}/kubectl-relay`, "#!/bin/sh\necho krelay\n", {
      mode: 0o755,
    });
    const kept = await install(f, {}, [krewBin]);
    assertEquals(kept.code, 0, kept.stderr);
    assertStringIncludes(kept.stderr, `left ${krewBin}/kubectl-relay alone`);
    assertStringIncludes(kept.stderr, "RELAY_REPLACE_PLUGIN=1");
    assertEquals(await listDir(f.installDir), ["relay", "unrelated"]);

    const replaced = await install(f, { RELAY_REPLACE_PLUGIN: "1" }, [krewBin]);
    assertEquals(replaced.code, 0, replaced.stderr);
    assertStringIncludes(replaced.stderr, `linked ${f.installDir}/kubectl-relay -> relay`);
    assertStringIncludes(replaced.stderr, `${krewBin}/kubectl-relay also exists`);
    assertEquals(await Deno.readTextFile(`${krewBin}/kubectl-relay`), "#!/bin/sh\necho krelay\n");

    // A kubectl-relay file in the install directory itself is left, then replaced on request.
    await Deno.remove(`${f.installDir}/kubectl-relay`);
    await Deno.writeTextFile(`${f.installDir}/kubectl-relay`, "other\n");
    const keptHere = await install(f);
    assertStringIncludes(keptHere.stderr, `left ${f.installDir}/kubectl-relay alone`);
    assertEquals(await Deno.readTextFile(`${f.installDir}/kubectl-relay`), "other\n");
    const replacedHere = await install(f, { RELAY_REPLACE_PLUGIN: "1" });
    assertEquals(replacedHere.code, 0, replacedHere.stderr);
    assertEquals(await Deno.readLink(`${f.installDir}/kubectl-relay`), "relay");

    // Our own link from an earlier install is simply kept up to date.
    const again = await install(f);
    assertEquals(again.code, 0, again.stderr);
    assertStringIncludes(again.stderr, `linked ${f.installDir}/kubectl-relay -> relay`);
  } finally {
    await f.close();
  }
});

/** A directory holding a `uname` that reports `system` and `machine`, to put first on PATH. */
async function fakeUname(tmp: string, system: string, machine: string): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: tmp, prefix: "uname-" });
  await Deno.writeTextFile(
    `${dir}/uname`,
    `#!/bin/sh\ncase "$1" in -s) echo ${system} ;; -m) echo ${machine} ;; *) echo ${system} ;; esac\n`,
    { mode: 0o755 },
  );
  return dir;
}
