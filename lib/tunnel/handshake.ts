/**
 * Opening a tunnel. The agent sends READY as soon as it is reached and the client sends HELLO
 * as soon as the upgrade is answered, so each end hears the other within half a round trip.
 * The client's streams follow its HELLO; the agent handles them only after checking it, and
 * its HELLO_OK or HELLO_ERR reaches the client's Session before anything else of the agent.
 */
import { VERSION } from "../version.ts";
import { PROTOCOL_VERSION, tokenDigest } from "../contract.ts";
import { describeError } from "../errors.ts";
import { channelOf } from "../net/channel.ts";
import type { ByteChannel, Duplex } from "../net/types.ts";
import { FrameDecoder } from "./decoder.ts";
import { frameName } from "./codec.ts";
import {
  type Frame,
  FrameError,
  FrameType,
  type HelloErrFrame,
  type HelloErrorCode,
} from "./frame.ts";
import { HandshakeError } from "./handshake_error.ts";
import { DEFAULT_STREAM_WINDOW } from "./defaults.ts";
import { Session } from "./session.ts";
import type { Tunnel, TunnelOptions } from "./types.ts";

export { HandshakeError, type HandshakeFailure } from "./handshake_error.ts";
import { FrameWriter } from "./writer.ts";

/** How long a peer may take over its part of the handshake, by default. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/** Options for openTunnel / acceptTunnel beyond the shared TunnelOptions. */
export interface HandshakeOptions extends TunnelOptions {
  /** Give up on a peer that has not completed the handshake after this long (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Datagrams queued per UDP stream for a slow reader before drops (default 256). */
  udpQueue?: number;
  /** Our version string as sent to the peer (default: lib/version.ts). */
  version?: string;
  /** Our tunnel protocol version (default PROTOCOL_VERSION; tests override it). */
  protocolVersion?: number;
  /** The first stream id this end uses (tests: to reach the end of the ids quickly). */
  firstStreamId?: number;
}

/** The client's side: it presents the session token. */
export interface ConnectOptions extends HandshakeOptions {
  token: string;
}

/** The agent's side: it holds only the token's digest (lib/contract.ts, tokenDigest). */
export interface AcceptOptions extends HandshakeOptions {
  tokenDigest: string;
}

/**
 * Client side: sends HELLO over `transport` at once and returns the tunnel as soon as the
 * agent's READY arrives, so the first streams follow HELLO without waiting a round trip for
 * the answer. The answer (HELLO_OK or HELLO_ERR) settles `tunnel.handshake`; a refusal closes
 * the tunnel, failing whatever was opened on it.
 */
export async function openTunnel(
  transport: Duplex,
  options: ConnectOptions,
): Promise<Tunnel> {
  const io = openIo(transport);
  const version = options.version ?? VERSION;
  const protocolVersion = options.protocolVersion ?? PROTOCOL_VERSION;
  const window = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
  const timeoutMs = options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  try {
    io.frameWriter.send({
      type: FrameType.HELLO,
      streamId: 0,
      protocolVersion,
      token: options.token,
      version,
      window,
    });
    const [ready, pending] = await firstFrame(io, timeoutMs);
    // An agent of an older protocol answers HELLO without a READY first.
    if (ready.type === FrameType.HELLO_ERR) throw refusal(ready, version, protocolVersion);
    if (ready.type !== FrameType.READY) {
      throw new HandshakeError("protocol", "the far end is not a relay agent (no READY)");
    }
    // A window of 0 would stall every write forever: no honest agent offers one.
    if (ready.window === 0) {
      throw new HandshakeError("protocol", "the relay agent offered a stream window of 0 bytes");
    }
    return new Session({
      role: "client",
      ...io,
      pending,
      peerVersion: "",
      receiveWindow: window,
      sendWindow: ready.window,
      options,
      answer: {
        check: (frame) => checkAnswer(frame, version, protocolVersion),
        timeoutMs,
      },
    });
  } catch (e) {
    await abandon(io);
    throw e;
  }
}

/** Client side: {@link openTunnel}, then the agent's answer; rejects with a HandshakeError. */
export async function connectTunnel(
  transport: Duplex,
  options: ConnectOptions,
): Promise<Tunnel> {
  const tunnel = await openTunnel(transport, options);
  await tunnel.handshake;
  return tunnel;
}

/** The agent's answer to HELLO: its version if it accepted, else the HandshakeError to fail with. */
function checkAnswer(answer: Frame, version: string, protocolVersion: number): string {
  if (answer.type === FrameType.HELLO_ERR) throw refusal(answer, version, protocolVersion);
  if (answer.type !== FrameType.HELLO_OK) {
    throw new HandshakeError(
      "protocol",
      `the relay agent sent ${frameName(answer.type)} before answering the handshake`,
    );
  }
  if (answer.protocolVersion !== protocolVersion) {
    throw new HandshakeError(
      "version",
      versionMismatch(version, protocolVersion, answer.version, answer.protocolVersion),
      answer.version,
    );
  }
  return answer.version;
}

function refusal(answer: HelloErrFrame, version: string, protocolVersion: number): HandshakeError {
  const agent = answer.version ? `relay agent ${answer.version}` : "the relay agent";
  const message = answer.code === "version"
    ? versionMismatch(version, protocolVersion, answer.version, answer.protocolVersion)
    : answer.code === "token"
    ? `${agent} refused the session token`
    : `${agent} refused the tunnel: ${answer.message}`;
  return new HandshakeError(answer.code, message, answer.version);
}

/**
 * Agent side: sends READY, awaits the client's HELLO on `transport`, checks it, answers and
 * returns the tunnel. Frames the client sent behind HELLO are handled only once it passed.
 */
export async function acceptTunnel(
  transport: Duplex,
  options: AcceptOptions,
): Promise<Tunnel> {
  const io = openIo(transport);
  const version = options.version ?? VERSION;
  const protocolVersion = options.protocolVersion ?? PROTOCOL_VERSION;
  const window = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
  try {
    io.frameWriter.send({ type: FrameType.READY, streamId: 0, window });
    const [hello, pending] = await firstFrame(io, options.handshakeTimeoutMs);
    if (hello.type !== FrameType.HELLO) {
      throw new HandshakeError("protocol", "the peer did not start with a relay handshake");
    }
    const refuse = (code: HelloErrorCode, message: string) => {
      // A peer without the token learns nothing about this end, its version included.
      const known = code !== "token";
      io.frameWriter.send({
        type: FrameType.HELLO_ERR,
        streamId: 0,
        code,
        protocolVersion: known ? protocolVersion : 0,
        version: known ? version : "",
        message: known ? message : "wrong session token",
      });
      return new HandshakeError(code, message, hello.version);
    };
    // The token first: only a peer that has it may learn whether the versions match.
    if (!sameSecret(await tokenDigest(hello.token), options.tokenDigest)) {
      throw refuse("token", `relay ${hello.version} presented a wrong session token`);
    }
    if (hello.protocolVersion !== protocolVersion) {
      throw refuse(
        "version",
        versionMismatch(hello.version, hello.protocolVersion, version, protocolVersion),
      );
    }
    if (hello.window === 0) throw refuse("other", "a stream window of 0 bytes");
    io.frameWriter.send({ type: FrameType.HELLO_OK, streamId: 0, protocolVersion, version });
    return new Session({
      role: "agent",
      ...io,
      pending,
      peerVersion: hello.version,
      receiveWindow: window,
      sendWindow: hello.window,
      options,
    });
  } catch (e) {
    await abandon(io);
    throw e;
  }
}

function versionMismatch(
  clientVersion: string,
  clientProtocol: number,
  agentVersion: string,
  agentProtocol: number,
): string {
  return `relay ${clientVersion} (tunnel protocol ${clientProtocol}) and relay agent ` +
    `${agentVersion} (tunnel protocol ${agentProtocol}) cannot talk to each other; ` +
    `use an agent image of the same version as relay`;
}

interface Io {
  reader: ByteChannel;
  frameWriter: FrameWriter;
  decoder: FrameDecoder;
}

/** The transport read and written as a channel: per chunk, no Web Streams when it has one. */
function openIo(transport: Duplex): Io {
  const channel = channelOf(transport);
  const framed = transport.headroom;
  const sink = {
    write: framed
      ? (batch: Uint8Array) => framed.write(batch)
      : (batch: Uint8Array) => channel.write(batch),
    close: async () => await channel.closeWrite(),
    abort: () => Promise.resolve(channel.abort("tunnel closed")),
  };
  const frameWriter = new FrameWriter(sink, {
    headroom: framed?.bytes ?? 0,
    chunkFreeAfterWrite: transport.chunkFreeAfterWrite,
  });
  return { reader: channel, frameWriter, decoder: new FrameDecoder() };
}

/** Reads until one whole frame arrives; returns it and any frames that came with it. */
async function firstFrame(io: Io, timeoutMs = HANDSHAKE_TIMEOUT_MS): Promise<[Frame, Frame[]]> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new HandshakeError("timeout", `no handshake within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([readFirst(io), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function readFirst(io: Io): Promise<[Frame, Frame[]]> {
  while (true) {
    let chunk: Uint8Array | null;
    try {
      chunk = await io.reader.read();
    } catch (e) {
      throw new HandshakeError("closed", `tunnel failed during the handshake: ${describeError(e)}`);
    }
    if (chunk === null) {
      throw new HandshakeError("closed", "tunnel closed during the handshake");
    }
    let frames: Frame[];
    try {
      frames = io.decoder.push(chunk);
    } catch (e) {
      const detail = e instanceof FrameError ? e.message : String(e);
      throw new HandshakeError("protocol", `the far end is not a relay peer: ${detail}`);
    }
    if (frames.length > 0) {
      return [frames[0], frames.slice(1)];
    }
  }
}

/** How long a refused peer gets to take our HELLO_ERR before the transport is cut. */
const FAREWELL_MS = 2000;

/** Sends what is queued (a HELLO_ERR) if the peer takes it soon, then closes the transport. */
async function abandon(io: Io): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const sent = await Promise.race([
    io.frameWriter.drained().then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), FAREWELL_MS))),
  ]);
  clearTimeout(timer);
  await io.frameWriter.close(!sent);
  // only now: aborting the channel closes the whole transport
  io.reader.abort("handshake failed");
}

/** Compares token digests without an early exit on the first differing byte. */
function sameSecret(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}
