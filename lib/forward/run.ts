/**
 * The forwarding run: from bound listeners to an agent and tunnels, until stopped.
 * STUB written by the CLI so main.ts is wired end to end; the lead owns this file.
 */
import type { ListenerSet } from "../listen/bind.ts";
import type { Logger } from "../log.ts";
import type { Plan } from "../plan.ts";

/** What {@link runForwards} is given by main.ts. */
export interface RunForwardsOptions {
  /** The parsed, validated command line. */
  plan: Plan;
  /**
   * Every local listener, already bound (so a busy port failed before any cluster work).
   * Ready lines are printed by the run once each port's target is resolved; `listeners`
   * stays owned by main.ts, which closes it after the run settles.
   */
  listeners: ListenerSet;
  logger: Logger;
  /** Aborted on SIGINT/SIGTERM: stop accepting, clean up the agent, then resolve. */
  signal: AbortSignal;
}

/**
 * Runs every forward of `options.plan` until `options.signal` is aborted (then resolves,
 * and relay exits 0) or a runtime failure makes it impossible to go on (then rejects: exit
 * 1, or 2 when the error is a UsageError, such as a named port the target lacks).
 */
export function runForwards(_options: RunForwardsOptions): Promise<void> {
  return Promise.reject(new Error("forwarding is not wired yet"));
}
