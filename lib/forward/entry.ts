/**
 * The forward direction: local listeners whose connections and UDP sessions become streams to
 * the targets, as a session entry (lib/session/run.ts).
 */
import { describeError } from "../errors.ts";
import type { Kube } from "../kube/config.ts";
import type { FollowPods } from "../kube/ready_pods.ts";
import { type ResolvedForward, resolveTarget } from "../kube/resolve.ts";
import {
  bindPort,
  closeBinding,
  forwardBindOptions,
  type ListenerSet,
  type PortBinding,
  readyFacts,
} from "../listen/bind.ts";
import type { UdpSession } from "../listen/udp.ts";
import { formatHostPort, type Logger } from "../log.ts";
import { ConnChannel } from "../net/socket.ts";
import { splice } from "../net/splice.ts";
import type { Plan } from "../plan.ts";
import type { ServeContext, SessionEntry } from "../session/run.ts";
import { forwardRoute } from "../status/routes.ts";
import type { RouteStats } from "../status/session_status.ts";
import { OpenError } from "../tunnel/types.ts";

/** One bound port and where its connections go. */
interface Route {
  binding: PortBinding;
  forward: ResolvedForward;
}

/**
 * The forwards of `plan` on `listeners` (bound before the session starts, so a busy port
 * failed before any cluster work; main.ts keeps them and closes them after the run).
 */
export function forwardEntry(plan: Plan, listeners: ListenerSet, logger: Logger): SessionEntry {
  let routes: Route[] = [];
  let serving: ServeContext | undefined;
  return {
    prepare: async ({ kube, follow, agentNamespace }) => {
      routes = await resolveRoutes(kube, plan, listeners, follow, agentNamespace, logger);
    },
    destinations: () => routes.map((route) => route.forward.allows),
    serve: (context) => serve(routes, serving = context, logger),
    // With --target, a new agent may live in another pod (a rollout): connections now leave
    // from there, and the routes' targets say so.
    onTunnel: () => {
      if (!serving) return;
      for (const { binding, forward } of routes) {
        for (const facts of readyFacts(binding, forward.protocol)) {
          const info = forwardRoute({ ...facts, via: serving.via });
          const route = serving.status.routes.find((r) => r.info.id === info.id);
          if (route && route.info.target !== info.target) serving.status.ready(info);
        }
      }
    },
  };
}

/** Resolves every binding's target and settles its listeners on the resolved protocol. */
async function resolveRoutes(
  kube: Kube,
  plan: Plan,
  listeners: ListenerSet,
  follow: FollowPods,
  agentNamespace: string,
  logger: Logger,
): Promise<Route[]> {
  const routes: Route[] = [];
  const bindOptions = {
    addresses: plan.options.addresses,
    udp: { idleTimeoutMs: plan.udpIdleTimeoutMs },
    warn: (warning: string) => logger.info(`warning: ${warning}`),
  };
  for (const forward of plan.forwards) {
    const bindings = listeners.bindings.filter((b) => b.forward === forward);
    const resolved = await resolveTarget(
      kube,
      forward.target,
      bindings.map((b) => b.port),
      follow,
      agentNamespace,
    );
    bindings.forEach((binding, i) => {
      const target = resolved[i];
      const want = target.protocol;
      const deferred = binding.deferred[want];
      if (deferred) throw deferred;
      // A port bound for both protocols (a name) or for the other one (a number whose
      // Service port is UDP only) keeps exactly the listeners the resolved protocol needs.
      const other = want === "tcp" ? binding.udp : binding.tcp;
      for (const listener of other.splice(0)) listener.close();
      const mine = want === "tcp" ? binding.tcp : binding.udp;
      if (mine.length === 0) {
        // A named port listens on its resolved number, as with kubectl.
        const remote = typeof binding.port.remote === "number"
          ? binding.port.remote
          : target.resolvedPort ?? 0;
        bindPort(
          binding,
          binding.localPort ?? binding.port.localPort ?? remote,
          want,
          forwardBindOptions(forward, bindOptions),
        );
      }
      routes.push({ binding, forward: target });
    });
  }
  return routes;
}

/** Accepts on every listener until the session stops, one stream per connection or session. */
async function serve(routes: Route[], context: ServeContext, logger: Logger): Promise<void> {
  const serving: Promise<void>[] = [];
  for (const { binding, forward } of routes) {
    const facts = readyFacts(binding, forward.protocol);
    const stats = facts.map((f) => {
      logger.ready({ ...f, via: context.via });
      return context.status.ready(forwardRoute({ ...f, via: context.via }));
    });
    binding.tcp.forEach((listener, i) => {
      serving.push(listener.serve(
        (conn) => forwardConnection(conn, forward, stats[i], context, logger),
        (error) =>
          logger.error(
            `accepting on ${listener.hostname}:${listener.port}: ${describeError(error)}`,
          ),
      ));
    });
    binding.udp.forEach((listener, i) => {
      serving.push(
        listener.serve(
          (session) => forwardSession(session, forward, stats[i], context, logger),
          (error) =>
            logger.error(`udp ${listener.hostname}:${listener.port}: ${describeError(error)}`),
        ).then(() => {
          // Datagrams lost before relay could read them belong to no session; report them once.
          const lost = listener.kernelDropped;
          if (lost > 0) {
            logger.info(
              `udp ${listener.hostname}:${listener.port}: ${lost} datagrams dropped before relay ` +
                `read them (receive buffer full)`,
            );
          }
        }),
      );
    });
  }
  const { signal } = context;
  await new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    signal.addEventListener("abort", () => resolve(), { once: true });
  });
  for (const { binding } of routes) closeBinding(binding);
  await Promise.allSettled(serving);
}

/** One accepted TCP connection: a stream to the target, spliced with it. */
async function forwardConnection(
  conn: Deno.TcpConn,
  forward: ResolvedForward,
  route: RouteStats,
  context: ServeContext,
  logger: Logger,
): Promise<void> {
  const peer = conn.remoteAddr;
  const tracked = context.status.connection(route, formatHostPort(peer.hostname, peer.port));
  let stream;
  const failed = (error: unknown) => {
    // A connection that came in as relay stops is simply closed.
    if (context.stopped) return tracked.end();
    const why = failure(error);
    tracked.end(why);
    logger.error(`connection to ${forward.label} failed: ${why}`);
  };
  try {
    const destination = await forward.destination();
    // Early: the first bytes go right behind the OPEN instead of a round trip after it.
    stream = await context.open({ protocol: "tcp", ...destination }, { early: true });
  } catch (error) {
    failed(error);
    return; // the listener closes the connection
  }
  await splice(new ConnChannel(conn, context.buffers), stream, tracked.counts);
  // The agent's refusal (the reset that ended the splice) is told as a failed connection; a
  // reset from this side (the local client went away) is not a failure of the forward.
  await stream.opened.then(() => tracked.end(), (error) => {
    if (!(error instanceof OpenError)) return tracked.end();
    // The bytes sent early, behind the OPEN, never reached a destination.
    tracked.counts.aToB = tracked.counts.bToA = 0;
    failed(error);
  });
}

/** One UDP session (a local source address): a stream to the target, spliced with it. */
async function forwardSession(
  session: UdpSession,
  forward: ResolvedForward,
  route: RouteStats,
  context: ServeContext,
  logger: Logger,
): Promise<void> {
  const source = formatHostPort(session.remote.hostname, session.remote.port);
  const tracked = context.status.udpSession(route, source);
  try {
    const destination = await forward.destination();
    const stream = await context.open({ protocol: "udp", ...destination });
    logger.debug(`udp session ${source} -> ${forward.label} opened`);
    void splice(session, stream, tracked.counts);
    // Either end may finish first: the local idle timer, or the agent's (a FIN).
    await Promise.race([stream.closed, session.closed]);
    stream.reset("session ended");
    session.close();
    // Drops are how UDP sessions shed overload; say how many, never hide them.
    const dropped = session.dropped + stream.dropped;
    tracked.end(undefined, dropped);
    logger.debug(`udp session ${source} -> ${forward.label} ended; ${dropped} dropped`);
  } catch (error) {
    const why = failure(error);
    tracked.end(context.stopped ? undefined : why);
    if (!context.stopped) logger.error(`${forward.label}/udp: ${why}`);
    session.close();
  }
}

/** Why a stream could not be opened; an agent's refusal says what kind of refusal first. */
function failure(error: unknown): string {
  const text = describeError(error);
  return error instanceof OpenError ? `${error.code}: ${text}` : text;
}
