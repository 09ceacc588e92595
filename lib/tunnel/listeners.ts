/**
 * A session's LISTEN traffic (reverse forwards): listens it asked of its peer and awaits the
 * answer to, and listeners it keeps for its peer until the tunnel closes.
 */
import type { IncomingMode } from "../contract.ts";
import { FrameType } from "./frame.ts";
import {
  type KeptListener,
  type ListenHandler,
  type ListenOptions,
  OpenError,
  type OpenFailure,
  type OpenRequest,
  type Tunnel,
} from "./types.ts";
import type { FrameWriter } from "./writer.ts";

export class Listeners {
  readonly #asked = new Map<
    number,
    { resolve: (mode: IncomingMode) => void; reject: (e: unknown) => void }
  >();
  readonly #kept = new Set<KeptListener>();
  #closed = false;

  constructor(
    private readonly writer: FrameWriter,
    private readonly onListen: ListenHandler | undefined,
  ) {}

  /**
   * Sends LISTEN as `id`; resolves with the mode in effect when the peer listens, rejects
   * with its OpenError.
   */
  ask(id: number, request: OpenRequest, how: ListenOptions): Promise<IncomingMode> {
    return new Promise((resolve, reject) => {
      this.#asked.set(id, { resolve, reject });
      try {
        this.writer.send({ type: FrameType.LISTEN, streamId: id, request, ...how });
      } catch (e) {
        this.#asked.delete(id);
        reject(new OpenError("error", e instanceof Error ? e.message : String(e)));
      }
    });
  }

  /** The peer's LISTEN_RESULT for `id`. */
  answered(id: number, result: "ok" | OpenFailure, mode: IncomingMode, message: string): void {
    const asked = this.#asked.get(id);
    if (!asked) return;
    this.#asked.delete(id);
    if (result === "ok") asked.resolve(mode);
    else asked.reject(new OpenError(result, message || `listen failed: ${result}`));
  }

  /** The peer's LISTEN as `id`: listen through the handler, and answer. */
  requested(id: number, request: OpenRequest, how: ListenOptions, tunnel: Tunnel): void {
    const answer = (result: "ok" | OpenFailure, message: string, mode: IncomingMode = "listen") =>
      this.writer.send({ type: FrameType.LISTEN_RESULT, streamId: id, result, mode, message });
    if (!this.onListen) return answer("forbidden", "this end accepts no reverse forwards");
    this.onListen(request, how, tunnel).then(
      (listener) => {
        if (this.#closed) return listener.close();
        this.#kept.add(listener);
        answer("ok", "", listener.mode);
      },
      (error) => {
        if (this.#closed) return;
        answer(
          error instanceof OpenError ? error.code : "error",
          error instanceof Error ? error.message : String(error),
        );
      },
    );
  }

  /** The tunnel closed: asks fail with `error`, kept listeners close. */
  close(error: Error): void {
    this.#closed = true;
    for (const asked of this.#asked.values()) asked.reject(error);
    this.#asked.clear();
    for (const listener of this.#kept) listener.close();
    this.#kept.clear();
  }
}
