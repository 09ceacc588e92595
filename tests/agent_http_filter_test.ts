/**
 * The agent's HTTP filter for a stolen port, on loopback: on one keep-alive connection,
 * requests whose path or header matches go to the client's side and the rest to the app,
 * bodies (sized and chunked) intact, answers in order; a connection that is not HTTP goes to
 * the app untouched. tests/e2e/steal_mirror_test.ts proves it in a real pod.
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import { compileFilter, filterConnection, matches } from "../agent/http_filter.ts";
import { ConnChannel } from "../lib/net/socket.ts";
import type { Tunnel, TunnelStream } from "../lib/tunnel/types.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An HTTP server answering `<name> <method> <path> <body bytes>`. */
function namedServer(name: string) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const body = await req.arrayBuffer();
    return new Response(`${name} ${req.method} ${new URL(req.url).pathname} ${body.byteLength}`);
  });
}

/** A tunnel whose streams are plain connections to `port` (the client's local server). */
function fakeTunnel(port: number, opened: string[]): Tunnel {
  return {
    open: async (request) => {
      opened.push(`${request.host}:${request.port}`);
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      return new ConnChannel(conn) as unknown as TunnelStream;
    },
  } as Tunnel;
}

/** Reads one response with a Content-Length body from `conn`, buffering what follows. */
class ResponseReader {
  #buf = "";
  constructor(private readonly conn: Deno.Conn) {}
  async next(): Promise<string> {
    for (;;) {
      const end = this.#buf.indexOf("\r\n\r\n");
      if (end >= 0) {
        const length = Number(/content-length: (\d+)/i.exec(this.#buf.slice(0, end))?.[1] ?? 0);
        if (this.#buf.length >= end + 4 + length) {
          const body = this.#buf.slice(end + 4, end + 4 + length);
          this.#buf = this.#buf.slice(end + 4 + length);
          return body;
        }
      }
      const chunk = new Uint8Array(65536);
      const n = await this.conn.read(chunk);
      if (n === null) throw new Error(`connection ended; had ${JSON.stringify(this.#buf)}`);
      this.#buf += dec.decode(chunk.subarray(0, n));
    }
  }
}

async function withFilteredPort(
  filter: { header?: string; path?: string },
  appPort: number,
  laptopPort: number,
  use: (port: number, opened: string[]) => Promise<void>,
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const opened: string[] = [];
  const tunnel = fakeTunnel(laptopPort, opened);
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      served.push(
        filterConnection(
          conn,
          { hostname: "127.0.0.1", port: appPort },
          { protocol: "tcp", host: "127.0.0.1", port: 80 },
          tunnel,
          compileFilter(filter),
          () => {},
        ),
      );
    }
  })();
  try {
    await use(listener.addr.port, opened);
  } finally {
    listener.close();
    await accepting.catch(() => {});
    await Promise.all(served);
  }
}

Deno.test("one keep-alive connection: matching requests go to the client, the rest to the app", async () => {
  await using app = namedServer("app");
  await using laptop = namedServer("laptop");
  await withFilteredPort(
    { path: "^/api", header: "^x-relay: yes$" },
    app.addr.port,
    laptop.addr.port,
    async (port, opened) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const responses = new ResponseReader(conn);
      const ask = async (request: string) => {
        await conn.write(enc.encode(request));
        return await responses.next();
      };
      const host = "Host: web\r\n";
      deepStrictEqual(
        await ask(`GET /api/users HTTP/1.1\r\n${host}\r\n`),
        "laptop GET /api/users 0",
      );
      deepStrictEqual(await ask(`GET /home HTTP/1.1\r\n${host}\r\n`), "app GET /home 0");
      deepStrictEqual(
        await ask(`POST /other HTTP/1.1\r\n${host}x-relay: yes\r\nContent-Length: 5\r\n\r\nhello`),
        "laptop POST /other 5",
      );
      deepStrictEqual(
        await ask(
          `POST /upload HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n`,
        ),
        "app POST /upload 7",
      );
      // Two requests in one write (pipelined) are answered in order.
      await conn.write(
        enc.encode(`GET /api/a HTTP/1.1\r\n${host}\r\nGET /b HTTP/1.1\r\n${host}\r\n`),
      );
      deepStrictEqual([await responses.next(), await responses.next()], [
        "laptop GET /api/a 0",
        "app GET /b 0",
      ]);
      conn.close();
      // One stream to the client for the whole connection, not one per request.
      deepStrictEqual(opened, ["127.0.0.1:80"]);
    },
  );
});

Deno.test("a connection that is not HTTP goes to the app as it came", async () => {
  const echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of echo) {
      (async () => {
        const buf = new Uint8Array(1024);
        for (let n; (n = await conn.read(buf)) !== null;) await conn.write(buf.subarray(0, n));
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  try {
    await withFilteredPort({ path: "." }, echo.addr.port, 1, async (port, opened) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(enc.encode("PING redis\r\n"));
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      deepStrictEqual(dec.decode(buf.subarray(0, n ?? 0)), "PING redis\r\n");
      conn.close();
      deepStrictEqual(opened, []);
    });
  } finally {
    echo.close();
  }
});

Deno.test("filters match the path (an absolute URI's too) and header lines as Name: value", () => {
  const filter = compileFilter({ path: "^/api/", header: "^X-Team: payments$" });
  ok(matches(filter, "/api/v1?x=1", []));
  ok(matches(filter, "http://web/api/v1", []));
  ok(!matches(filter, "/apis", ["Host: web"]));
  ok(matches(filter, "/", ["Host: web", "X-Team: payments"]));
  ok(!matches(compileFilter({ path: "^/x" }), "/", ["X-Team: payments"]));
});

Deno.test("filters ignore case and the spacing around a header's colon, as mirrord's do", () => {
  const filter = compileFilter({ header: "^x-dev: me$" });
  ok(matches(filter, "/", ["X-Dev: me"]));
  ok(matches(filter, "/", ["x-dev:me"]));
  ok(matches(filter, "/", ["x-dev:   me  "]));
  ok(!matches(filter, "/", ["x-dev: meme"]));
  ok(matches(compileFilter({ path: "^/api" }), "/API/v1", []));
});

Deno.test("a matching request whose local port does not answer gets 502 saying so, as from a proxy", async () => {
  await using app = namedServer("app");
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = probe.addr.port;
  probe.close();
  await withFilteredPort({ path: "^/api" }, app.addr.port, closedPort, async (port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(enc.encode("GET /api/x HTTP/1.1\r\nHost: web\r\n\r\n"));
    let text = "";
    const buf = new Uint8Array(4096);
    for (let n; (n = await conn.read(buf)) !== null;) text += dec.decode(buf.subarray(0, n));
    conn.close();
    ok(text.startsWith("HTTP/1.1 502 Bad Gateway\r\n"), text);
    ok(/relay: relay's local port did not answer/.test(text), text);
  });
});
