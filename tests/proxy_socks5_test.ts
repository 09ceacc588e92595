/**
 * lib/proxy/socks5.ts: the SOCKS5 handshake's parsers and replies (RFC 1928, RFC 1929), the
 * UDP request header, and a fuzz of the parsers with arbitrary bytes.
 */
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  encodeDatagram,
  encodeReply,
  parseCredentials,
  parseDatagram,
  parseGreeting,
  parseRequest,
  REPLY,
  replyForFailure,
  SocksError,
} from "../lib/proxy/socks5.ts";
import { formatIPv6, parseIPv6 } from "../lib/net/address.ts";

const bytes = (...values: number[]) => Uint8Array.of(...values);
const ascii = (text: string) => [...new TextEncoder().encode(text)];

/** A CONNECT (1) or UDP ASSOCIATE (3) request for a domain name. */
function domainRequest(command: number, name: string, port: number): Uint8Array {
  return bytes(5, command, 0, 3, name.length, ...ascii(name), port >> 8, port & 0xff);
}

Deno.test("socks5: a greeting lists the methods the client offers", () => {
  assertEquals(parseGreeting(bytes(5, 2, 0, 2)), { methods: [0, 2], length: 4 });
  assertEquals(parseGreeting(bytes(5, 2, 0)), undefined, "incomplete");
  assertEquals(parseGreeting(bytes(5)), undefined, "incomplete");
  const error = assertThrows(() => parseGreeting(bytes(4, 1, 0)), SocksError);
  assertEquals(error.message, "SOCKS version 4, expected 5");
});

Deno.test("socks5: username/password (RFC 1929), in pieces and whole", () => {
  const whole = bytes(1, 5, ...ascii("alice"), 6, ...ascii("s3cret"), 0xaa);
  assertEquals(parseCredentials(whole), { user: "alice", password: "s3cret", length: 14 });
  for (let cut = 0; cut < 14; cut++) {
    assertEquals(parseCredentials(whole.subarray(0, cut)), undefined, `cut at ${cut}`);
  }
  assertThrows(() => parseCredentials(bytes(5, 1, 0x61, 1, 0x62)), SocksError);
});

Deno.test("socks5: CONNECT to a name, an IPv4 and an IPv6 address", () => {
  assertEquals(parseRequest(domainRequest(1, "payments.shop.svc", 8080)), {
    command: "connect",
    destination: { host: "payments.shop.svc", port: 8080 },
    length: 7 + 17,
  });
  assertEquals(parseRequest(bytes(5, 1, 0, 1, 10, 96, 0, 10, 0, 53))?.destination, {
    host: "10.96.0.10",
    port: 53,
  });
  const v6 = parseIPv6("fd00::1")!;
  assertEquals(parseRequest(bytes(5, 1, 0, 4, ...v6, 1, 187))?.destination, {
    host: "fd00::1",
    port: 443,
  });
  assertEquals(
    parseRequest(domainRequest(3, "kube-dns.kube-system", 53))?.command,
    "udp-associate",
  );
});

Deno.test("socks5: bad requests are refused with the RFC's reply code", () => {
  const code = (request: Uint8Array) => assertThrows(() => parseRequest(request), SocksError).reply;
  assertEquals(code(bytes(5, 2, 0, 1, 1, 2, 3, 4, 0, 80)), REPLY.commandNotSupported, "BIND");
  assertEquals(code(bytes(5, 9, 0, 1, 1, 2, 3, 4, 0, 80)), REPLY.commandNotSupported);
  assertEquals(code(bytes(5, 1, 0, 2, 1, 2, 3, 4, 0, 80)), REPLY.addressTypeNotSupported);
  assertEquals(code(domainRequest(1, "bad name!", 80)), REPLY.hostUnreachable);
  assertEquals(code(bytes(5, 1, 0, 3, 0, 0, 80)), REPLY.hostUnreachable, "an empty name");
  assertEquals(code(bytes(4, 1, 0, 1, 1, 2, 3, 4, 0, 80)), REPLY.generalFailure);
});

Deno.test("socks5: replies carry the bound address, 0.0.0.0:0 when none matters", () => {
  assertEquals([...encodeReply(REPLY.succeeded)], [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  assertEquals(
    [...encodeReply(REPLY.succeeded, { host: "127.0.0.1", port: 40000 })],
    [5, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40],
  );
  assertEquals([...encodeReply(REPLY.hostUnreachable)].slice(0, 2), [5, 4]);
  assertEquals(
    [...encodeReply(REPLY.succeeded, { host: "::1", port: 1 })],
    [5, 0, 0, 4, ...parseIPv6("::1")!, 0, 1],
  );
});

Deno.test("socks5: each OPEN_RESULT failure has its reply code", () => {
  assertEquals(replyForFailure("no-such-host"), REPLY.hostUnreachable);
  assertEquals(replyForFailure("timeout"), REPLY.hostUnreachable);
  assertEquals(replyForFailure("unreachable"), REPLY.networkUnreachable);
  assertEquals(replyForFailure("refused"), REPLY.refused);
  assertEquals(replyForFailure("denied"), REPLY.notAllowed);
  assertEquals(replyForFailure("forbidden"), REPLY.notAllowed);
  assertEquals(replyForFailure("error"), REPLY.generalFailure);
  assertEquals(replyForFailure(undefined), REPLY.generalFailure, "no tunnel, say");
});

Deno.test("socks5: UDP datagrams carry the request header; fragments and junk are told apart", () => {
  const dns = bytes(0xab, 0xcd, 1, 0);
  const header = [0, 0, 0, 3, 20, ...ascii("kube-dns.kube-system"), 0, 53];
  assertEquals(parseDatagram(bytes(...header, ...dns)), {
    fragment: 0,
    destination: { host: "kube-dns.kube-system", port: 53 },
    payload: dns,
  });
  assertEquals(parseDatagram(bytes(0, 0, 1, 1, 1, 2, 3, 4, 0, 53, 9))?.fragment, 1);
  assertEquals(parseDatagram(bytes(0, 0, 0, 1, 1, 2)), undefined, "truncated");
  assertEquals(parseDatagram(bytes(0, 0, 0, 9, 1, 2, 3, 4, 0, 53)), undefined, "bad ATYP");
  assertEquals(parseDatagram(bytes(1, 0, 0, 1, 1, 2, 3, 4, 0, 53)), undefined, "RSV not 0");
  const reply = encodeDatagram({ host: "kube-dns.kube-system", port: 53 }, dns);
  assertEquals([...reply], [...header, ...dns]);
});

// ---- fuzz -------------------------------------------------------------------------------

/**
 * What every parser promises for any input: undefined (wait for more), a value that took at
 * most the bytes given, or a SocksError; and the same answer for just the bytes it took.
 */
function checkParser(
  parse: (bytes: Uint8Array) => { length: number } | undefined,
  input: Uint8Array,
): void {
  let parsed: { length: number } | undefined;
  try {
    parsed = parse(input);
  } catch (error) {
    assert(error instanceof SocksError, `not a SocksError: ${error}`);
    assert(Object.values(REPLY).includes(error.reply));
    return;
  }
  if (parsed === undefined) return;
  assert(parsed.length > 0 && parsed.length <= input.length, `length ${parsed.length}`);
  assertEquals(parse(input.subarray(0, parsed.length)), parsed);
  // One byte short is never a whole message.
  let shorter: unknown;
  try {
    shorter = parse(input.subarray(0, parsed.length - 1));
  } catch {
    shorter = undefined;
  }
  assertEquals(shorter, undefined);
}

const socksLike = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  // Mostly well-formed: the right version and a plausible command and address type.
  fc.tuple(
    fc.constantFrom(5, 1),
    fc.integer({ min: 0, max: 4 }),
    fc.integer({ min: 0, max: 1 }),
    fc.integer({ min: 0, max: 5 }),
    fc.uint8Array({ maxLength: 270 }),
  ).map(([v, c, r, a, rest]) => bytes(v, c, r, a, ...rest)),
);

Deno.test("socks5 fuzz: greeting, credentials and request parsers on arbitrary bytes", () => {
  fc.assert(
    fc.property(socksLike, (input) => {
      checkParser(parseGreeting, input);
      checkParser(parseCredentials, input);
      checkParser(parseRequest, input);
      const datagram = parseDatagram(input);
      if (datagram) assert(datagram.payload.length <= input.length);
    }),
    { numRuns: 2_000 },
  );
});

const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?$/);
const destination = fc.record({
  host: fc.oneof(
    fc.ipV4(),
    fc.ipV6().map((text) => formatIPv6(parseIPv6(text)!)),
    fc.array(label, { minLength: 1, maxLength: 5 }).map((labels) => labels.join(".")),
  ),
  port: fc.integer({ min: 0, max: 65_535 }),
}).map(({ host, port }) => ({ host, port })); // a plain object, as the parser makes

Deno.test("socks5 fuzz: what a reply or a datagram header encodes parses back the same", () => {
  fc.assert(
    fc.property(destination, fc.uint8Array({ maxLength: 64 }), (to, payload) => {
      const datagram = parseDatagram(encodeDatagram(to, payload));
      assertEquals(datagram, { fragment: 0, destination: to, payload });
      // A reply's address is a request's address, after its 3 leading bytes.
      const reply = encodeReply(REPLY.succeeded, to);
      const request = parseRequest(bytes(5, 1, 0, ...reply.subarray(3)));
      assertEquals(request?.destination, to);
    }),
    { numRuns: 1_000 },
  );
});
