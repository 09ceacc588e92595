/**
 * relay: a drop-in replacement for `kubectl port-forward` that reaches anything the cluster
 * can reach, over TCP and UDP, through a multiplexed tunnel to an in-cluster agent.
 * `relay agent` is the in-cluster end of that tunnel, from the same binary.
 *
 * Exit codes: 0 stopped by a signal, 1 runtime failure, 2 bad input.
 */
import { bindAgentPortEarly } from "./agent/early_listener.ts";
import { isCompletionRequest } from "./lib/completion_request.ts";
import { describeError, exitCodeOf, UsageError } from "./lib/errors.ts";
import { warmUpTls } from "./lib/kube/tls_warm_up.ts";
import { createLogger } from "./lib/log.ts";
import type { Plan } from "./lib/plan.ts";
import type { SessionEntry } from "./lib/session/run.ts";

/**
 * Runs relay with `argv` (without the program name) and returns its exit code. Each command
 * loads only the modules it runs: `relay agent` starts in its pod on every relay start, and
 * without the forwarding side's CLI it starts sooner and smaller.
 */
export async function main(argv: readonly string[]): Promise<number> {
  const logger = createLogger();
  try {
    if (argv[0] === "agent") {
      const listener = bindAgentPortEarly(argv.slice(1));
      try {
        const [{ parseAgentArgs }, { runAgent }] = await Promise.all([
          import("./lib/cli/agent_args.ts"),
          import("./agent/mod.ts"),
        ]);
        const agent = parseAgentArgs(argv.slice(1));
        if ("print" in agent) {
          listener?.close();
          return await print(agent.print);
        }
        return await runAgent({ ...agent.run, listener });
      } catch (error) {
        listener?.close();
        throw error;
      }
    }
    const program = import("./lib/cli/program.ts");
    // A command that may talk to the cluster has its TLS set-up built while the CLI loads; a
    // completion request, made on every TAB, never does.
    if (!isCompletionRequest(argv)) void warmUpTls();
    const { createProgram, parseCommandLine } = await program;
    // `completion <shell>` and the scripts' hidden `complete -- words` walk the same flags.
    if (isCompletionRequest(argv)) {
      const { COMPLETION_SHELLS, runCompletion } = await import("./lib/completion.ts");
      const shell = argv[1] ?? "";
      if (argv[0] === "completion" && !(COMPLETION_SHELLS as readonly string[]).includes(shell)) {
        throw new UsageError(
          `relay completion: unknown shell "${shell}": expected ${COMPLETION_SHELLS.join(", ")}`,
        );
      }
      await runCompletion(createProgram(), argv);
      return 0;
    }
    const invocation = await parseCommandLine(argv);
    switch (invocation.command) {
      case "print":
        return await print(invocation.text);
      case "agent": // parseCommandLine parses `agent` too; main answers it before the CLI loads
        return await main(argv);
      case "forward":
        return await forward(invocation.plan);
    }
  } catch (error) {
    logger.error(describeError(error));
    return exitCodeOf(error);
  }
}

/** Help, versions and the like: `text` on stdout, exit code 0. */
async function print(text: string): Promise<number> {
  await writeAll(Deno.stdout, new TextEncoder().encode(text));
  return 0;
}

/** Binds every listener first, so a busy port fails before the cluster is touched. */
async function forward(plan: Plan): Promise<number> {
  // Loaded here, not at the top: `relay agent` in its pod has no use for the session.
  const [
    { bindForwards },
    { refuseUnsupported, runSession },
    { forwardEntry },
    { startOutput },
    reverse,
    proxy,
  ] = await Promise.all([
    import("./lib/listen/bind.ts"),
    import("./lib/session/run.ts"),
    import("./lib/forward/entry.ts"),
    import("./lib/status/output.ts"),
    // -R's and relay proxy's modules only when they run.
    plan.reverses.length > 0 ? import("./lib/reverse/entry.ts") : undefined,
    plan.proxy ? import("./lib/proxy/entry.ts") : undefined,
  ]);
  refuseUnsupported(plan);
  const output = startOutput(plan.options);
  const { logger, status } = output;
  const warn = (warning: string) => logger.info(`warning: ${warning}`);
  for (const warning of plan.warnings ?? []) warn(warning);
  let listeners: { close(): void } | undefined;
  let proxyListeners: { close(): void }[] = [];
  const stop = new AbortController();
  const removeSignals = onStopSignals(stop);
  try {
    const bound = bindForwards(plan.forwards, {
      addresses: plan.options.addresses,
      udp: { idleTimeoutMs: plan.udpIdleTimeoutMs },
      warn,
    });
    listeners = bound;
    const entries: SessionEntry[] = [];
    if (plan.forwards.length > 0 || !plan.proxy) entries.push(forwardEntry(plan, bound, logger));
    if (reverse) entries.push(reverse.reverseEntry(plan, logger));
    if (plan.proxy && proxy) {
      const proxyBound = proxy.bindProxy(plan.proxy, plan.options.addresses, warn);
      proxyListeners = proxyBound;
      entries.push(proxy.proxyEntry(plan.proxy, proxyBound, logger));
    }
    await runSession({ plan, logger, signal: stop.signal, entries, status });
    return 0;
  } catch (error) {
    // The line main prints is for people; scripts reading events get it as one too.
    status.error(describeError(error));
    throw error;
  } finally {
    removeSignals();
    listeners?.close();
    proxyListeners.forEach((listener) => listener.close());
    output.stop();
  }
}

/**
 * The first SIGINT/SIGTERM/SIGHUP asks the run to stop cleanly (and delete the agent); a second
 * one gives up on cleaning and exits at once.
 */
function onStopSignals(stop: AbortController): () => void {
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT"]
    : ["SIGINT", "SIGTERM", "SIGHUP"];
  const handler = () => {
    if (stop.signal.aborted) Deno.exit(130);
    stop.abort();
  };
  for (const signal of signals) Deno.addSignalListener(signal, handler);
  return () => {
    for (const signal of signals) Deno.removeSignalListener(signal, handler);
  };
}

/** A single write may be partial when stdout is a pipe. */
async function writeAll(writer: typeof Deno.stdout, bytes: Uint8Array): Promise<void> {
  for (let offset = 0; offset < bytes.length;) offset += await writer.write(bytes.subarray(offset));
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
