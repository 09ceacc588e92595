/**
 * One container of one pod as a local process in the pod's network namespace: started from
 * the image map, restarted per the pod's restartPolicy (counting restarts, backing off),
 * probed for readiness, and stopped on request.
 */
import { isAlive, stopProcess } from "../proc.ts";
import { ContainerCgroup } from "./cgroups.ts";
import { containerArgv, type ImageEntry } from "./images.ts";
import { runProbe } from "./probes.ts";
import type { ContainerSpec, ContainerState, ContainerStatus } from "./types.ts";

/** Everything a container needs from its pod and from the shim. */
export interface ContainerOptions {
  spec: ContainerSpec;
  /** undefined when the image is not in the image map: the container never starts. */
  image: ImageEntry | undefined;
  netns: string;
  podIp: string;
  restartPolicy: "Always" | "OnFailure" | "Never";
  /** The environment of the process (PATH, HOSTNAME, the spec's env, …). */
  env: Record<string, string>;
  /**
   * Variables read from Secrets, asked for before every start; a rejection (a Secret not
   * there yet) leaves the container waiting in CreateContainerConfigError, retried as a
   * kubelet does.
   */
  secretEnv?: () => Promise<Record<string, string>>;
  workingDir: string;
  /** The argv prefix that applies the container's group and capabilities (privileges.ts). */
  privileges: string[];
  /** Where `<name>.pid` and `<name>.log` go. */
  stateDir: string;
  /** Called whenever the status changed. */
  onChange: () => void;
  /** Records a Kubernetes Event about this container. */
  onEvent: (type: "Normal" | "Warning", reason: string, message: string) => void;
}

const MAX_BACKOFF_MS = 10_000;
/** A container that ran this long before exiting starts over with no backoff. */
const BACKOFF_RESET_MS = 10_000;

/** A container's process, its restarts and its readiness. */
export class Container {
  readonly #o: ContainerOptions;
  #state: ContainerState = { waiting: { reason: "ContainerCreating" } };
  #lastState: ContainerState | Record<string, never> = {};
  #restartCount = 0;
  #ready = false;
  #pid: number | undefined;
  #stopping = false;
  #done: Promise<void> = Promise.resolve();
  readonly #sleepers = new Set<() => void>();

  constructor(options: ContainerOptions) {
    this.#o = options;
  }

  /** The container's name. */
  get name(): string {
    return this.#o.spec.name;
  }

  /** Whether it has exited for good (and will not be restarted). */
  get finished(): boolean {
    return "terminated" in this.#state && !this.#willRestart(this.#state.terminated.exitCode);
  }

  /** Whether it is waiting for an image the shim does not know. */
  get imageMissing(): boolean {
    return this.#o.image === undefined;
  }

  /** Whether its process is running now. */
  get running(): boolean {
    return "running" in this.#state;
  }

  /** The exit code of its last run, if it has one. */
  get exitCode(): number | undefined {
    return "terminated" in this.#state ? this.#state.terminated.exitCode : undefined;
  }

  /** Starts the run/restart loop and the readiness prober. */
  start(): void {
    this.#done = this.#o.image ? this.#loop(this.#o.image) : this.#imageNotFound();
    if (this.#o.spec.readinessProbe) this.#probeLoop();
  }

  /** Stops the process (SIGTERM, then SIGKILL after `graceMs`) and the restart loop. */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    for (const wake of this.#sleepers) wake();
    if (this.#pid !== undefined) await stopProcess(this.#pid, graceMs);
    await this.#done;
  }

  /** The container's status in the API's shape. */
  status(): ContainerStatus {
    return {
      name: this.name,
      image: this.#o.spec.image,
      imageID: this.#o.image ? `relay-shim://${this.#o.spec.image}` : "",
      ...(this.#pid !== undefined ? { containerID: `relay-shim://${this.#pid}` } : {}),
      ready: this.#ready && this.running,
      started: this.running,
      restartCount: this.#restartCount,
      state: this.#state,
      lastState: this.#lastState,
    };
  }

  #willRestart(exitCode: number): boolean {
    if (this.#stopping) return false;
    if (this.#o.restartPolicy === "Always") return true;
    return this.#o.restartPolicy === "OnFailure" && exitCode !== 0;
  }

  #set(state: ContainerState): void {
    this.#state = state;
    this.#o.onChange();
  }

  async #imageNotFound(): Promise<void> {
    const { image } = this.#o.spec;
    const message = `Failed to pull image "${image}": the relay kubelet shim has no command ` +
      `for this image (known: *relay-agent, relay-test/echo, relay-test/dns, redis)`;
    this.#o.onEvent("Warning", "Failed", message);
    this.#set({ waiting: { reason: "ErrImagePull", message } });
    await this.#pause(2000);
    if (this.#stopping) return;
    this.#o.onEvent("Normal", "BackOff", `Back-off pulling image "${image}"`);
    this.#set({
      waiting: { reason: "ImagePullBackOff", message: `Back-off pulling image "${image}"` },
    });
  }

  async #loop(image: ImageEntry): Promise<void> {
    let backoffMs = 0;
    while (!this.#stopping) {
      const env = await this.#environment();
      if (env === undefined) return;
      const startedAt = new Date();
      const exit = await this.#runOnce(image, startedAt, env);
      if (exit === undefined) return;
      const terminated = {
        exitCode: exit.code,
        ...(exit.signal ? { signal: exit.signal } : {}),
        reason: exit.oomKilled ? "OOMKilled" : exit.code === 0 ? "Completed" : "Error",
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
      };
      this.#ready = false;
      if (!this.#willRestart(exit.code)) {
        this.#set({ terminated });
        return;
      }
      this.#lastState = { terminated };
      this.#restartCount++;
      backoffMs = Date.now() - startedAt.getTime() > BACKOFF_RESET_MS
        ? 0
        : Math.min(MAX_BACKOFF_MS, Math.max(500, backoffMs * 2));
      if (backoffMs > 0) {
        this.#o.onEvent("Warning", "BackOff", `Back-off ${backoffMs} ms restarting ${this.name}`);
        this.#set({
          waiting: { reason: "CrashLoopBackOff", message: `back-off ${backoffMs} ms restarting` },
        });
      }
      await this.#pause(backoffMs);
    }
  }

  /** The process environment, Secrets included; undefined if stopped while waiting for one. */
  async #environment(): Promise<Record<string, string> | undefined> {
    while (!this.#stopping) {
      try {
        return { ...this.#o.env, ...await this.#o.secretEnv?.() };
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        this.#o.onEvent("Warning", "Failed", `Error: ${message}`);
        this.#set({ waiting: { reason: "CreateContainerConfigError", message } });
        await this.#pause(1000);
      }
    }
    return undefined;
  }

  /** Runs the process once; resolves with how it ended, or undefined if it never started. */
  async #runOnce(
    image: ImageEntry,
    startedAt: Date,
    env: Record<string, string>,
  ): Promise<{ code: number; signal?: number; oomKilled: boolean } | undefined> {
    const argv = containerArgv(image, this.#o.spec);
    const log = `${this.#o.stateDir}/${this.name}.log`;
    const cgroup = ContainerCgroup.create(
      `${this.#o.stateDir.split("/").pop()}-${this.name}`,
      this.#o.spec.resources?.limits,
    );
    // setsid makes the process a group leader so stop() reaches its children too;
    // ip netns exec, setsid and `sh -c exec` all exec in place, so the pid is the container's.
    const inPod = [
      "ip",
      "netns",
      "exec",
      this.#o.netns,
      "setsid",
      ...this.#o.privileges,
      "sh",
      "-c",
      `exec "$@" </dev/null >>'${log}' 2>&1`,
      "sh",
      ...argv,
    ];
    // The cgroup is entered first, by a shell that then execs all of that: inside `ip netns
    // exec`, /sys is the namespace's own and has no cgroup tree.
    const full = cgroup
      ? ["sh", "-c", `${cgroup.enterCommand} && exec "$@"`, "sh", ...inPod]
      : inPod;
    const child = new Deno.Command(full[0], {
      args: full.slice(1),
      env,
      clearEnv: true,
      cwd: this.#o.workingDir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#pid = child.pid;
    await Deno.writeTextFile(`${this.#o.stateDir}/${this.name}.pid`, `${child.pid}\n`);
    this.#o.onEvent("Normal", "Started", `Started container ${this.name} (pid ${child.pid})`);
    if (!this.#o.spec.readinessProbe) this.#ready = true;
    this.#set({ running: { startedAt: startedAt.toISOString() } });
    const exit = exitOf(await child.status);
    const oomKilled = cgroup?.oomKilled() ?? false;
    cgroup?.remove();
    if (oomKilled) {
      this.#o.onEvent("Warning", "OOMKilling", `${this.name} went over its memory limit`);
    }
    return { ...exit, oomKilled };
  }

  async #probeLoop(): Promise<void> {
    const probe = this.#o.spec.readinessProbe!;
    const periodMs = (probe.periodSeconds ?? 10) * 1000;
    const success = probe.successThreshold ?? 1;
    const failure = probe.failureThreshold ?? 3;
    let passes = 0;
    let fails = 0;
    let runningSince: string | undefined;
    while (!this.#stopping) {
      if (!("running" in this.#state) || this.#pid === undefined || !isAlive(this.#pid)) {
        passes = fails = 0;
        runningSince = undefined;
        await this.#pause(200);
        continue;
      }
      if (runningSince !== this.#state.running.startedAt) {
        runningSince = this.#state.running.startedAt;
        await this.#pause((probe.initialDelaySeconds ?? 0) * 1000);
        continue;
      }
      const ok = await runProbe(probe, {
        netns: this.#o.netns,
        podIp: this.#o.podIp,
        env: this.#o.env,
        ports: this.#o.spec.ports ?? [],
      });
      if (ok) {
        fails = 0;
        if (++passes >= success && !this.#ready) {
          this.#ready = true;
          this.#o.onChange();
        }
      } else {
        passes = 0;
        if (++fails >= failure && this.#ready) {
          this.#ready = false;
          this.#o.onChange();
        }
      }
      await this.#pause(this.#ready ? periodMs : Math.min(periodMs, 1000));
    }
  }

  /** Sleeps, but wakes early when the container is being stopped. */
  #pause(ms: number): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#sleepers.add(done);
    });
  }
}

const SIGNAL_NUMBERS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGABRT: 6,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGTERM: 15,
};

/** The exit code a shell reports for a process: 128 + the signal number when it was killed. */
function exitOf(status: Deno.CommandStatus): { code: number; signal?: number } {
  if (!status.signal) return { code: status.code };
  const signal = SIGNAL_NUMBERS[status.signal] ?? 0;
  return { code: 128 + signal, signal };
}
