/** `--patch` / `--patch-file`: a merge patch for the agent pod, JSON or YAML. */
import { parse } from "yaml";
import { UsageError } from "../errors.ts";

/**
 * Parses a patch document (JSON is YAML) into an object. `origin` names where it came from
 * (`--patch`, `--patch-file p.yaml`) so the error can point at it.
 */
export function parsePatch(text: string, origin: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = parse(text);
  } catch (error) {
    const detail = error instanceof Error
      ? error.message.split("\n")[0].replace(/:\s*$/, "")
      : String(error);
    throw new UsageError(`invalid ${origin}: not JSON or YAML: ${detail}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    const got = value === null || value === undefined
      ? "nothing"
      : Array.isArray(value)
      ? "a list"
      : `a ${typeof value}`;
    throw new UsageError(
      `invalid ${origin}: expected an object such as {"spec":{…}}, got ${got}`,
    );
  }
  return value as Record<string, unknown>;
}
