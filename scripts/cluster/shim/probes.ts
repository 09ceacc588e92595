/** Readiness probes, run inside the pod's network namespace as a kubelet runs them. */
import { run } from "../proc.ts";
import type { Probe } from "./types.ts";

/** Where a probe runs. */
export interface ProbeContext {
  netns: string;
  podIp: string;
  env: Record<string, string>;
  ports: { name?: string; containerPort: number }[];
}

/** Runs one probe once; true when it passed. */
export async function runProbe(probe: Probe, ctx: ProbeContext): Promise<boolean> {
  const timeout = probe.timeoutSeconds ?? 1;
  const port = (p: number | string) =>
    typeof p === "number" ? p : ctx.ports.find((cp) => cp.name === p)?.containerPort ?? Number(p);
  const inPod = ["ip", "netns", "exec", ctx.netns, "timeout", String(timeout + 1)];
  let argv: string[];
  if (probe.tcpSocket) {
    // Like a kubelet, the probe dials the pod IP: a server bound to 127.0.0.1 is not ready.
    argv = [
      ...inPod,
      "socat",
      "-u",
      "OPEN:/dev/null",
      `TCP:${ctx.podIp}:${port(probe.tcpSocket.port)},connect-timeout=${timeout}`,
    ];
  } else if (probe.exec) {
    argv = [...inPod, ...probe.exec.command];
  } else if (probe.httpGet) {
    argv = [
      ...inPod,
      "curl",
      "-fsS",
      "-o",
      "/dev/null",
      "--max-time",
      String(timeout),
      `http://${ctx.podIp}:${port(probe.httpGet.port)}${probe.httpGet.path ?? "/"}`,
    ];
  } else {
    return true;
  }
  const result = await run(argv, { env: ctx.env }).catch(() => ({ code: 1 }));
  return result.code === 0;
}
