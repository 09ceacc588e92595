/**
 * Without a terminal (or with `-q`), relay prints its plain lines (kubectl's `Forwarding from`
 * lines, byte for byte) and, on stderr, one line per notable event the logger does not already
 * print: a tunnel lost, an agent replaced, a mirrored copy dropped. Bursts are rate-limited so
 * a flapping network does not flood a log.
 */
import { MIRROR_BACKLOG, MIRROR_BACKLOG_TOTAL, MIRROR_DROPPED } from "../contract.ts";
import type { RelayEvent } from "./events.ts";
import type { SessionStatus } from "./session_status.ts";

/** At most one line per kind of event in this long; the rest are counted into the next. */
export const PLAIN_EVENT_INTERVAL_MS = 5_000;

/** Prints notable events of `status` with `print` until the returned stop is called. */
export function printNotableEvents(
  status: SessionStatus,
  print: (line: string) => void,
  now: () => number = Date.now,
): () => void {
  const last = new Map<string, { at: number; suppressed: number }>();
  const say = (kind: string, line: string) => {
    const seen = last.get(kind);
    const at = now();
    if (seen && at - seen.at < PLAIN_EVENT_INTERVAL_MS) {
      seen.suppressed++;
      return;
    }
    const more = seen?.suppressed ? ` (and ${seen.suppressed} more like it)` : "";
    last.set(kind, { at, suppressed: 0 });
    print(line + more);
  };
  return status.subscribe((event: RelayEvent) => {
    if (event.event === "tunnel" && event.phase === "down" && !status.stopping) {
      say("tunnel", `tunnel to the agent lost (${event.reason ?? "closed"}); reconnecting`);
    } else if (event.event === "tunnel" && event.phase === "up" && status.reconnects > 0) {
      say("tunnel-up", `tunnel to the agent is back (${event.tunnels} up)`);
    } else if (event.event === "connection" && event.error?.endsWith(MIRROR_DROPPED)) {
      const mib = (bytes: number) => `${bytes / 1024 / 1024} MiB`;
      const where = status.routes.find((r) => r.info.id === event.route)?.info.target;
      say(
        "mirror",
        `${where ?? event.route}: the copy of a connection from ${event.peer} ` +
          `was dropped: it fell more than ${mib(MIRROR_BACKLOG)} behind the caller ` +
          `(${mib(MIRROR_BACKLOG_TOTAL)} across connections): the caller sent faster than the ` +
          "tunnel or the local server took it. The app still answered it",
      );
    }
  });
}
