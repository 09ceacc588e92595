/**
 * Where the CPU goes: every process on a tool's path (the forwarding client, relay's agent,
 * the API server, kwok, the echo pod, the load client) is on this machine, so the bench reads
 * their CPU time from /proc around each round. On a CPU-bound 2-core machine a path's
 * throughput is the cores divided by its CPU per byte, which is why these figures are
 * printed beside the speeds.
 */
import { statCpuSeconds } from "../../lib/net/memory_return.ts";
import { RUN_DIR } from "../../tests/e2e/harness.ts";

/** The processes whose CPU is counted, by the name the table gives them. */
export const CPU_PARTS = ["client", "agent", "apiserver", "kwok", "echo", "load"] as const;

/** One of {@link CPU_PARTS}. */
export type CpuPart = typeof CPU_PARTS[number];

/** The user + system CPU seconds a process has used so far, or NaN once it is gone. */
export async function cpuSeconds(pid: number): Promise<number> {
  try {
    return statCpuSeconds(await Deno.readTextFile(`/proc/${pid}/stat`));
  } catch {
    return NaN;
  }
}

/** The pid of a control-plane process the cluster script started (`kwok`, `kube-apiserver`). */
export async function clusterPid(name: string): Promise<number | undefined> {
  const text = await Deno.readTextFile(`${RUN_DIR}/pids/${name}.pid`).catch(() => "");
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** CPU seconds of each known part at one moment. */
export type CpuSnapshot = Partial<Record<CpuPart, number>>;

/** Reads every part's CPU seconds (parts without a pid are left out). */
export async function snapshotCpu(
  pids: Partial<Record<CpuPart, number>>,
): Promise<CpuSnapshot> {
  const out: CpuSnapshot = {};
  for (const [part, pid] of Object.entries(pids) as [CpuPart, number | undefined][]) {
    if (pid !== undefined) out[part] = await cpuSeconds(pid);
  }
  return out;
}

/**
 * The CPU each part used between two snapshots, plus the load client's own (it reports
 * it), scaled by `per` (e.g. GiB moved); keys `cpu_<part>` and `cpu_total`.
 */
export function cpuUsed(
  before: CpuSnapshot,
  after: CpuSnapshot,
  loadSeconds: number | undefined,
  per: number,
): Record<string, number> {
  const used: Partial<Record<CpuPart, number>> = {};
  for (const part of CPU_PARTS) {
    const a = after[part];
    const b = before[part];
    if (a !== undefined && b !== undefined && Number.isFinite(a - b)) used[part] = a - b;
  }
  if (loadSeconds !== undefined && Number.isFinite(loadSeconds)) used.load = loadSeconds;
  const out: Record<string, number> = {};
  let total = 0;
  for (const [part, seconds] of Object.entries(used)) {
    out[`cpu_${part}`] = seconds / per;
    total += seconds;
  }
  out.cpu_total = total / per;
  return out;
}
