/**
 * The netfilter rules that steal or mirror a port of the pod: incoming connections to the
 * app's port are REDIRECTed to a listener of the agent, both those arriving from outside
 * (PREROUTING) and those made inside the pod or through a port-forward (OUTPUT on `lo`),
 * except the agent's own (its group, AGENT_STEAL_GID), so its pass-through to the app does
 * not loop back.
 *
 * Every rule lives in two chains named after the agent's port, `RELAY-<port>-IN` and
 * `RELAY-<port>-OUT`, jumped to from PREROUTING and OUTPUT of the nat table. While the agent
 * lives, it listens on that port in the pod; so a chain whose port nobody listens on belongs
 * to a dead agent, and the next agent in the pod removes it (sweepStale). The iptables
 * command is the agent image's (iptables-nft: it needs NET_ADMIN and nothing else).
 */
import { describeError } from "../lib/errors.ts";
import { OpenError } from "../lib/tunnel/types.ts";
import { listenersOn } from "./port_owners.ts";

/** Runs one iptables command; resolves with its stdout, rejects with its stderr. */
export type IptablesRunner = (family: Family, args: string[]) => Promise<string>;

/** The address family a rule set is for. */
export type Family = "ipv4" | "ipv6";

const CHAIN = /^-N (RELAY-(\d+)-(IN|OUT))$/;
/** A redirect in an agent's chain: the agent's port, then the redirected port. */
const REDIRECT_RULE = /^-A RELAY-(\d+)-IN .*--dport (\d+) /;

/** Runs `iptables`/`ip6tables` from PATH, waiting for the xtables lock. */
export const runIptables: IptablesRunner = async (family, args) => {
  const command = family === "ipv4" ? "iptables" : "ip6tables";
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(command, {
      args: ["-w", "5", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (error) {
    throw new Error(`cannot run ${command}: ${describeError(error)}`);
  }
  const text = new TextDecoder();
  if (!output.success) {
    const why = text.decode(output.stderr).trim().split("\n").pop() || `exit ${output.code}`;
    throw new Error(`${command} ${args.join(" ")}: ${why}`);
  }
  return text.decode(output.stdout);
};

/** Options for {@link PortRedirects}. */
export interface PortRedirectsOptions {
  /** The agent's own port: names its chains. */
  agentPort: number;
  /** The agent's group, whose connections are never redirected. */
  agentGid: number;
  /** The families to write rules for (IPv6 only where the pod has it). */
  families: Family[];
  run?: IptablesRunner;
  /** Who listens on a port in the pod: tells a live agent's rules from a dead one's. */
  listening?: (port: number) => Promise<string[]>;
}

/** One agent's redirects: created on first use, each removable, all removed at the end. */
export class PortRedirects {
  readonly #o: Required<PortRedirectsOptions>;
  readonly #in: string;
  readonly #out: string;
  /** Ports redirected now, to the agent's listening port. */
  readonly #redirected = new Map<number, number>();
  #chains: Promise<void> | undefined;
  /** Serialises changes: iptables edits race each other otherwise. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: PortRedirectsOptions) {
    this.#o = {
      ...options,
      run: options.run ?? runIptables,
      listening: options.listening ?? listenersOn,
    };
    this.#in = `RELAY-${options.agentPort}-IN`;
    this.#out = `RELAY-${options.agentPort}-OUT`;
  }

  /** Redirects new connections to `port` to the agent's `toPort`. */
  add(port: number, toPort: number): Promise<void> {
    return this.#serial(async () => {
      if (this.#o.agentGid === 0) {
        throw new OpenError(
          "forbidden",
          "the agent runs in group 0, which the app may share: it cannot tell its own " +
            "connections apart, so it redirects nothing",
        );
      }
      try {
        await this.#refuseTaken(port);
        await (this.#chains ??= this.#createChains());
      } catch (error) {
        this.#chains = undefined;
        throw redirectFailure(port, error);
      }
      try {
        for (const family of this.#o.families) {
          for (const rule of this.#rules(port, toPort)) {
            await this.#o.run(family, ["-t", "nat", "-A", ...rule]);
          }
        }
      } catch (error) {
        await this.#deleteRules(port, toPort);
        throw redirectFailure(port, error);
      }
      this.#redirected.set(port, toPort);
    });
  }

  /** Stops redirecting `port`; connections already redirected go on. */
  remove(port: number): Promise<void> {
    return this.#serial(async () => {
      const toPort = this.#redirected.get(port);
      if (toPort === undefined) return;
      this.#redirected.delete(port);
      await this.#deleteRules(port, toPort);
    });
  }

  /** Removes every rule and both chains; safe to call more than once. */
  removeAll(): Promise<void> {
    return this.#serial(async () => {
      this.#redirected.clear();
      if (!this.#chains) return;
      this.#chains = undefined;
      for (const family of this.#o.families) {
        await removeChains(this.#o.run, family, this.#o.agentPort);
      }
    });
  }

  /**
   * Refuses a port another live agent in the pod redirects (another relay session's steal or
   * mirror): with two sets of rules, the first would silently get nothing. A dead agent's
   * rules are removed instead. Port claims (port_claims.ts) refuse it first; this still
   * catches an agent of a relay from before claims.
   */
  async #refuseTaken(port: number): Promise<void> {
    for (const family of this.#o.families) {
      const holders = new Set<number>();
      for (const line of (await this.#o.run(family, ["-t", "nat", "-S"])).split("\n")) {
        const rule = REDIRECT_RULE.exec(line.trim());
        if (rule && Number(rule[2]) === port && Number(rule[1]) !== this.#o.agentPort) {
          holders.add(Number(rule[1]));
        }
      }
      for (const holder of holders) {
        if ((await this.#o.listening(holder)).length === 0) {
          await removeChains(this.#o.run, family, holder);
          continue;
        }
        throw new OpenError(
          "forbidden",
          `another relay session already steals or mirrors port ${port} of this pod (its ` +
            `agent listens on ${holder}); stop that one first`,
        );
      }
    }
  }

  #rules(port: number, toPort: number): string[][] {
    const redirect = ["-j", "REDIRECT", "--to-ports", String(toPort)];
    const tcp = ["-p", "tcp", "--dport", String(port)];
    return [
      [this.#in, ...tcp, ...redirect],
      [
        this.#out,
        "-o",
        "lo",
        ...tcp,
        "-m",
        "owner",
        "!",
        "--gid-owner",
        String(this.#o.agentGid),
        ...redirect,
      ],
    ];
  }

  async #deleteRules(port: number, toPort: number): Promise<void> {
    for (const family of this.#o.families) {
      for (const rule of this.#rules(port, toPort)) {
        await this.#o.run(family, ["-t", "nat", "-D", ...rule]).catch(() => {});
      }
    }
  }

  async #createChains(): Promise<void> {
    for (const family of this.#o.families) {
      // A chain of this port left by an agent that died is ours to replace.
      await removeChains(this.#o.run, family, this.#o.agentPort);
      await this.#o.run(family, ["-t", "nat", "-N", this.#in]);
      await this.#o.run(family, ["-t", "nat", "-N", this.#out]);
      await this.#o.run(family, ["-t", "nat", "-I", "PREROUTING", "1", "-j", this.#in]);
      await this.#o.run(family, ["-t", "nat", "-I", "OUTPUT", "1", "-j", this.#out]);
    }
  }

  #serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(work, work);
    this.#queue = next.catch(() => {});
    return next;
  }
}

/**
 * Removes the chains of agents that are gone: those whose port nobody in the pod listens on
 * (a live agent always does). Returns the ports whose chains it removed.
 */
export async function sweepStale(
  families: Family[],
  ownPort: number,
  run: IptablesRunner = runIptables,
  listening: (port: number) => Promise<string[]> = listenersOn,
): Promise<number[]> {
  const removed = new Set<number>();
  for (const family of families) {
    const ports = new Set<number>();
    for (const line of (await run(family, ["-t", "nat", "-S"])).split("\n")) {
      const match = CHAIN.exec(line.trim());
      if (match) ports.add(Number(match[2]));
    }
    for (const port of ports) {
      if (port === ownPort || (await listening(port)).length > 0) continue;
      await removeChains(run, family, port);
      removed.add(port);
    }
  }
  return [...removed];
}

/** Removes agent `port`'s jumps and chains, whichever of them exist. */
async function removeChains(run: IptablesRunner, family: Family, port: number): Promise<void> {
  const quiet = (args: string[]) => run(family, ["-t", "nat", ...args]).catch(() => "");
  for (
    const [hook, chain] of [["PREROUTING", `RELAY-${port}-IN`], ["OUTPUT", `RELAY-${port}-OUT`]]
  ) {
    // A jump may have been added twice by a crash between steps: remove until none is left.
    for (let i = 0; i < 8; i++) {
      const ok = await run(family, ["-t", "nat", "-D", hook, "-j", chain]).then(
        () => true,
        () => false,
      );
      if (!ok) break;
    }
    await quiet(["-F", chain]);
    await quiet(["-X", chain]);
  }
}

/** An iptables failure as the client should read it. */
function redirectFailure(port: number, error: unknown): OpenError {
  if (error instanceof OpenError) return error;
  const why = describeError(error);
  if (/permission denied|operation not permitted|you must be root/i.test(why)) {
    return new OpenError(
      "forbidden",
      `cannot redirect port ${port}: the agent lacks NET_ADMIN in the pod (${why})`,
    );
  }
  return new OpenError("error", `cannot redirect port ${port}: ${why}`);
}

/**
 * The families to redirect in: IPv4, and IPv6 wherever the pod has it. With an IPv6 address
 * beyond lo and link-local, always; with ::1 alone (in-pod callers of `localhost` may still
 * connect over IPv6) when ip6tables' nat table answers, which such a pod need not have.
 */
export async function podFamilies(
  run: IptablesRunner = runIptables,
  ifInet6 = () => Deno.readTextFile("/proc/net/if_inet6"),
): Promise<Family[]> {
  let table: string;
  try {
    table = await ifInet6();
  } catch {
    return ["ipv4"];
  }
  const entries = table.split("\n").map((line) => line.trim().split(/\s+/))
    .filter((f) => f.length >= 6);
  if (entries.some((f) => f[5] !== "lo" && f[3] === "00")) return ["ipv4", "ipv6"];
  if (!entries.some((f) => f[5] === "lo")) return ["ipv4"];
  try {
    await run("ipv6", ["-t", "nat", "-S"]);
    return ["ipv4", "ipv6"];
  } catch {
    return ["ipv4"];
  }
}
