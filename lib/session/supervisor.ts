/**
 * The agent supervisor: owns the run's agent pod and is how the tunnel pool reaches it.
 *
 * A failed connect alone does not say whether the agent is gone or only unreachable (API
 * server restarting, network blip); the pod's state does. So when a connect fails the
 * supervisor asks the API server about the agent pod: deleted, being deleted or exited means a
 * new agent (new Job, new token) is started and the connect is retried on it; anything else
 * (including an API server that cannot be asked) leaves the failure to the pool's backoff.
 */
import type { AgentPod } from "../kube/agent_pod.ts";
import type { Tunnel } from "../tunnel/types.ts";

/** What the supervisor needs from the cluster; run.ts wires the real calls. */
export interface AgentSupervisorOptions {
  /** Creates an agent pod and waits until it is Running. */
  start: () => Promise<AgentPod>;
  /** Opens one tunnel to `agent` (dial plus handshake with its token). */
  connect: (agent: AgentPod) => Promise<Tunnel>;
  /** Why `agent` cannot serve any more, or undefined while it still can; may throw. */
  goneReason: (agent: AgentPod) => Promise<string | undefined>;
  /** One line for the user whenever the agent is replaced. */
  log: (line: string) => void;
  /**
   * Called when a replacement agent cannot be started (stuck Pending, quota, …): the run
   * cannot go on, and retrying would only create more Jobs.
   */
  onFailure: (error: unknown) => void;
  /** Default STARTING_GRACE_MS. */
  startingGraceMs?: number;
}

/**
 * How long after its pod runs a new agent's refused connects are only retried, not taken as a
 * sign that it is gone: it listens within tens of milliseconds of starting.
 */
export const STARTING_GRACE_MS = 3_000;

/** Keeps one live agent for the run, replacing it when its pod is gone. */
export class AgentSupervisor {
  #current: AgentPod | undefined;
  #replacing: Promise<AgentPod> | undefined;
  #stopped = false;
  /** A replacement could not be started (see onFailure). */
  #gaveUp = false;
  /** When the current agent was started, and whether a tunnel has reached it since. */
  #adoptedAt = 0;
  #reached = false;

  constructor(readonly options: AgentSupervisorOptions) {}

  /** Starts the first agent. */
  async start(): Promise<AgentPod> {
    const agent = await this.options.start();
    return this.#adopt(agent);
  }

  /** The agent tunnels currently go to. */
  get current(): AgentPod | undefined {
    return this.#current;
  }

  /**
   * Opens a tunnel to the current agent; if that fails because the agent is gone, starts a
   * new one and opens the tunnel there. Rejects with the original failure otherwise.
   */
  async connect(): Promise<Tunnel> {
    const agent = this.#current;
    if (!agent) throw new Error("the agent has not been started");
    try {
      const tunnel = await this.options.connect(agent);
      if (this.#current === agent) this.#reached = true;
      return tunnel;
    } catch (error) {
      if (this.#stopped) throw error;
      // A new agent's pod runs a moment before the agent listens: its first port-forwards may
      // be refused, and asking about the pod would only delay the retry by a round trip.
      const grace = this.options.startingGraceMs ?? STARTING_GRACE_MS;
      if (!this.#reached && Date.now() - this.#adoptedAt < grace) throw error;
      const next = await this.#replaceIfGone(agent);
      if (!next) throw error;
      return await this.options.connect(next);
    }
  }

  /** Deletes the agent (and one being started); returns the pod that was current, if any. */
  async stop(): Promise<AgentPod | undefined> {
    this.#stopped = true;
    await this.#replacing?.catch(() => {});
    const agent = this.#current;
    await agent?.stop();
    return agent;
  }

  /** The replacement for `agent` if it is gone (started once, however many callers ask). */
  async #replaceIfGone(agent: AgentPod): Promise<AgentPod | undefined> {
    if (this.#current !== agent) return this.#current;
    if (this.#replacing) return await this.#replacing;
    let why: string | undefined;
    try {
      why = await this.options.goneReason(agent);
    } catch {
      return undefined; // the API server cannot say: treat it as a blip, the pool backs off
    }
    if (!why || this.#stopped || this.#gaveUp) return undefined;
    if (this.#current !== agent) return this.#current;
    this.#replacing ??= this.#replace(agent, why);
    return await this.#replacing;
  }

  async #replace(old: AgentPod, why: string): Promise<AgentPod> {
    try {
      // An ephemeral agent's pod is the user's target, not relay's own.
      const pod = old.ephemeral ? "target pod" : "agent pod";
      this.options.log(`${pod} ${old.namespace}/${old.podName} ${why}; starting a new agent`);
      // Its Job may still exist (a deleted pod, an exited process): remove it with the pod.
      old.stop().catch(() => {});
      let next: AgentPod;
      try {
        next = await this.options.start();
      } catch (error) {
        // The run ends now: a connect that learns of the gone agent later must not start
        // another Job.
        this.#gaveUp = true;
        if (!this.#stopped) this.options.onFailure(error);
        throw error;
      }
      this.options.log(`new agent pod ${next.namespace}/${next.podName} is running`);
      return this.#adopt(next);
    } finally {
      this.#replacing = undefined;
    }
  }

  #adopt(agent: AgentPod): AgentPod {
    this.#current = agent;
    this.#reached = false;
    this.#adoptedAt = Date.now();
    // A stop that raced with the start must not leave the new agent behind.
    if (this.#stopped) agent.stop().catch(() => {});
    return agent;
  }
}
