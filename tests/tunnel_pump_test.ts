/** Splicing by read/write loops (pump.ts): what pipeTo used to guarantee, a loop must too. */
import { tokenDigest } from "../lib/contract.ts";
import { assertEquals } from "./assert.ts";
import { acceptTunnel, connectTunnel, type OpenHandler } from "../lib/tunnel/mod.ts";
import { ConnChannel, type Duplex, duplexPair, splice } from "../lib/net/mod.ts";

const TOKEN = "t";
const TOKEN_DIGEST = await tokenDigest(TOKEN);

const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

/** Settles with `promise`, or fails the test (instead of hanging it) if it never does. */
async function settles<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} never happened`)), 10_000);
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("pump: bytes and each direction's end pass both ways between two channels", async () => {
  const [a, aFar] = duplexPair();
  const [b, bFar] = duplexPair();
  const pumped = splice(a, b);
  const aWriter = aFar.writable.getWriter();
  const bWriter = bFar.writable.getWriter();
  const aReader = aFar.readable.getReader();
  const bReader = bFar.readable.getReader();
  await aWriter.write(text("to b"));
  assertEquals(untext((await bReader.read()).value!), "to b");
  await aWriter.close();
  assertEquals((await bReader.read()).done, true);
  // a has finished sending; b may still answer
  await bWriter.write(text("to a"));
  assertEquals(untext((await aReader.read()).value!), "to a");
  await bWriter.close();
  assertEquals((await aReader.read()).done, true);
  await pumped;
});

Deno.test("a stream reset while its socket idles, after the socket's other half has ended, still closes the socket", async () => {
  let far: Duplex | null = null;
  const capture: OpenHandler = () => {
    const toFar = new TransformStream<Uint8Array, Uint8Array>();
    const fromFar = new TransformStream<Uint8Array, Uint8Array>();
    far = { readable: toFar.readable, writable: fromFar.writable };
    return Promise.resolve({ readable: fromFar.readable, writable: toFar.writable });
  };
  const [a, b] = duplexPair();
  const [client, agent] = await Promise.all([
    connectTunnel(a, { token: "t" }),
    acceptTunnel(b, { tokenDigest: TOKEN_DIGEST, onOpen: capture }),
  ]);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const local = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const spliced = splice(
    new ConnChannel(await accepted),
    await client.open({ protocol: "tcp", host: "h", port: 1 }),
  );
  try {
    // The far end has finished sending: the local client reads EOF, its own half stays open.
    await far!.writable.close();
    assertEquals(await local.read(new Uint8Array(1)), null);
    // Then the far end fails while nothing is being sent either way. The splice is waiting on
    // the local socket alone, and must still hear of the reset and close it.
    await far!.readable.cancel(new Error("backend died"));
    await settles(spliced, "closing the idle socket");
  } finally {
    local.close();
    listener.close();
    client.close();
    agent.close();
    await Promise.all([client.closed, agent.closed]);
  }
});
