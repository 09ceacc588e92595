/**
 * A container's resource limits, enforced the way a kubelet does: its process goes into a
 * cgroup of its own with a memory limit (the kernel OOM-kills it beyond that) and a CFS CPU
 * quota. Without this, a pod that outgrew its limit would pass every test here and be killed
 * in a real cluster. Works with cgroup v2 and with v1 controllers mounted separately; where
 * neither is writable the shim runs containers unlimited and says so once.
 */
import { quantityToScalar } from "@kubernetes/client-node/dist/util.js";

const ROOT = "/sys/fs/cgroup";
/** Every container's cgroup lives under this name, so `cluster down` can find them all. */
export const SHIM_CGROUP = "relay-shim";
/** The CFS period a kubelet uses by default. */
const CPU_PERIOD_US = 100_000;

/** The limits of a container spec, as a pod declares them. */
export interface ResourceLimits {
  memory?: string;
  cpu?: string;
}

let warned = false;

/** The cgroup version here: one unified tree (2), a tree per controller (1), or none. */
function cgroupVersion(): 1 | 2 | undefined {
  try {
    Deno.statSync(`${ROOT}/cgroup.controllers`);
    return 2;
  } catch { /* not v2 */ }
  try {
    Deno.statSync(`${ROOT}/memory/memory.limit_in_bytes`);
    Deno.statSync(`${ROOT}/cpu/cpu.cfs_quota_us`);
    return 1;
  } catch {
    return undefined;
  }
}

/** One container's cgroup(s): created with its limits, given its pid, removed after it exits. */
export class ContainerCgroup {
  readonly #dirs: string[];
  readonly #version: 1 | 2;

  private constructor(dirs: string[], version: 1 | 2) {
    this.#dirs = dirs;
    this.#version = version;
  }

  /**
   * A cgroup holding `limits` for the container `id` (unique on this node), or undefined when
   * the container has no limits or cgroups cannot be written here (told once on stderr).
   */
  static create(id: string, limits: ResourceLimits | undefined): ContainerCgroup | undefined {
    if (!limits?.memory && !limits?.cpu) return undefined;
    const version = cgroupVersion();
    try {
      if (!version) throw new Error(`no writable cgroup hierarchy under ${ROOT}`);
      const memory = limits.memory ? String(quantityToScalar(limits.memory)) : undefined;
      const quota = limits.cpu
        ? String(Math.max(1000, Math.round(Number(quantityToScalar(limits.cpu)) * CPU_PERIOD_US)))
        : undefined;
      if (version === 2) {
        const dir = `${ROOT}/${SHIM_CGROUP}/${id}`;
        Deno.mkdirSync(`${ROOT}/${SHIM_CGROUP}`, { recursive: true });
        Deno.writeTextFileSync(`${ROOT}/${SHIM_CGROUP}/cgroup.subtree_control`, "+memory +cpu");
        Deno.mkdirSync(dir, { recursive: true });
        if (memory) Deno.writeTextFileSync(`${dir}/memory.max`, memory);
        if (quota) Deno.writeTextFileSync(`${dir}/cpu.max`, `${quota} ${CPU_PERIOD_US}`);
        return new ContainerCgroup([dir], 2);
      }
      const dirs: string[] = [];
      if (memory) {
        const dir = `${ROOT}/memory/${SHIM_CGROUP}/${id}`;
        Deno.mkdirSync(dir, { recursive: true });
        Deno.writeTextFileSync(`${dir}/memory.limit_in_bytes`, memory);
        dirs.push(dir);
      }
      if (quota) {
        const dir = `${ROOT}/cpu/${SHIM_CGROUP}/${id}`;
        Deno.mkdirSync(dir, { recursive: true });
        Deno.writeTextFileSync(`${dir}/cpu.cfs_period_us`, String(CPU_PERIOD_US));
        Deno.writeTextFileSync(`${dir}/cpu.cfs_quota_us`, quota);
        dirs.push(dir);
      }
      return new ContainerCgroup(dirs, 1);
    } catch (error) {
      if (!warned) {
        warned = true;
        console.error(`shim: resource limits not enforced: ${error}`);
      }
      return undefined;
    }
  }

  /**
   * A shell command that moves the shell running it into the cgroup, to run before it execs
   * the container's program: a process moved after it started may have forked already, and
   * its children would escape the limits.
   */
  get enterCommand(): string {
    return this.#dirs.map((dir) => `echo $$ >'${dir}/cgroup.procs'`).join(" && ");
  }

  /** Whether the kernel OOM-killed a process of this cgroup since it was created. */
  oomKilled(): boolean {
    for (const dir of this.#dirs) {
      const file = this.#version === 2 ? `${dir}/memory.events` : `${dir}/memory.oom_control`;
      try {
        const kills = /^oom_kill (\d+)$/m.exec(Deno.readTextFileSync(file));
        if (kills && Number(kills[1]) > 0) return true;
      } catch { /* not the memory controller's directory */ }
    }
    return false;
  }

  /** Removes the cgroup; its processes must have exited. */
  remove(): void {
    for (const dir of this.#dirs) {
      try {
        Deno.removeSync(dir);
      } catch { /* gone already, or a process lingers: cluster down sweeps it */ }
    }
  }
}

/** Removes every container cgroup the shim made (they must be empty): for `cluster down`. */
export function removeShimCgroups(): void {
  for (
    const base of [
      `${ROOT}/${SHIM_CGROUP}`,
      `${ROOT}/memory/${SHIM_CGROUP}`,
      `${ROOT}/cpu/${SHIM_CGROUP}`,
    ]
  ) {
    try {
      for (const entry of Deno.readDirSync(base)) {
        if (entry.isDirectory) {
          try {
            Deno.removeSync(`${base}/${entry.name}`);
          } catch { /* still has a process */ }
        }
      }
      Deno.removeSync(base);
    } catch { /* never made, or not empty */ }
  }
}
