/**
 * The live view on a terminal: below the ready lines, a few rows redrawn in place at most four
 * times a second — a header (agent pod, tunnels, reconnects; the agent's progress while it
 * starts) and one row per route (local → target, mode, open and total connections, bytes each
 * way, current rate, last error and its age). Log lines are printed above it. Rows are cut to
 * the terminal's width, so that the cursor arithmetic of the redraw holds.
 */
import type { RouteStats, SessionStatus } from "./session_status.ts";

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
    for (const route of status.routes) table.push(this.#row(route));
    const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
    const lines = table.map((row) =>
      row.map((cell, i) => (i >= 3 && i <= 7 ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
        .join("  ").trimEnd()
    );
    return [
      header,
      c.dim(lines[0]),
      ...lines.slice(1).map((line, i) => {
        const route = status.routes[i];
        return route.lastError
          ? line.replace(route.lastError.message, c.red(route.lastError.message))
          : line;
      }),
    ];
  }

  #row(route: RouteStats): string[] {
    const { sent, received } = route.bytes;
    const at = this.now();
    const total = sent + received;
    const before = this.#previous.get(route.info.id);
    let rate = before?.rate ?? 0;
    // The rate is over at least a second, so a redraw just after a print does not spike it.
    if (!before) this.#previous.set(route.info.id, { bytes: total, at, rate: 0 });
    else if (at - before.at >= 1000) {
      rate = ((total - before.bytes) * 1000) / (at - before.at);
      this.#previous.set(route.info.id, { bytes: total, at, rate });
    }
    const error = route.lastError
      ? `${route.lastError.message} (${age(at - route.lastError.at)} ago)`
      : "";
    const arrow = route.info.direction === "reverse" ? "←" : "→";
    return [
      route.info.local,
      `${arrow} ${route.info.target}`,
      route.info.mode ?? route.info.direction,
      String(route.open),
      String(route.total),
      size(received),
      size(sent),
      `${size(rate)}/s`,
      error,
    ];
  }
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
