/**
 * A minimal Kubernetes REST client for the kubelet shim: requests and watches over fetch,
 * authenticated with a client certificate from the run dir.
 */

/** How to reach and authenticate to the API server. */
export interface KubeClientOptions {
  server: string;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** A Kubernetes API error, with the HTTP status. */
export class KubeError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "KubeError";
  }
}

/** One event of a watch stream. */
export interface WatchEvent<T> {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: T;
}

/** Requests and watches against one API server. */
export class KubeClient {
  readonly #server: string;
  readonly #client: Deno.HttpClient;

  constructor(options: KubeClientOptions) {
    this.#server = options.server;
    this.#client = Deno.createHttpClient({
      caCerts: [Deno.readTextFileSync(options.caFile)],
      cert: Deno.readTextFileSync(options.certFile),
      key: Deno.readTextFileSync(options.keyFile),
    });
  }

  /** Sends one request; returns the parsed JSON body, throws {@link KubeError} on non-2xx. */
  async request<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<T> {
    const response = await fetch(this.#server + path, {
      method,
      client: this.#client,
      headers: body === undefined ? {} : { "content-type": contentType },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try {
        message = JSON.parse(text).message ?? text;
      } catch {
        // not a Status object
      }
      throw new KubeError(response.status, `${method} ${path}: ${response.status} ${message}`);
    }
    const json = response.headers.get("content-type")?.includes("json");
    return (json && text ? JSON.parse(text) : text) as T;
  }

  /** Streams watch events from `path` (which must carry `watch=1`) until it ends or `signal`. */
  async *watch<T>(path: string, signal?: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    const response = await fetch(this.#server + path, { client: this.#client, signal });
    if (!response.ok || !response.body) {
      throw new KubeError(response.status, `watch ${path}: ${await response.text()}`);
    }
    let buffer = "";
    const decoder = new TextDecoder();
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk, { stream: true });
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield JSON.parse(line) as WatchEvent<T>;
      }
    }
  }
}
