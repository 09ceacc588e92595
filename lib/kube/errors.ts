/**
 * Turning what the API server says into one clear sentence. Input the user got wrong (a name
 * that does not exist, a context that is not there) becomes a {@link UsageError} (exit 2);
 * the cluster refusing or failing at run time becomes a {@link KubeError} (exit 1).
 */
import { EXIT_FAILURE, UsageError } from "../errors.ts";

export { UsageError };

/** A failure talking to the cluster at run time; its message is one line, printed as is. */
export class KubeError extends Error {
  /** The process exit code this error maps to. */
  readonly exitCode: number;
  /** The HTTP status the API server answered with, when there was one. */
  readonly status?: number;

  constructor(message: string, options?: ErrorOptions & { status?: number; exitCode?: number }) {
    super(message.replace(/\s*\n\s*/g, " ").trim(), options);
    this.name = "KubeError";
    this.status = options?.status;
    this.exitCode = options?.exitCode ?? EXIT_FAILURE;
  }
}

/** What a failed API call was about, to name it in the message. */
export interface ApiCallSubject {
  /** The verb as RBAC spells it: get, list, create, delete, watch. */
  verb: string;
  /** The resource as RBAC spells it: pods, services, jobs, pods/portforward. */
  resource: string;
  /** How a user would write the object: `svc/redis`, `pod/web-0`. */
  object?: string;
  namespace: string;
}

/** The HTTP status of a failed API call (api.ts's ApiError has `code`), if any. */
export function statusOf(error: unknown): number | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === "number" && code >= 100 && code < 600 ? code : undefined;
}

/** The `message` of a Kubernetes Status object in an ApiError body, when it has one. */
export function statusMessageOf(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  let body = (error as { body?: unknown }).body;
  if (typeof body === "string") {
    const text = body;
    try {
      body = JSON.parse(text);
    } catch {
      return text.trim() || undefined;
    }
  }
  const message = (body as { message?: unknown } | undefined)?.message;
  return typeof message === "string" && message ? message : undefined;
}

/**
 * Map an error from an API call to a typed, one-line error: 404 → UsageError naming the
 * object, 403 → KubeError naming the missing permission, 401 → credentials, anything else →
 * KubeError with the server's message (or the network error's).
 */
export function apiError(error: unknown, subject: ApiCallSubject): Error {
  if (error instanceof KubeError || error instanceof UsageError) return error;
  const status = statusOf(error);
  const what = subject.object ?? subject.resource;
  if (status === 404) {
    return new UsageError(`${what} not found in namespace ${subject.namespace}`, { cause: error });
  }
  if (status === 403) {
    return new KubeError(
      `forbidden: cannot ${subject.verb} ${subject.resource} in namespace ${subject.namespace}` +
        ` (see manifests/rbac.yaml)`,
      { cause: error, status },
    );
  }
  if (status === 401) {
    return new KubeError(
      "the API server rejected the credentials (401 Unauthorized): check the kubeconfig user",
      { cause: error, status },
    );
  }
  const prefix = `cannot ${subject.verb} ${what} in namespace ${subject.namespace}`;
  if (!status) {
    const reason = networkReason(error);
    if (reason) {
      return new KubeError(`${prefix}: cannot reach the API server: ${reason}`, { cause: error });
    }
  }
  const detail = statusMessageOf(error) ??
    (error instanceof Error ? error.message.split("\n")[0] : String(error));
  return new KubeError(status ? `${prefix}: ${status} ${detail}` : `${prefix}: ${detail}`, {
    cause: error,
    status,
  });
}

/**
 * What a request that got no HTTP answer ran into. fetch reports every such failure as
 * "fetch failed" and keeps the reason (ECONNREFUSED, a TLS or DNS error) in its cause chain.
 */
export function networkReason(error: unknown): string | undefined {
  let reason: string | undefined;
  for (let e = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e.message && e.message !== "fetch failed") reason = e.message.split("\n")[0];
  }
  // Deno's cause repeats the URL and the layers: "error sending request for url (…): client
  // error (Connect): tcp connect error: Connection refused (os error 111)".
  if (reason) {
    reason = reason.replace(/^error sending request for url \([^)]*\): /, "")
      .replace(/^client error \(Connect\): /, "");
  }
  return error instanceof TypeError && error.message === "fetch failed"
    ? reason ?? "the connection failed"
    : undefined;
}
