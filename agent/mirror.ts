/**
 * Mirroring one caller's connection: the agent carries it to the app as a pass-through
 * (the app answers as always) and copies what the caller sends to a stream to the client,
 * whose replies are read and dropped. The caller never waits for the client: the copy is
 * queued up to MIRROR_BACKLOG (and the agent's copies together up to MIRROR_BACKLOG_TOTAL) and
 * given up beyond it, never the caller's own bytes.
 */
import { MIRROR_BACKLOG, MIRROR_BACKLOG_TOTAL, MIRROR_DROPPED } from "../lib/contract.ts";
import type { BufferPool } from "../lib/net/buffer_pool.ts";
import { closeQuietly, ConnChannel } from "../lib/net/socket.ts";
import { splice } from "../lib/net/splice.ts";
import type { ByteChannel } from "../lib/net/types.ts";
import type { OpenRequest, Tunnel, TunnelStream } from "../lib/tunnel/types.ts";

/**
 * Carries `caller` to the app at `app`, copying its bytes to a new stream on `tunnel` that
 * opens as `request` (the caller's address and the mirrored port).
 */
export async function mirrorConnection(
  caller: Deno.TcpConn,
  app: { hostname: string; port: number },
  request: OpenRequest,
  tunnel: Tunnel,
  budget: MirrorBudget,
  buffers?: BufferPool,
): Promise<void> {
  let upstream: Deno.TcpConn;
  try {
    upstream = await Deno.connect({ ...app, transport: "tcp" });
    upstream.setNoDelay(true);
  } catch {
    // The app stopped listening: the caller sees what it would have seen without relay.
    closeQuietly(caller);
    return;
  }
  const copy = new MirrorCopy(tunnel.open(request), budget);
  await splice(
    new TappedChannel(new ConnChannel(caller, buffers), copy),
    new ConnChannel(upstream, buffers),
  );
  copy.end();
}

/** A channel whose reads are also offered to a copy. */
class TappedChannel implements ByteChannel {
  constructor(private readonly inner: ByteChannel, private readonly copy: MirrorCopy) {}

  async read(): Promise<Uint8Array | null> {
    const chunk = await this.inner.read();
    if (chunk === null) this.copy.end();
    else this.copy.offer(chunk.slice());
    return chunk;
  }
  write(chunk: Uint8Array): Promise<void> {
    return this.inner.write(chunk);
  }
  closeWrite(): Promise<void> | void {
    return this.inner.closeWrite();
  }
  abort(reason: string): void {
    this.copy.end();
    this.inner.abort(reason);
  }
  onFailure(callback: (error: Error) => void): void {
    this.inner.onFailure?.(callback);
  }
}

/** The bytes all of an agent's mirrored copies have queued: one per agent. */
export class MirrorBudget {
  queued = 0;
  constructor(readonly limit = MIRROR_BACKLOG_TOTAL) {}
}

/** The copy of one connection, written to its stream as the stream takes it. */
export class MirrorCopy {
  readonly #queue: Uint8Array[] = [];
  #queued = 0;
  #ended = false;
  #dropped = false;
  #wake: (() => void) | undefined;

  constructor(stream: Promise<TunnelStream>, private readonly budget: MirrorBudget) {
    void this.#pump(stream);
  }

  /** Queues `chunk` for the copy; past the backlog the copy is given up instead. */
  offer(chunk: Uint8Array): void {
    if (this.#ended || this.#dropped) return;
    const { budget } = this;
    if (
      this.#queued + chunk.length > MIRROR_BACKLOG ||
      budget.queued + chunk.length > budget.limit
    ) {
      this.#drop();
    } else {
      this.#queue.push(chunk);
      this.#queued += chunk.length;
      budget.queued += chunk.length;
    }
    this.#wake?.();
  }

  #drop(): void {
    this.#dropped = true;
    this.#queue.length = 0;
    this.budget.queued -= this.#queued;
    this.#queued = 0;
  }

  /** The caller has sent everything (or its connection ended). */
  end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  async #pump(opening: Promise<TunnelStream>): Promise<void> {
    let stream: TunnelStream;
    try {
      stream = await opening;
    } catch {
      // The client could not deliver the copy (nothing listens locally): it said why.
      this.#drop();
      return;
    }
    // The local server's replies are read and dropped, so it is never blocked on them.
    void (async () => {
      try {
        while (await stream.read() !== null) { /* discarded */ }
      } catch {
        // reset: the copy ends below
      }
    })();
    try {
      for (;;) {
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#queued -= chunk.length;
          this.budget.queued -= chunk.length;
          await stream.write(chunk);
          continue;
        }
        if (this.#dropped) {
          stream.abort(MIRROR_DROPPED);
          return;
        }
        if (this.#ended) {
          await stream.closeWrite();
          return;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
      }
    } catch {
      this.#drop();
      stream.abort("mirror copy failed");
    }
  }
}
