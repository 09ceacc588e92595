/**
 * A session's pings: the ones it asked the round trip of (Tunnel.ping), and the keep-alive
 * that pings after a silence and gives the peer up when a ping goes unanswered.
 */
import { FrameType } from "./frame.ts";
import type { FrameWriter } from "./writer.ts";

export class KeepAlive {
  readonly #pings = new Map<
    string,
    { start: number; resolve: (ms: number) => void; reject: (e: unknown) => void }
  >();
  #timer?: ReturnType<typeof setInterval>;
  #heard = true;
  #outstanding = false;

  /** Every `intervalMs` of silence a ping; `onSilent` when one went unanswered (0: never). */
  constructor(
    private readonly writer: FrameWriter,
    intervalMs: number,
    private readonly onSilent: () => void,
  ) {
    if (intervalMs > 0) this.#timer = setInterval(() => this.#tick(), intervalMs);
  }

  /** Something arrived from the peer: it is alive. */
  heard(): void {
    this.#heard = true;
  }

  /** Sends a ping and resolves with its round trip in milliseconds. */
  ping(): Promise<number> {
    const nonce = crypto.getRandomValues(new Uint8Array(8));
    return new Promise((resolve, reject) => {
      this.#pings.set(hex(nonce), { start: performance.now(), resolve, reject });
      this.writer.send({ type: FrameType.PING, streamId: 0, nonce });
    });
  }

  /** The peer's PONG. */
  pong(nonce: Uint8Array): void {
    this.#outstanding = false;
    const key = hex(nonce);
    const ping = this.#pings.get(key);
    if (!ping) return;
    this.#pings.delete(key);
    ping.resolve(performance.now() - ping.start);
  }

  /** The tunnel closed: no more pings; the ones waiting fail with `error`. */
  stop(error: Error): void {
    clearInterval(this.#timer);
    for (const ping of this.#pings.values()) ping.reject(error);
    this.#pings.clear();
  }

  #tick(): void {
    if (this.#heard) {
      this.#heard = false;
      this.#outstanding = false;
      return;
    }
    if (this.#outstanding) return this.onSilent();
    this.#outstanding = true;
    this.writer.send({ type: FrameType.PING, streamId: 0, nonce: new Uint8Array(8) });
  }
}

function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}
