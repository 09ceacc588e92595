/**
 * The reverse direction (-R remote[:local]): the agent listens on a port of the target pod,
 * and each connection arriving there comes back through a tunnel to a local port, as a
 * session entry beside the forward one (lib/session/run.ts).
 */
import type { V1Pod } from "@kubernetes/client-node";
import { describeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { connDuplex } from "../net/socket.ts";
import type { Duplex } from "../net/types.ts";
import type { Plan, ReverseSpec } from "../plan.ts";
import type { ServeContext, SessionEntry } from "../session/run.ts";
import { reverseRoute } from "../status/routes.ts";
import type { RouteStats } from "../status/session_status.ts";
import { OpenError, type OpenRequest, type Tunnel } from "../tunnel/types.ts";
import type { HttpFilter, IncomingMode } from "../contract.ts";
import { declaredPort } from "./redirect.ts";

/** While the local port refuses, one line per this long, not one per connection. */
const REFUSAL_REPORT_MS = 10_000;

/** Where a reverse forward's connections are delivered, in the order tried. */
const LOCAL_HOSTS = ["127.0.0.1", "::1"];

/** One -R and where it stands. */
interface Reverse {
  spec: ReverseSpec;
  /** The tunnel whose agent end listens for it now, if any. */
  holder?: Tunnel;
  /** How the agent took the port. */
  mode?: IncomingMode;
  /** Steal only the HTTP requests matching this. */
  filter?: HttpFilter;
  lastRefusalReport: number;
  /** Its counters, once it listens. */
  route?: RouteStats;
  /** Where its ready line said it listens: the pod of the agent holding it. */
  place?: string;
  /** A listen on its way: the tunnel closing and a new one arriving both ask for one. */
  pending?: Promise<void>;
}

/** The reverse forwards of `plan`; their ports listen in the --target pod. */
export function reverseEntry(plan: Plan, logger: Logger): SessionEntry {
  const filtered = (port: number) =>
    plan.httpFilter && (!plan.httpFilterPorts || plan.httpFilterPorts.includes(port))
      ? { filter: plan.httpFilter }
      : {};
  const reverses = new Map<number, Reverse>(
    plan.reverses.map((spec) => [
      spec.remotePort,
      { spec, lastRefusalReport: -Infinity, ...filtered(spec.remotePort) },
    ]),
  );
  const tunnels = new Set<Tunnel>();
  let context: ServeContext | undefined;
  let pod: V1Pod | undefined;

  /**
   * Asks a live tunnel to listen for `reverse`, once at a time; rejects with the agent's
   * OpenError. Taken again by a new agent in another pod (a rollout), it says so as it did
   * the first time.
   */
  const listen = (reverse: Reverse): Promise<void> =>
    reverse.pending ??= (async () => {
      if (reverse.holder && reverse.holder.closeReason === null) return;
      const tunnel = [...tunnels].find((t) => t.closeReason === null);
      if (!tunnel) throw new Error("no tunnel to the agent is up");
      reverse.mode = await tunnel.listen(
        { protocol: "tcp", host: "::", port: reverse.spec.remotePort },
        { mode: plan.incoming, ...(reverse.filter ? { filter: reverse.filter } : {}) },
      );
      reverse.holder = tunnel;
      if (reverse.route && context && context.via !== reverse.place) announce(reverse, context);
    })().finally(() => reverse.pending = undefined);

  /** The ready line and event for `reverse` where it now listens. */
  const announce = (reverse: Reverse, serving: ServeContext) => {
    const place = serving.via ?? "the agent's pod";
    const facts = {
      place,
      remotePort: reverse.spec.remotePort,
      localAddress: LOCAL_HOSTS[0],
      localPort: reverse.spec.localPort,
      mode: reverse.mode,
      ...(reverse.filter ? { filter: reverse.filter } : {}),
    };
    logger.readyReverse(facts);
    reverse.route = serving.status.ready(reverseRoute(facts));
    reverse.place = serving.via;
  };

  /** A tunnel that held listeners closed: the agent closed them; ask another tunnel. */
  const relisten = (closed: Tunnel) => {
    tunnels.delete(closed);
    if (!context || context.signal.aborted) return;
    for (const reverse of reverses.values()) {
      if (reverse.holder !== closed) continue;
      reverse.holder = undefined;
      listen(reverse).catch((error) => {
        // The pool is replacing the tunnel; its arrival (onTunnel) tries again.
        logger.debug(`${reverse.spec.source}: listening again: ${describeError(error)}`);
      });
    }
  };

  return {
    prepare: ({ target }) => {
      pod = target;
      // With incoming off, a port the app declares cannot be had: say so before the agent
      // joins the pod, since its container could not be removed again.
      for (const { spec } of reverses.values()) {
        if (plan.incoming === "listen" && target && declaredPort(target, spec.remotePort)) {
          const place = `pod/${target.metadata?.name}`;
          throw listenRefused(new OpenError("in-use", ""), spec, place, plan, target);
        }
      }
      return Promise.resolve();
    },
    onTunnel: (tunnel) => {
      tunnels.add(tunnel);
      tunnel.closed.then(() => relisten(tunnel));
      if (!context) return;
      for (const reverse of reverses.values()) {
        // serve() takes each port the first time and reports its failure itself.
        if (reverse.mode === undefined) continue;
        listen(reverse).catch((error) =>
          logger.error(`${reverse.spec.source}: cannot listen in the pod: ${describeError(error)}`)
        );
      }
    },
    onOpen: (request) => deliver(request, reverses, logger, context),
    serve: async (serving) => {
      context = serving;
      const place = serving.via ?? "the agent's pod";
      for (const reverse of reverses.values()) {
        try {
          await listen(reverse);
        } catch (error) {
          if (error instanceof OpenError) {
            throw listenRefused(error, reverse.spec, place, plan, pod);
          }
          throw error;
        }
        announce(reverse, serving);
      }
      await new Promise<void>((resolve) => {
        if (serving.signal.aborted) return resolve();
        serving.signal.addEventListener("abort", () => resolve(), { once: true });
      });
    },
  };
}

/** A connection the agent accepted for an -R: connected to its local port. */
async function deliver(
  request: OpenRequest,
  reverses: Map<number, Reverse>,
  logger: Logger,
  context?: ServeContext,
): Promise<Duplex> {
  const reverse = reverses.get(request.port);
  if (!reverse) throw new OpenError("forbidden", `port ${request.port} is not reverse forwarded`);
  const route = reverse.route;
  // The agent's OPEN names the caller's address (its port is not sent).
  const caller = request.host;
  let last: unknown;
  for (const hostname of LOCAL_HOSTS) {
    try {
      const conn = await Deno.connect({ hostname, port: reverse.spec.localPort });
      conn.setNoDelay(true);
      const duplex = connDuplex(conn, context?.buffers);
      if (!route || !context) return duplex;
      // The tunnel splices its stream (a) with this connection (b).
      const tracked = context.status.connection(route, caller, false);
      return Object.assign(duplex, {
        tracking: {
          counts: tracked.counts,
          // The agent's reason is what the user reads, not how it reached this end.
          end: (failure?: string) => tracked.end(failure?.replace(/^stream reset by peer: /, "")),
        },
      });
    } catch (error) {
      last = error;
    }
  }
  if (route && context) {
    context.status.connection(route, caller, false).end(
      `local port ${reverse.spec.localPort}: ${describeError(last)}`,
    );
  }
  const now = performance.now();
  if (now - reverse.lastRefusalReport >= REFUSAL_REPORT_MS) {
    reverse.lastRefusalReport = now;
    // What the callers get meanwhile depends on how the port was taken.
    const meanwhile = reverse.mode === "mirror"
      ? "the app still answers them, but their copies are lost"
      : reverse.filter
      ? "their matching requests get 502 Bad Gateway, the others still reach the app"
      : "they are closed";
    logger.error(
      `${reverse.spec.source}: nothing answers on local port ${reverse.spec.localPort} ` +
        `(${describeError(last)}); until something listens there, connections from ` +
        `${request.host} and others: ${meanwhile}`,
    );
  }
  throw new OpenError("refused", `local port ${reverse.spec.localPort}: ${describeError(last)}`);
}

/** Exit 2: the agent could not take the port, said as what to do about it. */
function listenRefused(
  error: OpenError,
  spec: ReverseSpec,
  place: string,
  plan: Plan,
  pod: V1Pod | undefined,
): UsageError {
  const where = `port ${spec.remotePort} of ${place}`;
  const declared = pod && declaredPort(pod, spec.remotePort);
  const by = declared ? ` (${declared} declares it)` : "";
  if (error.code === "in-use") {
    const off = plan.incomingSource ? ` (incoming is off in ${plan.incomingSource})` : "";
    return new UsageError(
      `${spec.source}: ${where} is already in use${by}${off}; take it with --steal or --mirror`,
    );
  }
  if (error.code === "forbidden" && /NET_ADMIN/.test(error.message) && plan.incoming === "auto") {
    return new UsageError(
      `${spec.source}: ${where} is in use by something the pod does not declare; pass ` +
        `--mirror or --steal so that the agent may redirect it (if another relay session ` +
        `listens there, it would get nothing more)`,
    );
  }
  if (error.code === "forbidden" && spec.remotePort < 1024 && /denied/i.test(error.message)) {
    return new UsageError(
      `${spec.source}: the agent may not listen on ${where} (ports below 1024 need ` +
        `privileges in the pod); --steal takes it through a redirect instead`,
    );
  }
  if (error.code === "refused" && plan.incoming === "mirror") {
    return new UsageError(
      `${spec.source}: nothing listens on ${where}, so there is nothing to mirror; drop ` +
        `${plan.incomingSource ?? "--mirror"} to listen there, or steal it with --steal`,
    );
  }
  return new UsageError(`${spec.source}: cannot take ${where}: ${error.message}`);
}
