/**
 * relay's REST client for the API server: one request (JSON in, JSON out) and one watch, over
 * Deno's fetch with the connection a loaded kubeconfig gives. relay makes a dozen kinds of
 * call; client-node's typed clients would load its whole generated API (hundreds of modules,
 * most of a second and ~85 MB) to make them, so they are made here (docs/MEASUREMENTS.md).
 */
import type { RawConnection } from "./config.ts";

/** A request the API server answered with a status other than 2xx. */
export class ApiError extends Error {
  override name = "ApiError";
  /** The HTTP status, read by `statusOf` in errors.ts. */
  readonly code: number;
  /** The response body: a Kubernetes Status object as JSON text, usually. */
  readonly body: string;

  constructor(method: string, path: string, code: number, body: string) {
    super(`${method} ${path}: ${code} ${statusMessage(body)}`);
    this.code = code;
    this.body = body;
  }
}

/** Query parameters; undefined values are left out. */
export type Query = Record<string, string | number | boolean | undefined>;

/** A call's options beyond method and path. */
export interface RequestOptions {
  query?: Query;
  /** Sent as JSON. */
  body?: unknown;
  /** Defaults to application/json; a JSON patch says application/json-patch+json. */
  contentType?: string;
}

/** Receives each watch event: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR, and its object. */
export type WatchCallback = (type: string, object: unknown) => void;

/** Starts watches; `watch` resolves once the server accepted it, with its stop handle. */
export interface Watcher {
  watch(
    path: string,
    query: Query,
    onEvent: WatchCallback,
    done: (error?: unknown) => void,
  ): Promise<AbortController>;
}

/** Requests and watches against one API server, with fresh credentials for each. */
export class KubeApi implements Watcher {
  constructor(
    private readonly connect: () => Promise<RawConnection>,
    /** For single requests, not watches; 0 means none (`--request-timeout`). */
    private readonly timeoutMs = 0,
  ) {}

  /** Sends one request; resolves with the parsed body, rejects with {@link ApiError}. */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const conn = await this.connect();
    const headers = new Headers(conn.headers);
    headers.set("Accept", "application/json");
    if (options.body !== undefined) {
      headers.set("Content-Type", options.contentType ?? "application/json");
    }
    const response = await fetch(url(conn.server, path, options.query), {
      method,
      headers,
      client: conn.client,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: this.timeoutMs > 0 ? AbortSignal.timeout(this.timeoutMs) : undefined,
    });
    const text = await response.text();
    if (!response.ok) throw new ApiError(method, path, response.status, text);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async watch(
    path: string,
    query: Query,
    onEvent: WatchCallback,
    done: (error?: unknown) => void,
  ): Promise<AbortController> {
    const conn = await this.connect();
    const controller = new AbortController();
    const response = await fetch(url(conn.server, path, { ...query, watch: "true" }), {
      headers: conn.headers,
      client: conn.client,
      signal: controller.signal,
    });
    if (!response.ok || !response.body) {
      throw new ApiError("WATCH", path, response.status, await response.text());
    }
    void readEvents(response.body, onEvent).then(
      () => done(),
      (error) => done(controller.signal.aborted ? undefined : error),
    );
    return controller;
  }
}

/** Calls `onEvent` for each line of a watch's newline-delimited JSON. */
async function readEvents(body: ReadableStream<Uint8Array>, onEvent: WatchCallback) {
  let pending = "";
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (!line) continue;
      const event = JSON.parse(line) as { type: string; object: unknown };
      onEvent(event.type, event.object);
    }
  }
}

function url(server: URL, path: string, query: Query = {}): URL {
  // The server URL may carry a path prefix (a proxy in front of the API server).
  const target = new URL(server.pathname.replace(/\/$/, "") + path, server);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== "") target.searchParams.set(name, String(value));
  }
  return target;
}

/** A Status object's message, else the body's first line. */
function statusMessage(body: string): string {
  try {
    const message = (JSON.parse(body) as { message?: unknown }).message;
    if (typeof message === "string" && message) return message;
  } catch {
    // not JSON
  }
  return body.split("\n")[0].trim();
}
