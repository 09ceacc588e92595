/** Kubeconfig files for the cluster's clients, with certificates embedded. */
import { certFile } from "./certs.ts";
import { NET, PORTS } from "./config.ts";

/** The API server's URL, on the host↔node link so it works from every namespace. */
export const API_SERVER_URL = `https://${NET.hostLinkIp}:${PORTS.apiServer}`;

/** Writes a kubeconfig for the identity whose certificate is `certs/<identity>.crt`. */
export async function writeKubeconfig(path: string, identity: string): Promise<void> {
  const b64 = async (file: string) => {
    const bytes = await Deno.readFile(file);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  };
  // JSON is YAML, and every kubeconfig reader accepts it.
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "relay",
      cluster: {
        server: API_SERVER_URL,
        "certificate-authority-data": await b64(certFile("ca", "crt")),
      },
    }],
    users: [{
      name: identity,
      user: {
        "client-certificate-data": await b64(certFile(identity, "crt")),
        "client-key-data": await b64(certFile(identity, "key")),
      },
    }],
    contexts: [{ name: "relay", context: { cluster: "relay", user: identity } }],
    "current-context": "relay",
  };
  await Deno.writeTextFile(path, JSON.stringify(config, null, 2) + "\n");
}
