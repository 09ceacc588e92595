/**
 * The reverse direction (-R remote[:local]): the agent listens on a port of the target pod,
 * and each connection arriving there comes back through a tunnel to a local port, as a
 * session entry beside the forward one (lib/session/run.ts).
 */
import type { V1Pod } from "@kubernetes/client-node";
import { describeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { BufferPool } from "../net/buffer_pool.ts";
import { connDuplex } from "../net/socket.ts";
import type { Duplex } from "../net/types.ts";
import type { Plan, ReverseSpec } from "../plan.ts";
import type { ServeContext, SessionEntry } from "../session/run.ts";
import { OpenError, type OpenRequest, type Tunnel } from "../tunnel/types.ts";

/** While the local port refuses, one line per this long, not one per connection. */
const REFUSAL_REPORT_MS = 10_000;

/** Where a reverse forward's connections are delivered, in the order tried. */
const LOCAL_HOSTS = ["127.0.0.1", "::1"];

/** One -R and where it stands. */
interface Reverse {
  spec: ReverseSpec;
  /** The tunnel whose agent end listens for it now, if any. */
  holder?: Tunnel;
  lastRefusalReport: number;
}

/** The reverse forwards of `plan`; their ports listen in the --target pod. */
export function reverseEntry(plan: Plan, logger: Logger): SessionEntry {
  const reverses = new Map<number, Reverse>(
    plan.reverses.map((spec) => [spec.remotePort, { spec, lastRefusalReport: -Infinity }]),
  );
  const tunnels = new Set<Tunnel>();
  let context: ServeContext | undefined;

  /** Asks a live tunnel to listen for `reverse`; rejects with the agent's OpenError. */
  const listen = async (reverse: Reverse): Promise<void> => {
    for (const tunnel of tunnels) {
      if (tunnel.closeReason !== null) continue;
      await tunnel.listen({ protocol: "tcp", host: "::", port: reverse.spec.remotePort });
      reverse.holder = tunnel;
      return;
    }
    throw new Error("no tunnel to the agent is up");
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
      // A port the app declares is one it serves: stealing or mirroring it comes later.
      for (const { spec } of reverses.values()) {
        const declared = target && declaredPort(target, spec.remotePort);
        if (declared) throw inUse(spec, `pod/${target.metadata?.name}`, declared);
      }
      return Promise.resolve();
    },
    onTunnel: (tunnel) => {
      tunnels.add(tunnel);
      tunnel.closed.then(() => relisten(tunnel));
      if (!context) return;
      for (const reverse of reverses.values()) {
        if (reverse.holder && reverse.holder.closeReason === null) continue;
        listen(reverse).catch((error) =>
          logger.error(`${reverse.spec.source}: cannot listen in the pod: ${describeError(error)}`)
        );
      }
    },
    onOpen: (request) => deliver(request, reverses, logger, context?.buffers),
    serve: async (serving) => {
      context = serving;
      const place = serving.via ?? "the agent's pod";
      for (const reverse of reverses.values()) {
        try {
          await listen(reverse);
        } catch (error) {
          if (error instanceof OpenError && error.code === "in-use") {
            throw inUse(reverse.spec, place);
          }
          throw error;
        }
        logger.readyReverse({
          place,
          remotePort: reverse.spec.remotePort,
          localAddress: LOCAL_HOSTS[0],
          localPort: reverse.spec.localPort,
        });
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
  buffers?: BufferPool,
): Promise<Duplex> {
  const reverse = reverses.get(request.port);
  if (!reverse) throw new OpenError("forbidden", `port ${request.port} is not reverse forwarded`);
  let last: unknown;
  for (const hostname of LOCAL_HOSTS) {
    try {
      const conn = await Deno.connect({ hostname, port: reverse.spec.localPort });
      conn.setNoDelay(true);
      return connDuplex(conn, buffers);
    } catch (error) {
      last = error;
    }
  }
  const now = performance.now();
  if (now - reverse.lastRefusalReport >= REFUSAL_REPORT_MS) {
    reverse.lastRefusalReport = now;
    logger.error(
      `${reverse.spec.source}: nothing answers on local port ${reverse.spec.localPort} ` +
        `(${describeError(last)}); connections from ${request.host} and others are closed ` +
        `until something listens there`,
    );
  }
  throw new OpenError("refused", `local port ${reverse.spec.localPort}: ${describeError(last)}`);
}

/** The container port `port` of `pod`, as `container/name`, if a container declares it. */
function declaredPort(pod: V1Pod, port: number): string | undefined {
  for (const container of pod.spec?.containers ?? []) {
    for (const declared of container.ports ?? []) {
      if (declared.containerPort === port && (declared.protocol ?? "TCP") === "TCP") {
        return `container ${container.name}`;
      }
    }
  }
  return undefined;
}

/** Exit 2: the app already listens on the port, which only steal or mirror could take. */
function inUse(spec: ReverseSpec, place: string, by = "the app"): UsageError {
  return new UsageError(
    `${spec.source}: port ${spec.remotePort} of ${place} is already in use (${by}); ` +
      `stealing or mirroring an app's port (steal/mirror modes) is not supported yet`,
  );
}
