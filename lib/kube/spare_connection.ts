/**
 * Connections to the API server dialed before a port-forward needs them: the TCP and TLS
 * handshakes (two round trips, and on the first one the process's one-time TLS set-up) then
 * happen while the agent's pod starts, and the port-forward that follows the pod's Running
 * costs only its upgrade. More than one, because the first upgrade often comes before the
 * agent listens (its pod runs a few tens of milliseconds before it does), and the retry
 * should not wait for a handshake either.
 */
import { type ApiEndpoint, dialApiServer } from "./api_socket.ts";
import type { ByteTransport } from "./websocket_client.ts";

/**
 * Older spares are closed unused: kube-apiserver gives a connection 32 s to send its request
 * headers (ReadHeaderTimeout), and a proxy before it may give less.
 */
export const SPARE_MAX_AGE_MS = 20_000;

/** How the spares are dialed; tests pass their own. */
export type SpareDialer = (endpoint: ApiEndpoint, signal: AbortSignal) => Promise<ByteTransport>;

interface Spare {
  /** The connection, with its endpoint's identity (server and TLS material). */
  dialed: Promise<{ key: string; transport: ByteTransport }>;
  stop: AbortController;
  expiry: ReturnType<typeof setTimeout>;
}

/** Keeps up to a number of spare connections while asked to, oldest taken first. */
export class SpareConnections {
  #spares: Spare[] = [];
  #wanted = 0;
  #closed = false;

  /**
   * `endpoint` says where spares go, with current credentials; undefined for a connection
   * that cannot use one (through a kubeconfig's proxy).
   */
  constructor(
    private readonly endpoint: () => Promise<ApiEndpoint | undefined>,
    private readonly dial: SpareDialer = dialApiServer,
    private readonly options: { maxAgeMs?: number } = {},
  ) {}

  /** Spares there are, dialed or being dialed. */
  get count(): number {
    return this.#spares.length;
  }

  /** Dials spares up to `count` now, and a new one each time one is taken, until told to stop. */
  refill(count: number): void {
    if (this.#closed) return;
    this.#wanted = count;
    this.#fill();
  }

  /** Dials no more spares; those there are stay until taken or too old. */
  stopRefilling(): void {
    this.#wanted = 0;
  }

  /**
   * The oldest spare, once dialed, if it is for `endpoint`; undefined when there is none, its
   * dial failed or it is for other TLS material (refreshed credentials: it is closed), and
   * the caller dials afresh.
   */
  async take(endpoint: ApiEndpoint, signal?: AbortSignal): Promise<ByteTransport | undefined> {
    const spare = this.#spares.shift();
    if (!spare) return undefined;
    clearTimeout(spare.expiry);
    this.#fill();
    let giveUp = () => {};
    const aborted = new Promise<never>((_, reject) => {
      giveUp = () => {
        discard(spare);
        reject(signal!.reason);
      };
    });
    aborted.catch(() => {});
    signal?.addEventListener("abort", giveUp, { once: true });
    if (signal?.aborted) giveUp();
    try {
      const { key, transport } = await Promise.race([spare.dialed, aborted]);
      if (key === keyOf(endpoint)) return transport;
      transport.close();
      return undefined;
    } catch (error) {
      if (signal?.aborted) throw error;
      return undefined;
    } finally {
      signal?.removeEventListener("abort", giveUp);
    }
  }

  /** Closes every spare, and dials none after. */
  close(): void {
    this.#closed = true;
    this.#wanted = 0;
    for (const spare of this.#spares.splice(0)) {
      clearTimeout(spare.expiry);
      discard(spare);
    }
  }

  #fill(): void {
    while (!this.#closed && this.#spares.length < this.#wanted) this.#dialOne();
  }

  #dialOne(): void {
    const stop = new AbortController();
    const expiry = setTimeout(
      () => this.#drop(spare),
      this.options.maxAgeMs ?? SPARE_MAX_AGE_MS,
    );
    // Spares alone must not keep relay running.
    Deno.unrefTimer(expiry);
    const spare: Spare = {
      dialed: this.endpoint().then(async (endpoint) => {
        if (!endpoint) throw new Error("no spare connection for this endpoint");
        return { key: keyOf(endpoint), transport: await this.dial(endpoint, stop.signal) };
      }),
      stop,
      expiry,
    };
    this.#spares.push(spare);
    // One that cannot be dialed is let go; its taker would dial afresh anyway.
    spare.dialed.catch(() => this.#drop(spare));
  }

  #drop(spare: Spare): void {
    const at = this.#spares.indexOf(spare);
    if (at < 0) return;
    this.#spares.splice(at, 1);
    clearTimeout(spare.expiry);
    discard(spare);
  }
}

function discard(spare: Spare): void {
  spare.stop.abort();
  spare.dialed.then(({ transport }) => transport.close(), () => {});
}

function keyOf(endpoint: ApiEndpoint): string {
  const { tls } = endpoint;
  return JSON.stringify([endpoint.server.origin, tls.ca, tls.cert, tls.key, tls.serverName]);
}
