/**
 * The benchmark's load generator, run as its own process so the tool under test (relay,
 * kubectl) never shares an event loop or a heap with the client that loads it; for the
 * direct path it runs inside a pod's network namespace (`ip netns exec`).
 *
 *   deno run --allow-all --unstable-net scripts/bench/load.ts '<LoadRequest as JSON>'
 *
 * Prints one line of JSON (the scenario's result, with its own CPU seconds as `cpu_s`) on
 * stdout and exits 0; a failure that
 * prevents any measurement exits 1 with the reason on stderr. Targets are the echo image's
 * ports: pure echo (TCP 9000), source (TCP 9002), counting sink (TCP 9005), UDP echo (9000).
 */
import process from "node:process";
import { maxRateWithoutLoss, percentile } from "./stats.ts";

/** What to run, against which address. */
export type LoadRequest =
  | { scenario: "bulk"; host: string; port: number; bytes: number }
  | { scenario: "download"; host: string; port: number; bytes: number }
  | { scenario: "upload"; host: string; port: number; bytes: number }
  | { scenario: "connrate"; host: string; port: number; seconds: number; concurrency: number }
  | { scenario: "latency"; host: string; port: number; count: number; size: number }
  | { scenario: "concurrency"; host: string; port: number; connections: number; bytes: number }
  | { scenario: "hol"; host: string; port: number; bytes: number; pauseMs: number }
  | { scenario: "http"; host: string; port: number; count: number }
  | { scenario: "fetch"; host: string; port: number; count: number; bytes: number }
  | {
    scenario: "udp";
    host: string;
    port: number;
    rates: number[];
    stepSeconds: number;
    size: number;
  };

const CHUNK = 256 * 1024;
const MB = 1e6;
/** Longest one connection-rate connection may take before it counts as an error. */
const CONNECTION_TIMEOUT_MS = 10_000;

function connect(host: string, port: number): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname: host, port });
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** Reads exactly `n` bytes (into a scratch buffer); false if the peer closed first. */
async function readExactly(conn: Deno.Conn, n: number, scratch: Uint8Array): Promise<boolean> {
  let got = 0;
  while (got < n) {
    const r = await conn.read(scratch.subarray(0, Math.min(scratch.length, n - got)));
    if (r === null) return false;
    got += r;
  }
  return true;
}

/** Writes `bytes` in chunks while the echo comes back; MB/s each way. */
async function bulk(r: Extract<LoadRequest, { scenario: "bulk" }>) {
  const conn = await connect(r.host, r.port);
  conn.setNoDelay(true);
  const chunk = new Uint8Array(CHUNK).fill(0x5a);
  const start = performance.now();
  const writing = (async () => {
    for (let sent = 0; sent < r.bytes; sent += chunk.length) {
      await writeAll(conn, chunk.subarray(0, Math.min(chunk.length, r.bytes - sent)));
    }
    await conn.closeWrite();
  })();
  const ok = await readExactly(conn, r.bytes, new Uint8Array(CHUNK));
  await writing;
  const seconds = (performance.now() - start) / 1000;
  conn.close();
  if (!ok) throw new Error("the echo ended before every byte came back");
  return { bytes: r.bytes, seconds, mbps: r.bytes / MB / seconds };
}

/** Downloads `bytes` from the source port on one connection; MB/s. */
async function downloadOnce(r: Extract<LoadRequest, { scenario: "download" }>) {
  // Well inside runLoad's limit, so a crawling path ends with its count, not a kill.
  const { got, seconds } = await download(r.host, r.port, r.bytes, 300_000);
  if (got < r.bytes) throw new Error(`only ${got} of ${r.bytes} bytes arrived`);
  return { bytes: r.bytes, seconds, mbps: r.bytes / MB / seconds };
}

/**
 * Uploads `bytes` to the counting sink on one connection, timed until the sink says it has
 * them all (a write returning says only that a buffer on the way took them); MB/s.
 */
async function uploadOnce(r: Extract<LoadRequest, { scenario: "upload" }>) {
  const conn = await connect(r.host, r.port);
  const chunk = new Uint8Array(CHUNK).fill(0x5a);
  const start = performance.now();
  await writeAll(conn, new TextEncoder().encode(`${r.bytes}\n`));
  for (let sent = 0; sent < r.bytes; sent += chunk.length) {
    await writeAll(conn, chunk.subarray(0, Math.min(chunk.length, r.bytes - sent)));
  }
  const answer = new Uint8Array(64);
  let got = 0;
  while (!answer.subarray(0, got).includes(0x0a)) {
    const n = await conn.read(answer.subarray(got));
    if (n === null) break;
    got += n;
  }
  const seconds = (performance.now() - start) / 1000;
  conn.close();
  const line = new TextDecoder().decode(answer.subarray(0, got)).trim();
  if (line !== String(r.bytes)) throw new Error(`the sink answered ${JSON.stringify(line)}`);
  return { bytes: r.bytes, seconds, mbps: r.bytes / MB / seconds };
}

/** Open, 100 bytes, echo, close — by `concurrency` workers for `seconds`. */
async function connrate(r: Extract<LoadRequest, { scenario: "connrate" }>) {
  const payload = new Uint8Array(100).fill(0x61);
  const latencies: number[] = [];
  let errors = 0;
  let firstError = "";
  const deadline = performance.now() + r.seconds * 1000;
  const worker = async () => {
    const scratch = new Uint8Array(100);
    while (performance.now() < deadline) {
      const t0 = performance.now();
      let conn: Deno.TcpConn | undefined;
      // A connection the tool never answers (e.g. its in-cluster end ran out of file
      // descriptors) would hold its worker, and the run, forever: it becomes an error.
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          conn?.close();
        } catch { /* closed already */ }
      }, CONNECTION_TIMEOUT_MS);
      try {
        conn = await connect(r.host, r.port);
        await writeAll(conn, payload);
        if (!(await readExactly(conn, payload.length, scratch))) throw new Error("short echo");
        latencies.push(performance.now() - t0);
      } catch (error) {
        errors++;
        firstError ||= timedOut ? `no echo within ${CONNECTION_TIMEOUT_MS} ms` : String(error);
      } finally {
        clearTimeout(timer);
        try {
          if (!timedOut) conn?.close();
        } catch { /* closed already */ }
      }
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: r.concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  return {
    connections: latencies.length,
    errors,
    first_error: firstError || undefined,
    per_second: latencies.length / seconds,
    p50_ms: percentile(latencies, 50),
    p99_ms: percentile(latencies, 99),
  };
}

/**
 * Requests as a browser or a CLI makes them to an API: a fresh connection for each, one GET
 * with `Connection: close`; each timed from connect to the last byte of the answer.
 */
async function http(r: Extract<LoadRequest, { scenario: "http" }>) {
  const request = new TextEncoder().encode(
    `GET /api HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`,
  );
  const scratch = new Uint8Array(4096);
  const samples: number[] = [];
  let errors = 0;
  for (let i = 0; i < r.count; i++) {
    const t0 = performance.now();
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await connect(r.host, r.port);
      conn.setNoDelay(true);
      await writeAll(conn, request);
      // As a browser or curl does: the head, then Content-Length bytes of body; done.
      let answer = "";
      for (;;) {
        const end = answer.indexOf("\r\n\r\n");
        const length = Number(/content-length: *(\d+)/i.exec(answer)?.[1]);
        if (end >= 0 && answer.length >= end + 4 + length) break;
        const n = await conn.read(scratch);
        if (n === null) throw new Error(`closed mid-answer: ${answer.slice(0, 40)}`);
        answer += new TextDecoder().decode(scratch.subarray(0, n));
      }
      if (!answer.startsWith("HTTP/1.1 200")) throw new Error(`answer: ${answer.slice(0, 40)}`);
      samples.push(performance.now() - t0);
    } catch {
      errors++;
    } finally {
      try {
        conn?.close();
      } catch { /* closed already */ }
    }
  }
  return {
    requests: samples.length,
    errors,
    p50_ms: percentile(samples, 50),
    p99_ms: percentile(samples, 99),
  };
}

/**
 * Downloads of a few MiB, a fresh connection each (a page's assets, a log, a dump): each timed
 * from connect to its last byte, so a window that starts small and grows shows here.
 */
async function fetchFresh(r: Extract<LoadRequest, { scenario: "fetch" }>) {
  const samples: number[] = [];
  let errors = 0;
  for (let i = 0; i < r.count; i++) {
    const t0 = performance.now();
    const { got } = await download(r.host, r.port, r.bytes, 30_000).catch(() => ({ got: 0 }));
    if (got < r.bytes) errors++;
    else samples.push(performance.now() - t0);
  }
  return {
    fetches: samples.length,
    errors,
    p50_ms: percentile(samples, 50),
    p99_ms: percentile(samples, 99),
  };
}

/** Ping-pong of `size` bytes on one established connection. */
async function latency(r: Extract<LoadRequest, { scenario: "latency" }>) {
  const conn = await connect(r.host, r.port);
  conn.setNoDelay(true);
  const ping = new Uint8Array(r.size).fill(0x70);
  const scratch = new Uint8Array(r.size);
  const samples: number[] = [];
  const warmup = Math.min(200, r.count);
  for (let i = 0; i < warmup + r.count; i++) {
    const t0 = performance.now();
    await writeAll(conn, ping);
    if (!(await readExactly(conn, r.size, scratch))) throw new Error("the echo closed");
    if (i >= warmup) samples.push((performance.now() - t0) * 1000);
  }
  conn.close();
  return {
    count: samples.length,
    p50_us: percentile(samples, 50),
    p99_us: percentile(samples, 99),
  };
}

/** `connections` opened at once, each echoing `bytes`; every failure counts as an error. */
async function concurrency(r: Extract<LoadRequest, { scenario: "concurrency" }>) {
  const chunk = new Uint8Array(64 * 1024).fill(0x63);
  let errors = 0;
  let firstError = "";
  const start = performance.now();
  const one = async () => {
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await connect(r.host, r.port);
      const c = conn;
      const writing = (async () => {
        for (let sent = 0; sent < r.bytes; sent += chunk.length) {
          await writeAll(c, chunk.subarray(0, Math.min(chunk.length, r.bytes - sent)));
        }
      })();
      const ok = await readExactly(c, r.bytes, new Uint8Array(64 * 1024));
      await writing;
      if (!ok) throw new Error("short echo");
    } catch (error) {
      errors++;
      firstError ||= String(error);
    } finally {
      try {
        conn?.close();
      } catch { /* closed already */ }
    }
  };
  await Promise.all(Array.from({ length: r.connections }, one));
  return {
    connections: r.connections,
    errors,
    first_error: firstError || undefined,
    seconds: (performance.now() - start) / 1000,
  };
}

/** Downloads `bytes` from the source port: what arrived (all, or what did before `timeoutMs`). */
async function download(host: string, port: number, bytes: number, timeoutMs: number) {
  const conn = await connect(host, port);
  const start = performance.now();
  await writeAll(conn, new TextEncoder().encode(`${bytes}\n`));
  const buf = new Uint8Array(CHUNK);
  let got = 0;
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    while (got < bytes) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += n;
    }
  } catch {
    // closed by the timer: a stalled stream reports what it moved
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
  const seconds = (performance.now() - start) / 1000;
  return { got, seconds, mbps: got / MB / seconds };
}

/**
 * Head-of-line: B's download speed alone, then while A (on the same forward) has a reader
 * that stopped after its first bytes and a sender that keeps sending.
 */
async function hol(r: Extract<LoadRequest, { scenario: "hol" }>) {
  const alone = (await download(r.host, r.port, r.bytes, 30_000)).mbps;
  // A stalled B (a tool with head-of-line blocking) would otherwise sit out the whole 30 s:
  // anything at least a tenth of B's speed alone finishes within 10× its time alone.
  const stallMs = Math.min(30_000, Math.max(2_000, 10_000 * r.bytes / MB / alone));
  const a = await connect(r.host, r.port);
  await writeAll(a, new TextEncoder().encode(`${2 ** 40}\n`));
  await readExactly(a, 64 * 1024, new Uint8Array(64 * 1024));
  // A stops reading here; give every buffer on its path time to fill.
  await new Promise((resolve) => setTimeout(resolve, r.pauseMs));
  const paused = (await download(r.host, r.port, r.bytes, stallMs)).mbps;
  a.close();
  return { alone_mbps: alone, paused_mbps: paused, hol_fraction: paused / alone };
}

/** DNS-sized datagrams at each rate for `stepSeconds`; loss and p50 round trip per step. */
async function udp(r: Extract<LoadRequest, { scenario: "udp" }>) {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const to: Deno.NetAddr = { transport: "udp", hostname: r.host, port: r.port };
  const sentAt = new Map<number, number>();
  let step: { rtts: number[]; received: number } = { rtts: [], received: 0 };
  const receiving = (async () => {
    const buf = new Uint8Array(2048);
    for (;;) {
      let data: Uint8Array;
      try {
        [data] = await socket.receive(buf);
      } catch {
        return;
      }
      if (data.length < 4) continue;
      const seq = new DataView(data.buffer, data.byteOffset).getUint32(0);
      const t0 = sentAt.get(seq);
      if (t0 === undefined) continue;
      sentAt.delete(seq);
      step.received++;
      step.rtts.push(performance.now() - t0);
    }
  })();
  // One datagram first: a forward's UDP session may need a moment to open.
  const probe = new Uint8Array(r.size);
  sentAt.set(0xffffffff, performance.now());
  new DataView(probe.buffer).setUint32(0, 0xffffffff);
  await socket.send(probe, to);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const steps = [];
  let seq = 0;
  for (const rate of r.rates) {
    step = { rtts: [], received: 0 };
    sentAt.clear();
    const total = Math.round(rate * r.stepSeconds);
    const start = performance.now();
    let sent = 0;
    while (sent < total) {
      // Pace by the clock: send whatever is due, then yield for about a millisecond.
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
      for (; sent < due; sent++) {
        const datagram = new Uint8Array(r.size);
        new DataView(datagram.buffer).setUint32(0, seq);
        sentAt.set(seq++, performance.now());
        await socket.send(datagram, to);
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const elapsed = (performance.now() - start) / 1000;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    steps.push({
      rate,
      achieved_rate: sent / elapsed,
      sent,
      received: step.received,
      lost: sent - step.received,
      p50_ms: percentile(step.rtts, 50),
    });
    // Once a step loses a tenth of its datagrams the next, faster ones only lose more.
    if (step.received < sent * 0.9) break;
  }
  socket.close();
  await receiving;
  const best = maxRateWithoutLoss(steps);
  return { steps, max_qps_no_loss: best, p50_ms: steps.find((s) => s.rate === best)?.p50_ms };
}

/**
 * Runs this load client once as a process of its own, in network namespace `netns` if given;
 * its JSON result, or throws with the last line it printed on stderr.
 */
export async function runLoad(
  request: LoadRequest,
  netns?: string,
): Promise<Record<string, unknown>> {
  const deno = [Deno.execPath(), "run", "--allow-all", "--unstable-net", import.meta.filename!];
  const argv = netns ? ["ip", "netns", "exec", netns, ...deno] : deno;
  const out = await new Deno.Command(argv[0], {
    args: [...argv.slice(1), JSON.stringify(request)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(600_000),
  }).output();
  const text = new TextDecoder();
  if (out.code !== 0) {
    throw new Error(text.decode(out.stderr).trim().split("\n").pop() || `exit ${out.code}`);
  }
  return JSON.parse(text.decode(out.stdout).trim().split("\n").pop()!);
}

async function main(): Promise<void> {
  const request = JSON.parse(Deno.args[0]) as LoadRequest;
  const run = {
    bulk,
    download: downloadOnce,
    upload: uploadOnce,
    connrate,
    latency,
    concurrency,
    hol,
    http,
    fetch: fetchFresh,
    udp,
  }[request.scenario] as (r: LoadRequest) => Promise<unknown>;
  const result = await run(request) as Record<string, unknown>;
  // The load client's own CPU, for the bench's breakdown of where a path's CPU goes.
  const { user, system } = process.cpuUsage();
  console.log(JSON.stringify({ ...result, cpu_s: (user + system) / 1e6 }));
}

if (import.meta.main) {
  main().then(() => Deno.exit(0), (error) => {
    console.error(error instanceof Error ? error.message : String(error));
    Deno.exit(1);
  });
}
