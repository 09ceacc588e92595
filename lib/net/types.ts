/**
 * The shapes bytes move in, shared by the client, the agent and the tunnel: a ByteChannel
 * (read and write one chunk at a time) and a Duplex (the same as Web Streams).
 */

/** The transport protocol of a connection or session. */
export type Protocol = "tcp" | "udp";

/**
 * A byte stream read and written one chunk at a time, without Web Streams: how a splice
 * moves a connection's bytes (docs/MEASUREMENTS.md, "Channels instead of Web Streams").
 */
export interface ByteChannel {
  /** The next chunk, or null once the far side has finished sending (EOF/FIN). */
  read(): Promise<Uint8Array | null>;
  /** Resolves when the chunk is taken (sent or queued within the flow-control limits). */
  write(chunk: Uint8Array): Promise<void>;
  /** Nothing more will be written: a half-close (FIN); reading goes on. */
  closeWrite(): Promise<void> | void;
  /** Abandon both directions at once (a socket closed, a stream reset). */
  abort(reason: string): void;
  /**
   * Registers a callback for the channel failing by itself (a stream reset by its peer or
   * its tunnel), so a splice learns of it while it is waiting only on the other side.
   */
  onFailure?(callback: (error: Error) => void): void;
}

/**
 * A transport that puts a header of its own before each message (the port-forward's channel
 * byte): a writer that leaves `bytes` free in front of its chunks lets it write the header
 * there instead of copying the chunk.
 */
export interface HeadroomWriter {
  /** Header bytes the transport puts before each message. */
  readonly bytes: number;
  /** Writes `chunk`, whose buffer has `bytes` free bytes just before it, for the header. */
  write(chunk: Uint8Array): Promise<void>;
}

/** A pair of Web Streams carrying bytes: a TCP connection, a WebSocket, a tunnel stream. */
export interface Duplex {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  /** The same bytes as a ByteChannel, when the duplex has one: splices use it. */
  readonly channel?: ByteChannel;
  /** Set by a message-framed transport (see HeadroomWriter). */
  readonly headroom?: HeadroomWriter;
  /**
   * True when the writable is done with a chunk's bytes once its write() resolves (it sent
   * or copied them), so the writer may fill that buffer again.
   */
  readonly chunkFreeAfterWrite?: boolean;
  /**
   * Where whoever splices this duplex counts the bytes (aToB: into it) and says it ended, with
   * the reason if it failed; set by an OpenHandler whose connections are counted (reverse
   * forwards).
   */
  readonly tracking?: { counts: { aToB: number; bToA: number }; end(failure?: string): void };
}
