/** The echo server fixture, run as a child process on free loopback ports. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createHash } from "node:crypto";
import { closeQuietly, writeAll } from "./fixtures/echo/io.ts";
import { patternByte } from "./fixtures/echo/pattern.ts";

const LOOPBACK = "127.0.0.1";
const SERVER = new URL("./fixtures/echo_server.ts", import.meta.url).pathname;

/** A running echo server and the port of each of its services (`greeting/tcp`, `echo/udp`, …). */
interface EchoServer {
  ports: Map<string, number>;
  port(service: string): number;
  stop(): Promise<void>;
}

const SERVICE_COUNT = 8;

async function startEchoServer(podName: string): Promise<EchoServer> {
  const flags = [
    "greeting-port",
    "echo-port",
    "udp-echo-port",
    "hash-port",
    "source-port",
    "flood-port",
    "http-port",
    "sink-port",
  ]
    .flatMap((flag) => [`--${flag}`, "0"]);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", SERVER, "--address", LOOPBACK, ...flags],
    env: { HOSTNAME: podName },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ports = new Map<string, number>();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  try {
    while (ports.size < SERVICE_COUNT) {
      const { value, done } = await lines.read();
      if (done) throw new Error("echo server exited before listening");
      pending += value;
      const complete = pending.split("\n");
      pending = complete.pop() ?? "";
      for (const line of complete) {
        const match = /^echo: (\S+) (tcp|udp) listening on .*:(\d+)$/.exec(line);
        if (match) ports.set(`${match[1]}/${match[2]}`, Number(match[3]));
      }
    }
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    throw error;
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  const draining = (async () => {
    while (!(await lines.read()).done) { /* discard */ }
  })();
  return {
    ports,
    port(service) {
      const port = ports.get(service);
      if (port === undefined) throw new Error(`no ${service} port`);
      return port;
    },
    async stop() {
      child.kill("SIGTERM");
      const status = await child.status;
      await draining;
      assertEquals(status.code, 0, "exits cleanly on SIGTERM");
    },
  };
}

async function withEchoServer(
  body: (server: EchoServer) => void | Promise<void>,
  podName = "echo-pod-1",
) {
  const server = await startEchoServer(podName);
  try {
    await body(server);
  } finally {
    await server.stop();
  }
}

async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  return new Uint8Array(await new Response(conn.readable).arrayBuffer());
}

/** Writes `data` then half-closes, concurrently with reading everything back. */
async function sendAndCollect(port: number, data: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: LOOPBACK, port });
  try {
    const writing = (async () => {
      for (let written = 0; written < data.length;) {
        written += await conn.write(data.subarray(written, written + 64 * 1024));
      }
      await conn.closeWrite();
    })();
    const [received] = await Promise.all([readToEnd(conn), writing]);
    return received;
  } finally {
    try {
      conn.close();
    } catch {
      // Already closed by the readable reaching its end.
    }
  }
}

/** One line, without its newline; fails if the peer closes first or none comes within 10 s. */
async function readLine(conn: Deno.Conn): Promise<string> {
  const buffer = new Uint8Array(256);
  let filled = 0;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, 10_000);
  try {
    while (!buffer.subarray(0, filled).includes(0x0a)) {
      const n = await conn.read(buffer.subarray(filled));
      if (n === null) throw new Error("closed before a whole line");
      filled += n;
    }
  } catch (error) {
    throw timedOut ? new Error("no whole line within 10 s") : error;
  } finally {
    clearTimeout(timer);
  }
  return new TextDecoder().decode(buffer.subarray(0, buffer.indexOf(0x0a)));
}

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 65_536) {
    crypto.getRandomValues(bytes.subarray(offset, Math.min(offset + 65_536, length)));
  }
  return bytes;
}

Deno.test("echo: logs one line per listener and exits cleanly on SIGTERM", async () => {
  await withEchoServer((server) => {
    assertEquals(
      [...server.ports.keys()].sort(),
      [
        "echo/tcp",
        "echo/udp",
        "flood/udp",
        "greeting/tcp",
        "hash/tcp",
        "http/tcp",
        "sink/tcp",
        "source/tcp",
      ],
    );
  });
});

Deno.test("echo: greeting names the pod and the local address, then echoes through half-close", async () => {
  await withEchoServer(async (server) => {
    const port = server.port("greeting/tcp");
    const received = new TextDecoder().decode(
      await sendAndCollect(port, new TextEncoder().encode("ping\nmore")),
    );
    assertEquals(received, `pod=echo-pod-7 addr=${LOOPBACK}:${port}\nping\nmore`);
  }, "echo-pod-7");
});

Deno.test("echo: 1 MiB through the pure echo port comes back byte for byte", async () => {
  await withEchoServer(async (server) => {
    const sent = randomBytes(1024 * 1024);
    const received = await sendAndCollect(server.port("echo/tcp"), sent);
    assertEquals(received.length, sent.length);
    assert(received.every((byte, i) => byte === sent[i]), "echoed bytes match");
  });
});

Deno.test("echo: hash port answers byte count and sha256 after the client's FIN", async () => {
  await withEchoServer(async (server) => {
    const sent = randomBytes(3 * 1024 * 1024 + 17);
    const reply = new TextDecoder().decode(await sendAndCollect(server.port("hash/tcp"), sent));
    const expected = createHash("sha256").update(sent).digest("hex");
    assertEquals(reply, `${sent.length} ${expected}\n`);
    const empty = new TextDecoder().decode(
      await sendAndCollect(server.port("hash/tcp"), new Uint8Array()),
    );
    assertEquals(empty, `0 ${createHash("sha256").digest("hex")}\n`);
  });
});

Deno.test("echo: source port sends exactly the requested bytes of the i mod 251 pattern", async () => {
  await withEchoServer(async (server) => {
    for (const size of [0, 1, 250, 251, 252, 1_000_003]) {
      const conn = await Deno.connect({ hostname: LOOPBACK, port: server.port("source/tcp") });
      await conn.write(new TextEncoder().encode(`${size}\n`));
      const received = await readToEnd(conn);
      assertEquals(received.length, size, `size ${size}`);
      assert(received.every((byte, i) => byte === patternByte(i)), `pattern for ${size}`);
    }
  });
});

Deno.test("echo: sink port answers the byte count once that many bytes arrived, without a FIN", async () => {
  await withEchoServer(async (server) => {
    for (const size of [0, 1, 40, 3 * 1024 * 1024 + 17]) {
      const conn = await Deno.connect({ hostname: LOOPBACK, port: server.port("sink/tcp") });
      try {
        // The count and the first bytes in one write, as a quick client sends them.
        const request = new TextEncoder().encode(`${size}\n`);
        const body = randomBytes(size);
        const first = new Uint8Array(request.length + Math.min(size, 100));
        first.set(request);
        first.set(body.subarray(0, 100), request.length);
        await writeAll(conn, first);
        await writeAll(conn, body.subarray(100));
        assertEquals(await readLine(conn), `${size}`, `size ${size}`);
      } finally {
        closeQuietly(conn);
      }
    }
    const bad = await Deno.connect({ hostname: LOOPBACK, port: server.port("sink/tcp") });
    try {
      await writeAll(bad, new TextEncoder().encode("lots\n"));
      assertEquals(await readLine(bad), "error: expected a byte count line");
    } finally {
      closeQuietly(bad);
    }
  });
});

Deno.test("echo: UDP echo returns datagrams of 1, 1,400 and 65,507 bytes unchanged", async () => {
  await withEchoServer(async (server) => {
    const socket = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
    try {
      const target = {
        transport: "udp" as const,
        hostname: LOOPBACK,
        port: server.port("echo/udp"),
      };
      for (const size of [1, 1400, 65_507]) {
        const sent = randomBytes(size);
        await socket.send(sent, target);
        const [received] = await socket.receive(new Uint8Array(65_536));
        assertEquals(received.length, size);
        assert(received.every((byte, i) => byte === sent[i]), `datagram of ${size} echoed`);
      }
    } finally {
      socket.close();
    }
  });
});

Deno.test("echo: flood sends the requested number of sized, sequence-numbered datagrams", async () => {
  await withEchoServer(async (server) => {
    const socket = Deno.listenDatagram({ transport: "udp", hostname: LOOPBACK, port: 0 });
    const target = {
      transport: "udp" as const,
      hostname: LOOPBACK,
      port: server.port("flood/udp"),
    };
    // A modest flood, so loopback's socket buffer holds it all even before we start reading.
    const count = 100;
    const size = 512;
    try {
      await socket.send(new TextEncoder().encode(`flood ${count} ${size}`), target);
      const sequence: number[] = [];
      while (sequence.length < count) {
        const [datagram] = await socket.receive();
        assertEquals(datagram.length, size);
        sequence.push(new DataView(datagram.buffer, datagram.byteOffset).getUint32(0));
      }
      assertEquals(sequence, Array.from({ length: count }, (_, i) => i));
    } finally {
      socket.close();
    }
  });
});
