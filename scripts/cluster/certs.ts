/**
 * The cluster's PKI, made with openssl: one CA, X.509 v3 leaf certificates (Deno's TLS
 * rejects v1) and the service-account signing key. Made once per run dir and kept.
 */
import { NET, NODE_NAME, PATHS } from "./config.ts";
import { must } from "./proc.ts";

/** One client or serving identity. */
interface LeafSpec {
  name: string;
  cn: string;
  org?: string;
  /** Subject alternative names, as openssl writes them (`IP:…`, `DNS:…`); serving certs only. */
  sans?: string[];
}

/** The API server's names: every way a client may dial it. */
const API_SERVER_SANS = [
  "IP:127.0.0.1",
  `IP:${NET.hostLinkIp}`,
  `IP:${NET.apiServiceIp}`,
  "DNS:localhost",
  "DNS:kubernetes",
  "DNS:kubernetes.default",
  "DNS:kubernetes.default.svc",
  "DNS:kubernetes.default.svc.cluster.local",
];

const LEAVES: LeafSpec[] = [
  { name: "apiserver", cn: "kube-apiserver", sans: API_SERVER_SANS },
  { name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", org: "system:masters" },
  { name: "admin", cn: "relay-admin", org: "system:masters" },
  { name: "controller-manager", cn: "system:kube-controller-manager" },
  { name: "scheduler", cn: "system:kube-scheduler" },
  { name: "kube-proxy", cn: "system:kube-proxy" },
  {
    name: "kubelet",
    cn: `system:node:${NODE_NAME}`,
    org: "system:nodes",
    sans: [`IP:${NET.nodeLinkIp}`, `DNS:${NODE_NAME}`],
  },
];

/** The path of a certificate or key in the run dir: `certFile("admin", "crt")`. */
export function certFile(name: string, ext: "crt" | "key" | "pub"): string {
  return `${PATHS.certs}/${name}.${ext}`;
}

/** Makes every certificate and key that is still missing. */
export async function ensureCerts(): Promise<void> {
  await Deno.mkdir(PATHS.certs, { recursive: true });
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  if (!await exists(certFile("ca", "crt"))) {
    await must(["openssl", "genrsa", "-out", certFile("ca", "key"), "2048"]);
    await must([
      "openssl",
      "req",
      "-x509",
      "-new",
      "-nodes",
      "-key",
      certFile("ca", "key"),
      "-sha256",
      "-days",
      "3650",
      "-subj",
      "/CN=relay-cluster-ca",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
      "-out",
      certFile("ca", "crt"),
    ]);
  }
  if (!await exists(certFile("sa", "pub"))) {
    await must(["openssl", "genrsa", "-out", certFile("sa", "key"), "2048"]);
    await must([
      "openssl",
      "rsa",
      "-in",
      certFile("sa", "key"),
      "-pubout",
      "-out",
      certFile("sa", "pub"),
    ]);
  }
  await Promise.all(LEAVES.map(async (leaf) => {
    if (!await exists(certFile(leaf.name, "crt"))) await makeLeaf(leaf);
  }));
}

function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(15));
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function makeLeaf(leaf: LeafSpec): Promise<void> {
  const key = certFile(leaf.name, "key");
  const csr = `${PATHS.certs}/${leaf.name}.csr`;
  const ext = `${PATHS.certs}/${leaf.name}.ext`;
  const subject = `/CN=${leaf.cn}` + (leaf.org ? `/O=${leaf.org}` : "");
  const lines = [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    `extendedKeyUsage=${leaf.sans ? "serverAuth,clientAuth" : "clientAuth"}`,
    "subjectKeyIdentifier=hash",
    "authorityKeyIdentifier=keyid",
  ];
  if (leaf.sans) lines.push(`subjectAltName=${leaf.sans.join(",")}`);
  await Deno.writeTextFile(ext, lines.join("\n") + "\n");
  await must(["openssl", "genrsa", "-out", key, "2048"]);
  await must(["openssl", "req", "-new", "-key", key, "-subj", subject, "-out", csr]);
  await must([
    "openssl",
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    certFile("ca", "crt"),
    "-CAkey",
    certFile("ca", "key"),
    // A serial of its own: leaves are signed in parallel, and a shared
    // -CAcreateserial file is read by one openssl while another rewrites it.
    "-set_serial",
    randomSerial(),
    "-days",
    "3650",
    "-sha256",
    "-extfile",
    ext,
    "-out",
    certFile(leaf.name, "crt"),
  ]);
  await Deno.remove(csr);
}
