/**
 * Helpers for the lib/kube tests: a throw-away PKI made with openssl, kubeconfig files in a
 * temp directory, and a fake API server on loopback TLS.
 */

/** Temp directories these helpers made; removed when the test module unloads. */
const madeDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of madeDirs) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // removed by its test already
    }
  }
});

/** PEM files of a test CA and a server certificate for 127.0.0.1 signed by it. */
export interface TestPki {
  dir: string;
  caFile: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  /** A client certificate (CN=relay-test) and its key, signed by the same CA. */
  clientCertFile: string;
  clientKeyFile: string;
}

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
}

/** Make a CA and X.509 v3 server and client certificates in a new temp directory. */
export async function makeTestPki(): Promise<TestPki> {
  const dir = await Deno.makeTempDir({ prefix: "relay-kube-pki-" });
  madeDirs.push(dir);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl(
    dir,
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    "/CN=relay-test-ca",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ); // deno-fmt-ignore
  for (const [name, ext] of [
    ["srv", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"],
    ["client", "extendedKeyUsage=clientAuth\n"],
  ]) {
    await Deno.writeTextFile(`${dir}/${name}.ext`, `basicConstraints=CA:FALSE\n${ext}`);
    await openssl(dir, "req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name === "srv" ? "127.0.0.1" : "relay-test"}`); // deno-fmt-ignore
    await openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${name}.crt`, "-days", "2", "-extfile", `${name}.ext`); // deno-fmt-ignore
  }
  return {
    dir,
    caFile: `${dir}/ca.crt`,
    caPem: await Deno.readTextFile(`${dir}/ca.crt`),
    certPem: await Deno.readTextFile(`${dir}/srv.crt`),
    keyPem: await Deno.readTextFile(`${dir}/srv.key`),
    clientCertFile: `${dir}/client.crt`,
    clientKeyFile: `${dir}/client.key`,
  };
}

/** A request as the fake API server saw it. */
export interface SeenRequest {
  method: string;
  url: URL;
  headers: Headers;
  /** The client's port: its end of the connection the request came on. */
  clientPort: number;
}

/** A TLS server on 127.0.0.1 standing in for the API server. */
export interface FakeApiServer {
  url: string;
  seen: SeenRequest[];
  close(): Promise<void>;
}

/** Serve `handler` over TLS on a free loopback port, recording every request. */
export function startFakeApiServer(
  pki: TestPki,
  handler: (request: Request) => Response | Promise<Response>,
): FakeApiServer {
  const seen: SeenRequest[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: pki.certPem, key: pki.keyPem, onListen() {} },
    (request, info) => {
      seen.push({
        method: request.method,
        url: new URL(request.url),
        headers: new Headers(request.headers),
        clientPort: (info.remoteAddr as Deno.NetAddr).port,
      });
      return handler(request);
    },
  );
  return {
    url: `https://127.0.0.1:${server.addr.port}`,
    seen,
    close: () => server.shutdown(),
  };
}

/** Write `text` to a file in a new temp directory and return its path. */
export async function writeTempFile(name: string, text: string, mode?: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "relay-kube-" });
  madeDirs.push(dir);
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, text, mode === undefined ? undefined : { mode });
  return path;
}

/** A kubeconfig YAML with one cluster and the given users, contexts and current-context. */
export function kubeconfigYaml(opts: {
  server: string;
  caFile?: string;
  clusterExtra?: string;
  users: Record<string, string>;
  contexts: Record<string, { user: string; namespace?: string }>;
  current?: string;
}): string {
  const users = Object.entries(opts.users).map(([name, body]) =>
    `- name: ${name}\n  user:\n${body.replace(/^/gm, "    ")}`
  );
  const contexts = Object.entries(opts.contexts).map(([name, c]) =>
    `- name: ${name}\n  context:\n    cluster: c1\n    user: ${c.user}\n` +
    (c.namespace ? `    namespace: ${c.namespace}\n` : "")
  );
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: c1",
    "  cluster:",
    `    server: ${opts.server}`,
    ...(opts.caFile ? [`    certificate-authority: ${opts.caFile}`] : []),
    ...(opts.clusterExtra ? [opts.clusterExtra] : []),
    "users:",
    ...users,
    "contexts:",
    ...contexts,
    ...(opts.current ? [`current-context: ${opts.current}`] : []),
    "",
  ].join("\n");
}
