/**
 * A small pool of tunnels to one agent. Streams are spread over the pool so one TCP
 * connection's head-of-line blocking and one WebSocket's throughput are not the ceiling;
 * a tunnel that closes is replaced in the background, with backoff.
 */
import { HandshakeError } from "../tunnel/handshake.ts";
import type { OpenOptions, OpenRequest, Tunnel, TunnelStream } from "../tunnel/types.ts";

/** How the pool reaches its agent and speaks to it. */
export interface TunnelPoolOptions {
  /** How many tunnels to keep open. */
  size: number;
  /**
   * Opens one tunnel to the agent (a port-forward WebSocket plus the handshake in practice;
   * the agent supervisor's connect, which may move the pool to a new agent).
   */
  connect: () => Promise<Tunnel>;
  /** Called with one line whenever the pool changes state worth telling the user. */
  log?: (line: string) => void;
  /** How long `open` waits for a tunnel when none is up, in milliseconds. */
  waitMs?: number;
  /** Told of every tunnel as it joins the pool, the first and each replacement. */
  onTunnel?: (tunnel: Tunnel) => void;
  /**
   * Told once if the agent refuses a handshake (wrong token, another protocol version) after
   * start: the pool connects no more tunnels, as each would be refused too.
   */
  onRefused?: (error: HandshakeError) => void;
}

const BACKOFF_MIN_MS = 100;
/**
 * The first tunnel is dialed the moment the agent's pod runs, usually a little before the
 * agent listens: it is retried at once and then soon, as every retry of it is a wait the user
 * sees.
 */
const START_RETRY_MIN_MS = 20;
/**
 * Kept short: while the API server restarts, the first retry after it is back should come
 * within a couple of seconds, and a few dozen failed dials a minute cost it nothing.
 */
const BACKOFF_MAX_MS = 2_000;

/** Keeps `size` tunnels to one agent and opens streams on the least loaded one. */
export class TunnelPool {
  #tunnels: Tunnel[] = [];
  /** Tunnels going away: no new streams, already replaced, left to finish their streams. */
  readonly #retired = new Set<Tunnel>();
  #stopped = false;
  #waiters: Array<() => void> = [];
  #lastError: unknown;
  /** The agent's refusal of a handshake: no tunnel is connected after it. */
  #refusal: HandshakeError | undefined;
  readonly #agreed = Promise.withResolvers<string>();

  constructor(readonly options: TunnelPoolOptions) {}

  /**
   * Opens the first tunnel (retrying while the agent is still starting, up to `deadlineMs`),
   * then fills the rest of the pool in the background.
   */
  async start(deadlineMs: number): Promise<void> {
    const until = Date.now() + deadlineMs;
    let delay = 0;
    for (;;) {
      try {
        this.#add(await this.options.connect());
        break;
      } catch (err) {
        // Only an agent not reached yet is worth another try: one that refused the handshake
        // (another version, say) would refuse it again until the deadline.
        if (this.#stopped || refusal(err) || Date.now() + delay >= until) throw err;
        await sleep(delay);
        delay = Math.min(Math.max(delay * 2, START_RETRY_MIN_MS), 1_000);
      }
    }
    for (let i = 1; i < this.options.size; i++) this.#refill();
  }

  /** The agent's version, once it has accepted the handshake of a tunnel. */
  get agreed(): Promise<string> {
    return this.#agreed.promise;
  }

  /** Whether {@link close} was called: opens that fail from now on fail because of it. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Tunnels currently up. */
  get size(): number {
    return this.#tunnels.length;
  }

  /** Opens a stream on the least loaded tunnel, waiting briefly if none is up. */
  async open(request: OpenRequest, options?: OpenOptions): Promise<TunnelStream> {
    for (;;) {
      const tunnel = this.#leastLoaded() ?? await this.#waitForTunnel();
      if (tunnel.accepting) return await tunnel.open(request, options);
      // Going away (its stream ids used up, or the agent draining it): it keeps its streams
      // until they end, and a new tunnel takes its place for new ones now.
      this.#retire(tunnel);
    }
  }

  /** Stops giving `tunnel` new streams and connects a replacement. */
  #retire(tunnel: Tunnel): void {
    if (!this.#tunnels.includes(tunnel)) return;
    this.#tunnels = this.#tunnels.filter((t) => t !== tunnel);
    this.options.log?.("tunnel to the agent is going away; connecting another");
    this.#retired.add(tunnel);
    this.#refill();
  }

  /**
   * Tells the agent, on every tunnel up, that the session is over, and waits up to `ms` for
   * it to close them as it exits: a port-forward closed at once from this end may drop what
   * was just sent.
   */
  async endSession(reason: string, ms = 2_000): Promise<void> {
    // Stopping from here on: the tunnels the agent closes are not replaced.
    this.#stopped = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled(this.#tunnels.map((t) => t.endSession(reason).then(() => t.closed))),
      new Promise((resolve) => (timer = setTimeout(resolve, ms))),
    ]);
    clearTimeout(timer);
  }

  /** Closes every tunnel and stops reconnecting. */
  close(): void {
    this.#stopped = true;
    for (const t of this.#tunnels) t.close("relay is stopping");
    this.#tunnels = [];
    for (const wake of this.#waiters.splice(0)) wake();
  }

  #add(tunnel: Tunnel): void {
    if (this.#stopped) {
      tunnel.close("relay is stopping");
      return;
    }
    this.#tunnels.push(tunnel);
    this.options.onTunnel?.(tunnel);
    for (const wake of this.#waiters.splice(0)) wake();
    // The handshake settles before the tunnel closes, so a refusal is known by then.
    tunnel.handshake.then(
      () => this.#agreed.resolve(tunnel.peerVersion),
      (err) => this.#refused(err),
    ).then(() => tunnel.closed).finally(() => {
      this.#tunnels = this.#tunnels.filter((t) => t !== tunnel);
      // A retired tunnel was replaced when it started going away.
      if (this.#retired.delete(tunnel)) return;
      if (!this.#stopped && !this.#refusal) {
        const why = tunnel.closeReason;
        this.options.log?.(`tunnel to the agent closed${why ? ` (${why})` : ""}; reconnecting`);
        this.#refill();
      }
    });
  }

  /** Reconnects one tunnel in the background, backing off while the agent can't be reached. */
  async #refill(): Promise<void> {
    let delay = BACKOFF_MIN_MS;
    while (!this.#stopped && !this.#refusal && this.#tunnels.length < this.options.size) {
      try {
        this.#add(await this.options.connect());
        return;
      } catch (err) {
        this.#lastError = err;
        if (this.#refused(err)) return;
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  /** Takes note of an agent's refusal in `err`, if it is one; says whether it was. */
  #refused(err: unknown): boolean {
    const answer = refusal(err);
    if (!answer) return false;
    this.#lastError = answer;
    if (this.#refusal) return true;
    this.#refusal = answer;
    for (const wake of this.#waiters.splice(0)) wake();
    this.options.onRefused?.(answer);
    return true;
  }

  /**
   * The open tunnel with the fewest streams, preferring those that accept new ones; one that
   * is closing is never picked.
   */
  #leastLoaded(): Tunnel | undefined {
    let best: Tunnel | undefined;
    for (const t of this.#tunnels) {
      if (t.closeReason !== null) continue;
      if (best && best.accepting && !t.accepting) continue;
      if (best && !best.accepting && t.accepting) {
        best = t;
        continue;
      }
      if (!best || t.streamCount < best.streamCount) best = t;
    }
    return best;
  }

  async #waitForTunnel(): Promise<Tunnel> {
    const waitMs = this.options.waitMs ?? 10_000;
    const until = Date.now() + waitMs;
    while (!this.#stopped && !this.#refusal && Date.now() < until) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          resolve();
        };
        // A wait that times out leaves the list, which a long outage would otherwise grow.
        const timer = setTimeout(() => {
          this.#waiters = this.#waiters.filter((w) => w !== wake);
          resolve();
        }, until - Date.now());
        this.#waiters.push(wake);
      });
      const t = this.#leastLoaded();
      if (t) return t;
    }
    const why = this.#lastError instanceof Error ? `: ${this.#lastError.message}` : "";
    throw new Error(`no tunnel to the agent is up${why}`);
  }
}

/** `err` if the agent itself refused the handshake: every other try would get the same answer. */
function refusal(err: unknown): HandshakeError | undefined {
  return err instanceof HandshakeError && err.answered ? err : undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
