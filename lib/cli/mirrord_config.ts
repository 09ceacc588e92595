/**
 * mirrord's config file (`-f mirrord.json|yaml|toml`) for what relay's reverse forwards do:
 * `target` (like --target) and `feature.network.incoming` (steal, mirror or off).
 *
 * `-f` also takes krelay's targets file. Which one a file is: one whose content parses as a
 * JSON, YAML or TOML mapping with one of mirrord's top-level keys is a mirrord config; else a
 * file named `*.json`, `*.yaml`, `*.yml` or `*.toml` is neither, and refused; anything else
 * is a targets file (whose parser names a bad line).
 */
import { parse as parseToml } from "smol-toml";
import { parse as parseYaml } from "yaml";
import type { HttpFilter, IncomingRequest } from "../contract.ts";
import { UsageError } from "../errors.ts";

/** mirrord's top-level config keys: one of them makes a mapping a mirrord config. */
const MIRRORD_KEYS = new Set([
  "accept_invalid_certificates",
  "agent",
  "container",
  "experimental",
  "external_proxy",
  "feature",
  "internal_proxy",
  "kube_context",
  "kubeconfig",
  "operator",
  "sip_binaries",
  "skip_build_tools",
  "skip_processes",
  "target",
  "telemetry",
]);

/** A file named like a config is never read as a targets file. */
const CONFIG_NAME = /\.(json|ya?ml|toml)$/i;

/** Keys of `incoming` mirrord uses elsewhere than port-forward: ignored with a warning. */
const IGNORED_INCOMING_KEYS = new Set([
  "port_mapping",
  "ignore_localhost",
  "ignore_ports",
  "listen_ports",
  "on_concurrent_steal",
  "https_delivery",
]);

/** What relay takes from a mirrord config. */
export interface MirrordConfig {
  /** `target` as --target spells it (`pod/web`, `deploy/web`). */
  target?: string;
  /** `target.namespace`. */
  namespace?: string;
  /** `feature.network.incoming`'s mode: `off` becomes `listen` (never steal or mirror). */
  incoming?: IncomingRequest;
  /** `incoming.http_filter`: steal only the matching HTTP requests. */
  httpFilter?: HttpFilter;
  /** `incoming.http_filter.ports`: the -R ports the filter applies to (default: all). */
  httpFilterPorts?: number[];
  /** Lines to print once: keys read but not used. */
  warnings: string[];
}

/**
 * The mirrord config in `text`, or undefined when the file is a targets file. Exit 2 (naming
 * the file) when it is a mapping but not a mirrord config, or a key's value is wrong.
 */
export function readMirrordConfig(text: string, name: string): MirrordConfig | undefined {
  const parsed = parseMapping(text, name);
  if (!parsed || !Object.keys(parsed).some((key) => MIRRORD_KEYS.has(key))) {
    if (!CONFIG_NAME.test(name)) return undefined;
    throw new UsageError(
      `-f ${name}: not a mirrord config (a mapping with feature, target, agent, ...)` +
        (parsed
          ? Object.keys(parsed).length > 0
            ? `; its keys: ${Object.keys(parsed).join(", ")}`
            : "; it is empty"
          : "") +
        `, and a targets file (lines of [-n NS] TARGET PORT...) is not named .${
          name.split(".").pop()
        }`,
    );
  }
  const config: MirrordConfig = { warnings: [] };
  readTarget(parsed.target, name, config);
  const feature = child(parsed.feature, "feature", name);
  // As in mirrord, `network: true` is every network default and `false` turns incoming off.
  if (feature?.network === false) config.incoming = "listen";
  else if (feature?.network !== true) {
    readIncoming(child(feature?.network, "feature.network", name)?.incoming, name, config);
  }
  return config;
}

/** A mapping when the text is one in JSON, YAML or TOML; undefined when it is none of them. */
function parseMapping(text: string, name: string): Record<string, unknown> | undefined {
  const attempts: (() => unknown)[] = [
    () => parseYaml(text), // YAML is a superset of JSON
    () => parseToml(text),
  ];
  if (/\.toml$/i.test(name)) attempts.reverse();
  let firstError: unknown;
  for (const attempt of attempts) {
    let value: unknown;
    try {
      value = attempt();
    } catch (error) {
      firstError ??= error;
      continue;
    }
    if (isMapping(value)) return value;
  }
  // A file named as a config that parses as nothing: its first parser's error says where.
  if (CONFIG_NAME.test(name) && firstError !== undefined) {
    const why = firstError instanceof Error
      ? firstError.message.split("\n")[0].replace(/:\s*$/, "")
      : firstError;
    throw new UsageError(`-f ${name}: cannot parse it: ${why}`);
  }
  return undefined;
}

function readTarget(value: unknown, name: string, config: MirrordConfig): void {
  if (value === undefined || value === null) return;
  if (typeof value === "string") {
    config.target = value;
    return;
  }
  if (isMapping(value)) {
    if (value.path !== undefined) {
      if (typeof value.path !== "string") throw bad(name, "target.path", value.path, "a string");
      config.target = value.path;
    }
    if (value.namespace !== undefined) {
      if (typeof value.namespace !== "string") {
        throw bad(name, "target.namespace", value.namespace, "a string");
      }
      config.namespace = value.namespace;
    }
    return;
  }
  throw bad(name, "target", value, "a string or {path, namespace}");
}

function readIncoming(value: unknown, name: string, config: MirrordConfig): void {
  if (value === undefined || value === null) return;
  if (value === true) return void (config.incoming = "steal");
  if (value === false) return void (config.incoming = "listen");
  if (typeof value === "string") return void (config.incoming = mode(value, name));
  if (!isMapping(value)) {
    throw bad(name, "feature.network.incoming", value, '"steal", "mirror", "off" or a mapping');
  }
  const ignored: string[] = [];
  for (const [key, v] of Object.entries(value)) {
    if (key === "mode") {
      if (typeof v !== "string") throw bad(name, "incoming.mode", v, '"steal", "mirror" or "off"');
      config.incoming = mode(v, name);
    } else if (key === "http_filter") {
      readHttpFilter(v, name, config);
    } else if (IGNORED_INCOMING_KEYS.has(key)) {
      ignored.push(key);
    } else {
      throw new UsageError(
        `-f ${name}: unknown key feature.network.incoming.${key} (relay reads mode; ` +
          `it ignores ${[...IGNORED_INCOMING_KEYS].join(", ")})`,
      );
    }
  }
  if (ignored.length > 0) {
    config.warnings.push(
      `-f ${name}: ignoring feature.network.incoming.${ignored.join(", .")} ` +
        `(not used by port forwarding)`,
    );
  }
}

/** mirrord's `http_filter`: `header_filter`, `path_filter` and the `ports` they apply to. */
function readHttpFilter(value: unknown, name: string, config: MirrordConfig): void {
  const key = "feature.network.incoming.http_filter";
  if (!isMapping(value)) throw bad(name, key, value, "a mapping");
  const filter: HttpFilter = {};
  for (const [field, v] of Object.entries(value)) {
    if (field === "header_filter" || field === "path_filter") {
      if (typeof v !== "string") throw bad(name, `${key}.${field}`, v, "a regular expression");
      filter[field === "header_filter" ? "header" : "path"] = v;
    } else if (field === "ports") {
      if (!Array.isArray(v) || !v.every((p) => Number.isInteger(p) && p > 0 && p < 65536)) {
        throw bad(name, `${key}.ports`, v, "a list of ports");
      }
      config.httpFilterPorts = v;
    } else {
      throw new UsageError(
        `-f ${name}: ${key}.${field} is not supported (relay reads header_filter, ` +
          `path_filter and ports)`,
      );
    }
  }
  if (filter.header !== undefined || filter.path !== undefined) config.httpFilter = filter;
}

function mode(value: string, name: string): IncomingRequest {
  if (value === "steal" || value === "mirror") return value;
  if (value === "off") return "listen";
  throw bad(name, "feature.network.incoming", value, '"steal", "mirror" or "off"');
}

function child(value: unknown, key: string, name: string): Record<string, unknown> | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isMapping(value)) throw bad(name, key, value, "a mapping");
  return value;
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}

function bad(name: string, key: string, value: unknown, expected: string): UsageError {
  return new UsageError(
    `-f ${name}: invalid ${key} ${JSON.stringify(value)}: expected ${expected}`,
  );
}
