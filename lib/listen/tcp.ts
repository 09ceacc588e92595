/** A local TCP listener that hands each accepted connection to a callback. */
import { AcceptBackoff } from "../net/accept_backoff.ts";
import { closeQuietly } from "../net/socket.ts";
import { bindError } from "./bind_error.ts";

/** Receives one accepted connection; the listener closes it once the returned promise settles. */
export type ConnectionHandler = (conn: Deno.TcpConn) => void | Promise<void>;

/** Where a listener should bind. */
export interface BindAddress {
  hostname: string;
  /** 0 picks a free port; {@link TcpListener.port} tells which. */
  port: number;
}

/**
 * One bound TCP socket. Binding happens in {@link TcpListener.bind}, before any cluster
 * work; accepting starts only when {@link serve} is called.
 */
export class TcpListener {
  readonly #listener: Deno.TcpListener;
  readonly #open = new Set<Deno.TcpConn>();
  #closed = false;

  private constructor(listener: Deno.TcpListener) {
    this.#listener = listener;
  }

  /** Binds now; a busy or missing address throws a UsageError naming it. */
  static bind(address: BindAddress): TcpListener {
    try {
      return new TcpListener(
        Deno.listen({ hostname: address.hostname, port: address.port, transport: "tcp" }),
      );
    } catch (error) {
      throw bindError(error, address.hostname, address.port, "tcp");
    }
  }

  /** The address bound. */
  get hostname(): string {
    return this.#listener.addr.hostname;
  }

  /** The port bound (the chosen one when 0 was asked for). */
  get port(): number {
    return this.#listener.addr.port;
  }

  /**
   * Accepts until {@link close}, giving each connection to `onConnection`; resolves then.
   * A handler that throws only loses its own connection.
   */
  async serve(onConnection: ConnectionHandler, onError?: (error: unknown) => void): Promise<void> {
    const backoff = new AcceptBackoff();
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
        backoff.succeeded();
      } catch (error) {
        if (this.#closed) return;
        // Out of file descriptors and the like: report, pause, keep accepting.
        const { report, pause } = backoff.failed();
        if (report) onError?.(error);
        await pause();
        continue;
      }
      if (this.#closed) {
        closeQuietly(conn);
        return;
      }
      this.#open.add(conn);
      void this.#handle(conn, onConnection, onError);
    }
  }

  async #handle(
    conn: Deno.TcpConn,
    onConnection: ConnectionHandler,
    onError?: (e: unknown) => void,
  ) {
    try {
      conn.setNoDelay(true);
      await onConnection(conn);
    } catch (error) {
      onError?.(error);
    } finally {
      this.#open.delete(conn);
      closeQuietly(conn);
    }
  }

  /** Connections accepted and not yet finished. */
  get connectionCount(): number {
    return this.#open.size;
  }

  /** Stops accepting and closes the socket and every connection still open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#listener);
    for (const conn of this.#open) closeQuietly(conn);
    this.#open.clear();
  }
}
