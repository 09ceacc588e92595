/**
 * lib/proxy/http_proxy.ts and auth.ts: request heads, CONNECT and absolute-URI requests
 * rewritten for the origin, error responses, Basic credentials, and a fuzz of the head parser.
 */
import fc from "fast-check";
import { assert, assertEquals, assertMatch, assertThrows } from "./assert.ts";
import {
  errorResponse,
  HttpProxyError,
  parseAuthority,
  parseRequestHead,
  proxyRequestOf,
  type RequestHead,
  statusForFailure,
} from "../lib/proxy/http_proxy.ts";
import { credentialsMatch, parseBasic } from "../lib/proxy/auth.ts";

const encode = (text: string) => new TextEncoder().encode(text);
const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

function head(text: string): RequestHead {
  const parsed = parseRequestHead(encode(text));
  if (!parsed) throw new Error("incomplete head");
  return parsed;
}

/** The rewritten request head a forwarded request becomes, as text. */
function forwarded(text: string): { host: string; port: number; head: string } {
  const request = proxyRequestOf(head(text));
  if (request.kind !== "forward") throw new Error(`not forwarded: ${request.kind}`);
  return { ...request.destination, head: decode(request.head) };
}

Deno.test("http: a head is parsed once whole, with CRLF or bare LF line ends", () => {
  const text = "GET http://a.b/ HTTP/1.1\r\nHost: a.b\r\nX-One:  1 \r\n\r\nBODY";
  assertEquals(parseRequestHead(encode(text.slice(0, -6))), undefined);
  assertEquals(head(text), {
    method: "GET",
    target: "http://a.b/",
    version: "HTTP/1.1",
    headers: [["Host", "a.b"], ["X-One", "1"]],
    length: text.length - 4,
  });
  assertEquals(head("\r\nGET http://a.b/ HTTP/1.0\nHost: a.b\n\n").headers, [["Host", "a.b"]]);
});

Deno.test("http: malformed heads are 400, other HTTP versions 505", () => {
  const status = (text: string) =>
    assertThrows(() => parseRequestHead(encode(text)), HttpProxyError).status;
  assertEquals(status("GET http://a/\r\n\r\n"), 400);
  assertEquals(status("G(T http://a/ HTTP/1.1\r\n\r\n"), 400);
  assertEquals(status("GET http://a/\x01 HTTP/1.1\r\n\r\n"), 400);
  assertEquals(status("GET http://a/ HTTP/1.1\r\nno colon\r\n\r\n"), 400);
  assertEquals(status("GET http://a/ HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n"), 400);
  assertEquals(status("GET http://a/ HTTP/1.1\r\nA: 1\rB: 2\r\n\r\n"), 400, "a bare CR");
  assertEquals(status("PRI * HTTP/2.0\r\n\r\n"), 505);
});

Deno.test("http: CONNECT names host:port; an IPv6 address in brackets", () => {
  assertEquals(proxyRequestOf(head("CONNECT payments.shop.svc:443 HTTP/1.1\r\n\r\n")), {
    kind: "connect",
    destination: { host: "payments.shop.svc", port: 443 },
  });
  assertEquals(parseAuthority("[fd00::1]:8443"), { host: "fd00::1", port: 8443 });
  assertEquals(parseAuthority("Echo:9000"), { host: "echo", port: 9000 });
  for (const bad of ["echo", "echo:", "echo:0", "echo:70000", "[nope]:1", "a b:1", "::1:80"]) {
    const error = assertThrows(() => parseAuthority(bad), HttpProxyError);
    assertEquals(error.status, 400, bad);
  }
});

Deno.test("http: an absolute URI becomes origin form with the URI's Host and Connection: close", () => {
  const request = forwarded(
    "POST http://payments.shop.svc:8080/a/../b?q=1#frag HTTP/1.1\r\n" +
      "Host: wrong.example\r\n" +
      "Proxy-Authorization: Basic eDp5\r\n" +
      "Proxy-Connection: keep-alive\r\n" +
      "Connection: keep-alive, X-Hop\r\n" +
      "X-Hop: dropped\r\n" +
      "Keep-Alive: timeout=5\r\n" +
      "TE: trailers\r\n" +
      "Upgrade: h2c\r\n" +
      "Transfer-Encoding: chunked\r\n" +
      "X-Kept: yes\r\n\r\n",
  );
  assertEquals(request.host, "payments.shop.svc");
  assertEquals(request.port, 8080);
  assertEquals(
    request.head,
    "POST /a/../b?q=1 HTTP/1.1\r\n" +
      "Host: payments.shop.svc:8080\r\n" +
      "Transfer-Encoding: chunked\r\n" +
      "X-Kept: yes\r\n" +
      "Connection: close\r\n\r\n",
  );
  assertEquals(forwarded("GET http://echo HTTP/1.0\r\n\r\n").head.split("\r\n").slice(0, 2), [
    "GET / HTTP/1.0",
    "Host: echo",
  ]);
  assertEquals(
    forwarded("GET http://echo?x HTTP/1.1\r\n\r\n").head.split("\r\n")[0],
    "GET /?x HTTP/1.1",
  );
  const v6 = forwarded("GET http://[fd00::1]:81/ HTTP/1.1\r\n\r\n");
  assertEquals([v6.host, v6.port], ["fd00::1", 81]);
  assertEquals(forwarded("GET HTTP://Echo.Shop/ HTTP/1.1\r\n\r\n").host, "echo.shop");
});

Deno.test("http: what is not a proxy request is 400, saying what would be", () => {
  const refused = (text: string) => assertThrows(() => proxyRequestOf(head(text)), HttpProxyError);
  assertMatch(refused("GET /path HTTP/1.1\r\nHost: a\r\n\r\n").message, /not a proxy request/);
  assertMatch(refused("GET https://a/ HTTP/1.1\r\n\r\n").message, /CONNECT/);
  assertMatch(refused("GET http://u:p@a/ HTTP/1.1\r\n\r\n").message, /user information/);
  assertEquals(refused("GET http://[zz]/ HTTP/1.1\r\n\r\n").status, 400);
});

Deno.test("http: refused opens map to 502, 504 and 403 with an RFC 9209 Proxy-Status", () => {
  assertEquals(statusForFailure("no-such-host"), { status: 502, proxyStatus: "dns_error" });
  assertEquals(statusForFailure("refused").status, 502);
  assertEquals(statusForFailure("unreachable").status, 502);
  assertEquals(statusForFailure("timeout"), { status: 504, proxyStatus: "connection_timeout" });
  assertEquals(statusForFailure("denied").status, 403);
  assertEquals(statusForFailure(undefined).status, 502);
  const response = decode(errorResponse(502, 'cannot resolve "x"\u0007', "dns_error"));
  assertMatch(response, /^HTTP\/1\.1 502 Bad Gateway\r\n/);
  assertMatch(
    response,
    /\r\nProxy-Status: relay; error=dns_error; details="cannot resolve \\"x\\"\?"\r\n/,
  );
  assertMatch(response, /\r\nConnection: close\r\n/);
  const body = response.slice(response.indexOf("\r\n\r\n") + 4);
  assertMatch(response, new RegExp(`Content-Length: ${encode(body).length}\r\n`));
  const auth = decode(errorResponse(407, "Proxy-Authorization: Basic is required", "x"));
  assertMatch(auth, /^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
  assertMatch(auth, /\r\nProxy-Authenticate: Basic realm="relay"\r\n/);
});

Deno.test("auth: Basic credentials split at the first colon; compared whole", () => {
  assertEquals(parseBasic(`Basic ${btoa("alice:pa:ss")}`), { user: "alice", password: "pa:ss" });
  assertEquals(parseBasic(`basic   ${btoa("a:")}`), { user: "a", password: "" });
  assertEquals(parseBasic(`Bearer ${btoa("a:b")}`), undefined);
  assertEquals(parseBasic(`Basic ${btoa("nocolon")}`), undefined);
  assertEquals(parseBasic("Basic !!!"), undefined);
  const alice = { user: "alice", password: "s3cret" };
  assert(credentialsMatch(alice, "alice", "s3cret"));
  assert(!credentialsMatch(alice, "alice", "s3cre"));
  assert(!credentialsMatch(alice, "alice", "s3cret!"));
  assert(!credentialsMatch(alice, "bob", "s3cret"));
  assert(!credentialsMatch(alice, "", ""));
});

// ---- fuzz -------------------------------------------------------------------------------

/** Parsing any bytes: wait for more, a head within the bytes, or an HttpProxyError. */
function checkHead(input: Uint8Array): void {
  let parsed: RequestHead | undefined;
  try {
    parsed = parseRequestHead(input);
  } catch (error) {
    assert(error instanceof HttpProxyError, `not an HttpProxyError: ${error}`);
    assert([400, 505].includes(error.status));
    return;
  }
  if (!parsed) return;
  assert(parsed.length > 0 && parsed.length <= input.length);
  assertEquals(parseRequestHead(input.subarray(0, parsed.length)), parsed);
  try {
    const request = proxyRequestOf(parsed);
    if (request.kind === "forward") {
      const text = decode(request.head);
      assert(text.endsWith("\r\nConnection: close\r\n\r\n"));
      assert(!/\r\nproxy-/i.test(text), text);
      assert(request.destination.port >= 1 && request.destination.port <= 65_535);
    }
  } catch (error) {
    assert(error instanceof HttpProxyError && error.status === 400, `${error}`);
  }
}

const headerName = fc.constantFrom("Host", "Proxy-Authorization", "Connection", "X-A", "Te");
const headLike = fc.tuple(
  fc.constantFrom("GET", "CONNECT", "POST", "G T", ""),
  fc.oneof(
    fc.webUrl(),
    fc.constantFrom("a:1", "[::1]:443", "/x", "*", "http://a:99999/"),
    fc.string(),
  ),
  fc.constantFrom("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "x"),
  fc.array(fc.tuple(headerName, fc.string({ maxLength: 20 })), { maxLength: 5 }),
  fc.constantFrom("\r\n", "\n"),
).map(([method, target, version, headers, eol]) =>
  encode(
    `${method} ${target} ${version}${eol}` +
      headers.map(([name, value]) => `${name}: ${value}${eol}`).join("") + eol,
  )
);

Deno.test("http fuzz: the head parser and the rewrite on arbitrary and request-like bytes", () => {
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 200 }), headLike), checkHead),
    { numRuns: 3_000 },
  );
});
