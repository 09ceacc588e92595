/** What relay prints: kubectl's ready lines, and errors on stderr. */
import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { createLogger, formatHostPort, formatReadyLine } from "../lib/log.ts";

Deno.test("ready lines follow kubectl's format, naming the target", () => {
  strictEqual(
    formatReadyLine({
      localAddress: "127.0.0.1",
      localPort: 6379,
      target: { kind: "host", name: "redis.example" },
      remotePort: 6379,
      protocol: "tcp",
    }),
    "Forwarding from 127.0.0.1:6379 -> host/redis.example:6379",
  );
  strictEqual(
    formatReadyLine({
      localAddress: "::1",
      localPort: 5353,
      target: { kind: "svc", name: "kube-dns", namespace: "kube-system" },
      remotePort: 53,
      protocol: "udp",
    }),
    "Forwarding from [::1]:5353 -> svc/kube-dns:53/udp",
  );
  strictEqual(
    formatReadyLine({
      localAddress: "127.0.0.1",
      localPort: 8080,
      target: { kind: "ip", name: "fd00::7" },
      remotePort: 80,
      protocol: "tcp",
    }),
    "Forwarding from 127.0.0.1:8080 -> ip/[fd00::7]:80",
  );
  strictEqual(formatHostPort("0.0.0.0", 1), "0.0.0.0:1");
});

Deno.test("the logger sends ready lines to stdout and the rest to stderr; debug only when verbose", () => {
  const lines: string[] = [];
  const sinks = {
    stdout: (l: string) => lines.push(`out ${l}`),
    stderr: (l: string) => lines.push(`err ${l}`),
  };
  for (const verbose of [false, true]) {
    const logger = createLogger({ verbose, sinks });
    logger.ready({
      localAddress: "127.0.0.1",
      localPort: 1,
      target: { kind: "pod", name: "p" },
      remotePort: 2,
      protocol: "tcp",
    });
    logger.info("agent ready");
    logger.debug("detail");
    logger.error("boom");
  }
  deepStrictEqual(lines, [
    "out Forwarding from 127.0.0.1:1 -> pod/p:2",
    "err agent ready",
    "err error: boom",
    "out Forwarding from 127.0.0.1:1 -> pod/p:2",
    "err agent ready",
    "err detail",
    "err error: boom",
  ]);
});
