/**
 * The live view on a terminal: below the ready lines, a few rows redrawn in place at most four
 * times a second — a header (agent pod, tunnels, reconnects; the agent's progress while it
 * starts) and one row per route (local → target, mode, open and total connections, bytes each
 * way, current rate, last error and its age). Log lines are printed above it. Rows are cut to
 * the terminal's width, so that the cursor arithmetic of the redraw holds. localhost's two
 * listeners of one port (127.0.0.1 and ::1) share a row.
 */
import type { RouteStats, SessionStatus } from "./session_status.ts";

/** One row: the routes it adds up, and the local address it shows. */
interface Row {
  id: string;
  local: string;
  routes: RouteStats[];
}

/** How often the view may redraw. */
export const REDRAW_MS = 250;

/** Where the view writes, and how wide the terminal is. */
export interface Terminal {
  write(text: string): void;
  columns(): number;
  /** Colour, unless NO_COLOR is set. */
  color: boolean;
}

const AGENT_STEPS = ["creating", "scheduled", "pulling", "started"] as const;
const STEP_NAMES: Record<string, string> = {
  creating: "creating",
  scheduled: "scheduled",
  pulling: "pulling image",
  started: "running",
};

/** A running view; `print` writes a log line above it, `stop` erases it. */
export class LiveView {
  #lines = 0;
  #timer?: ReturnType<typeof setInterval>;
  #last = "";
  /** Bytes and time at the previous frame, per route, for the rate. */
  #previous = new Map<string, { bytes: number; at: number; rate: number }>();
  #stopped = false;

  constructor(
    private readonly status: SessionStatus,
    private readonly terminal: Terminal,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.#timer = setInterval(() => this.#draw(), REDRAW_MS);
    this.#draw();
  }

  /** Writes `text` (whole lines) above the view, then draws the view again. */
  print(text: string): void {
    this.above(() => this.terminal.write(text));
  }

  /** Runs `write` (output to the same terminal) with the view out of its way. */
  above(write: () => void): void {
    if (this.#stopped) return write();
    this.#erase();
    write();
    this.#draw(true);
  }

  /** Erases the view, leaving the terminal as the log lines left it. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#erase();
  }

  #erase(): void {
    // Up to the view's first line, then clear to the end of the screen.
    if (this.#lines > 0) this.terminal.write(`\r\x1b[${this.#lines}A\x1b[J`);
    this.#lines = 0;
    this.#last = "";
  }

  #draw(force = false): void {
    if (this.#stopped) return;
    const rows = this.render();
    const width = Math.max(20, this.terminal.columns() - 1);
    const text = rows.map((row) => cut(row, width, this.terminal.color)).join("\n") + "\n";
    if (!force && text === this.#last) return;
    this.#erase();
    this.terminal.write(text);
    this.#last = text;
    this.#lines = rows.length;
  }

  /** The view's rows, without cutting. */
  render(): string[] {
    const { status } = this;
    const c = colours(this.terminal.color);
    const agent = status.agent;
    if (status.routes.length === 0) {
      const at = AGENT_STEPS.indexOf(agent.phase as typeof AGENT_STEPS[number]);
      const steps = [...AGENT_STEPS.map((s) => STEP_NAMES[s]), "tunnel up"]
        .map((name, i) => (i <= at ? c.bold(name) : c.dim(name)))
        .join(c.dim(" → "));
      return [[c.dim("agent"), agent.pod, steps].filter(Boolean).join(" ")];
    }
    const header = `${c.dim("agent")} ${agent.pod ?? "-"}  ${c.dim("tunnels")} ${
      status.tunnels > 0 ? c.green(`${status.tunnels} up`) : c.red("0 up")
    }  ${c.dim("reconnects")} ${status.reconnects}`;
    const table = [["LOCAL", "TARGET", "MODE", "OPEN", "TOTAL", "IN", "OUT", "RATE", "LAST ERROR"]];
    const rows = rowsOf(status.routes);
    const errors = rows.map(lastError);
    for (const [i, row] of rows.entries()) table.push(this.#row(row, errors[i]));
    const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
    const lines = table.map((row) =>
      row.map((cell, i) => (i >= 3 && i <= 7 ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
        .join("  ").trimEnd()
    );
    return [
      header,
      c.dim(lines[0]),
      ...lines.slice(1).map((line, i) => {
        const error = errors[i];
        return error ? line.replace(error.message, c.red(error.message)) : line;
      }),
    ];
  }

  #row(row: Row, lastError: RouteStats["lastError"]): string[] {
    let sent = 0, received = 0, open = 0, total = 0;
    for (const route of row.routes) {
      const bytes = route.bytes;
      sent += bytes.sent;
      received += bytes.received;
      open += route.open;
      total += route.total;
    }
    const at = this.now();
    const before = this.#previous.get(row.id);
    let rate = before?.rate ?? 0;
    // The rate is over at least a second, so a redraw just after a print does not spike it.
    if (!before) this.#previous.set(row.id, { bytes: sent + received, at, rate: 0 });
    else if (at - before.at >= 1000) {
      rate = ((sent + received - before.bytes) * 1000) / (at - before.at);
      this.#previous.set(row.id, { bytes: sent + received, at, rate });
    }
    const error = lastError ? `${lastError.message} (${age(at - lastError.at)} ago)` : "";
    const { info } = row.routes[0];
    const arrow = info.direction === "reverse" ? "←" : "→";
    return [
      row.local,
      `${arrow} ${info.target}`,
      info.mode ?? info.direction,
      String(open),
      String(total),
      size(received),
      size(sent),
      `${size(rate)}/s`,
      error,
    ];
  }
}

/** Routes as rows: routes on `127.0.0.1:P` and `[::1]:P` to the same place share one. */
function rowsOf(routes: readonly RouteStats[]): Row[] {
  const rows: Row[] = [];
  const loopback = new Map<string, Row>();
  for (const route of routes) {
    const { direction, protocol, target, mode, local } = route.info;
    const port = /^(?:127\.0\.0\.1|\[::1\]):(\d+)$/.exec(local)?.[1];
    const place = port && JSON.stringify([direction, protocol, target, mode, port]);
    const mate = place ? loopback.get(place) : undefined;
    if (mate && mate.routes.length === 1 && mate.local !== local) {
      mate.routes.push(route);
      mate.local = `localhost:${port}`;
      continue;
    }
    const row = { id: route.info.id, local, routes: [route] };
    rows.push(row);
    if (place) loopback.set(place, row);
  }
  return rows;
}

/** The latest error of a row's routes. */
function lastError(row: Row): RouteStats["lastError"] {
  let latest: RouteStats["lastError"];
  for (const { lastError } of row.routes) {
    if (lastError && (!latest || lastError.at > latest.at)) latest = lastError;
  }
  return latest;
}

/** `1.2 MB`, `340 B`. */
export function size(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0
    ? `${Math.round(value)} B`
    : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** `4s`, `3m`, `2h`. */
function age(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

function colours(on: boolean) {
  const wrap = (code: string) => (text: string) => on ? `\x1b[${code}m${text}\x1b[0m` : text;
  return { dim: wrap("2"), bold: wrap("1"), red: wrap("31"), green: wrap("32") };
}

/** Cuts `text` to `width` visible columns, keeping (and closing) colour codes. */
function cut(text: string, width: number, color: boolean): string {
  let visible = 0;
  let out = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "\x1b") {
      const end = text.indexOf("m", i);
      out += text.slice(i, end + 1);
      i = end;
      continue;
    }
    if (visible === width) return out + (color ? "\x1b[0m" : "");
    out += text[i];
    visible++;
  }
  return out;
}
