/**
 * What a run prints, chosen from `-o`, `-q` and whether stderr is a terminal: the live view,
 * plain lines with notable events, or JSON events. Every mode reads one SessionStatus.
 */
import { createLogger, type Logger, type LogSinks, processSinks } from "../log.ts";
import { writeJsonEvents } from "./json_events.ts";
import { LiveView } from "./live_view.ts";
import { printNotableEvents } from "./plain_events.ts";
import { SessionStatus } from "./session_status.ts";

/** The flags that choose the output. */
export interface OutputOptions {
  verbose: boolean;
  quiet: boolean;
  output: "text" | "json";
}

/** A run's status, the logger that writes around it, and how to end the output cleanly. */
export interface RunOutput {
  status: SessionStatus;
  logger: Logger;
  stop(): void;
}

const encoder = new TextEncoder();

/** Sets up the output `options` ask for; `stop` ends it (erases the live view). */
export function startOutput(options: OutputOptions): RunOutput {
  const status = new SessionStatus();
  const withErrors = (sinks: LogSinks): Logger => {
    const logger = createLogger({ verbose: options.verbose, sinks });
    return {
      ...logger,
      error: (message) => {
        status.error(message);
        logger.error(message);
      },
    };
  };
  if (options.output === "json") {
    // stdout carries only events: the ready lines become `ready` events.
    const stop = writeJsonEvents(status, processSinks.stdout);
    return { status, logger: withErrors({ stdout: () => {}, stderr: processSinks.stderr }), stop };
  }
  if (!options.quiet && Deno.stderr.isTerminal()) {
    const view = new LiveView(status, {
      write: (text) => void Deno.stderr.writeSync(encoder.encode(text)),
      columns: () => Deno.consoleSize().columns,
      color: !Deno.env.get("NO_COLOR"),
    });
    const toStdout = Deno.stdout.isTerminal();
    const logger = withErrors({
      // A ready line on the same terminal goes above the view; into a pipe, it goes as is.
      stdout: (line) =>
        toStdout ? view.above(() => processSinks.stdout(line)) : processSinks.stdout(line),
      stderr: (line) => view.print(line + "\n"),
    });
    view.start();
    return { status, logger, stop: () => view.stop() };
  }
  const stop = printNotableEvents(status, processSinks.stderr);
  return { status, logger: withErrors(processSinks), stop };
}
