/**
 * Helpers for the WebSocket client tests: frames as a server sends them, and a raw server
 * that answers the upgrade by hand and then sends whatever bytes a test wants.
 */

/** What a server sends: an unmasked frame, with knobs to break the rules. */
export function serverFrame(
  opcode: number,
  payload: Uint8Array,
  options: { fin?: boolean; rsv?: number; mask?: boolean; longLength?: boolean } = {},
): Uint8Array {
  const length = payload.length;
  const form = options.longLength ? 127 : length < 126 ? length : length < 65536 ? 126 : 127;
  const extra = form === 126 ? 2 : form === 127 ? 8 : 0;
  const maskBytes = options.mask ? 4 : 0;
  const out = new Uint8Array(2 + extra + maskBytes + length);
  out[0] = ((options.fin ?? true) ? 0x80 : 0) | ((options.rsv ?? 0) << 4) | opcode;
  out[1] = (options.mask ? 0x80 : 0) | form;
  const view = new DataView(out.buffer);
  if (form === 126) view.setUint16(2, length);
  if (form === 127) view.setBigUint64(2, BigInt(length));
  out.set(payload, 2 + extra + maskBytes);
  return out;
}
/** A ByteTransport in memory: reads what a test queued, records what was written. */
export class MemoryTransport {
  readonly written: Uint8Array[] = [];
  closed = false;
  #chunks: Uint8Array[];

  constructor(chunks: Uint8Array[]) {
    this.#chunks = [...chunks];
  }

  read(): Promise<Uint8Array | null> {
    return Promise.resolve(this.#chunks.shift() ?? null);
  }

  write(bytes: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new Error("closed"));
    this.written.push(bytes.slice());
    return Promise.resolve();
  }

  close(): void {
    this.closed = true;
  }
}

/** A client frame, unmasked. */
export interface ClientFrame {
  opcode: number;
  fin: boolean;
  payload: Uint8Array;
}

/** Cuts a client's byte stream into frames (unmasking them); what is left over stays. */
export class ClientFrameReader {
  #buffered = new Uint8Array(0);

  /** Frames completed by `chunk`. */
  push(chunk: Uint8Array): ClientFrame[] {
    const joined = new Uint8Array(this.#buffered.length + chunk.length);
    joined.set(this.#buffered);
    joined.set(chunk, this.#buffered.length);
    const frames: ClientFrame[] = [];
    let at = 0;
    for (;;) {
      if (joined.length - at < 2) break;
      if (!(joined[at + 1] & 0x80)) throw new Error("an unmasked client frame");
      let length = joined[at + 1] & 0x7f;
      let head = 2;
      const view = new DataView(joined.buffer, joined.byteOffset + at);
      if (length === 126) {
        if (joined.length - at < 4) break;
        [length, head] = [view.getUint16(2), 4];
      } else if (length === 127) {
        if (joined.length - at < 10) break;
        [length, head] = [Number(view.getBigUint64(2)), 10];
      }
      if (joined.length - at < head + 4 + length) break;
      const key = joined.subarray(at + head, at + head + 4);
      const payload = joined.slice(at + head + 4, at + head + 4 + length);
      for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
      frames.push({ opcode: joined[at] & 0x0f, fin: (joined[at] & 0x80) !== 0, payload });
      at += head + 4 + length;
    }
    this.#buffered = joined.slice(at);
    return frames;
  }
}

/** One connection to a RawWebSocketServer, past its 101 answer. */
export interface RawPeer {
  conn: Deno.Conn;
  /** The upgrade request's head, as text. */
  request: string;
  /** The next frame the client sends; null at its end of the stream. */
  nextFrame(): Promise<ClientFrame | null>;
  send(bytes: Uint8Array): Promise<void>;
}

/**
 * A TCP server on loopback that answers each upgrade with `answer` (by default a proper 101
 * choosing `protocol`) and then hands the connection to `onPeer`.
 */
export function startRawWebSocketServer(
  onPeer: (peer: RawPeer) => Promise<void> | void,
  options: { protocol?: string; answer?: (key: string) => string } = {},
): { url: URL; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  void (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      void serve(conn).catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed by the test
        }
      });
    }
  })().catch(() => {});

  async function serve(conn: Deno.Conn): Promise<void> {
    let head = "";
    const buffer = new Uint8Array(64 * 1024);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) return;
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const key = /sec-websocket-key: *(\S+)/i.exec(head)?.[1] ?? "";
    const answer = options.answer?.(key) ?? await switchingProtocols(key, options.protocol);
    await conn.write(new TextEncoder().encode(answer));
    const reader = new ClientFrameReader();
    const frames: ClientFrame[] = [];
    await onPeer({
      conn,
      request: head,
      send: async (bytes) => {
        for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
      },
      async nextFrame() {
        while (frames.length === 0) {
          const n = await conn.read(buffer).catch(() => null);
          if (n === null) return null;
          frames.push(...reader.push(buffer.subarray(0, n)));
        }
        return frames.shift()!;
      },
    });
  }

  return {
    url: new URL(`ws://127.0.0.1:${listener.addr.port}/socket`),
    close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // already closed
        }
      }
    },
  };
}

/** A correct 101 answer to `key`. */
export async function switchingProtocols(key: string, protocol?: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${accept}\r\n` +
    (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") + "\r\n";
}
