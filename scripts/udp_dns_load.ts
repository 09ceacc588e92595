/**
 * An open-loop DNS load generator for measuring UDP forwarding: sends A queries at a fixed
 * rate from several local sources to a DNS server (e.g. relay's `svc/kube-dns :53@udp`
 * listener) and reports how many were answered, correctly and to the source that asked.
 *
 *   deno run -A --unstable-net scripts/udp_dns_load.ts --port 5353 --rate 2000 --seconds 5
 *
 * Flags: --host (127.0.0.1) --port (required) --rate queries/s (2000) --seconds (5)
 * --sources (20) --name (kubernetes.default.svc.cluster.local) --expect (an address the
 * answer must hold). Exits 1 when any query went unanswered or was answered wrongly.
 */
import { parseArgs } from "node:util";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";

/** What one run measured. */
export interface LoadResult {
  sent: number;
  answered: number;
  wrong: number;
  /** Reply latencies in ms, sorted. */
  latencies: number[];
}

/** Options for {@link runDnsLoad}. */
export interface LoadOptions {
  host: string;
  port: number;
  rate: number;
  seconds: number;
  sources: number;
  name: string;
  expect?: string;
}

/** Sends `rate × seconds` queries round-robin over `sources` sockets; waits 2 s for stragglers. */
export async function runDnsLoad(options: LoadOptions): Promise<LoadResult> {
  const total = Math.round(options.rate * options.seconds);
  const sockets = Array.from(
    { length: options.sources },
    () => Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" }),
  );
  // Ids are 16 bits; with at most 65,536 queries per run each (socket, id) pair is unique.
  const pending = sockets.map(() => new Map<number, number>());
  const latencies: number[] = [];
  let wrong = 0;
  const loops = sockets.map(async (socket, s) => {
    for (;;) {
      let datagram: Uint8Array;
      try {
        [datagram] = await socket.receive();
      } catch {
        return;
      }
      const packet = dnsPacket.decode(Buffer.from(datagram));
      const started = pending[s].get(packet.id ?? -1);
      const addresses = (packet.answers ?? []).flatMap((a) => a.type === "A" ? [a.data] : []);
      if (started === undefined || (options.expect && !addresses.includes(options.expect))) {
        wrong++;
        continue;
      }
      pending[s].delete(packet.id!);
      latencies.push(performance.now() - started);
    }
  });
  const to = { transport: "udp" as const, hostname: options.host, port: options.port };
  const begin = performance.now();
  for (let i = 0; i < total; i++) {
    // Open loop: query i leaves at its scheduled time whatever the answers are doing.
    const due = begin + (i * 1000) / options.rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const s = i % sockets.length;
    const id = Math.floor(i / sockets.length) & 0xffff;
    const query = dnsPacket.encode({
      type: "query",
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: "A", name: options.name }],
    });
    pending[s].set(id, performance.now());
    await sockets[s].send(query, to);
  }
  const deadline = performance.now() + 2_000;
  while (pending.some((p) => p.size > 0) && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  sockets.forEach((socket) => socket.close());
  await Promise.all(loops);
  latencies.sort((a, b) => a - b);
  return { sent: total, answered: latencies.length, wrong, latencies };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      rate: { type: "string", default: "2000" },
      seconds: { type: "string", default: "5" },
      sources: { type: "string", default: "20" },
      name: { type: "string", default: "kubernetes.default.svc.cluster.local" },
      expect: { type: "string" },
    },
  });
  if (!values.port) {
    console.error("udp_dns_load: --port is required");
    Deno.exit(2);
  }
  const result = await runDnsLoad({
    host: values.host,
    port: Number(values.port),
    rate: Number(values.rate),
    seconds: Number(values.seconds),
    sources: Number(values.sources),
    name: values.name,
    expect: values.expect,
  });
  const lost = result.sent - result.answered;
  const ms = (p: number) => percentile(result.latencies, p).toFixed(2);
  console.log(
    `rate ${values.rate}/s for ${values.seconds} s from ${values.sources} sources: ` +
      `${result.answered}/${result.sent} answered, ${lost} lost, ${result.wrong} wrong; ` +
      `latency p50 ${ms(50)} ms, p99 ${ms(99)} ms, max ${ms(100)} ms`,
  );
  Deno.exit(lost > 0 || result.wrong > 0 ? 1 : 0);
}
