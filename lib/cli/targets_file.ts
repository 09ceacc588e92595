/**
 * krelay's targets file (`-f FILE`, `-f -` for stdin): one target a line, in the command
 * line's syntax, optionally with `-n NAMESPACE`; blank lines are ignored, and so is what
 * follows `#` or `//` at the start of a line or after a space.
 */
import { UsageError } from "../errors.ts";
import type { ForwardSpec } from "../plan.ts";
import { parseForwardArgs } from "./forward_args.ts";
import { parseNamespace } from "./target.ts";

/** Options for {@link parseTargetsFile}. */
export interface TargetsFileOptions {
  /** The file's name as the user gave it, used in sources and errors (`targets.txt:3`). */
  name: string;
  /** Namespace for lines without their own `-n` (the global `-n`). */
  namespace?: string;
}

/** Parses a targets file's text; every error names `FILE:LINE`. */
export function parseTargetsFile(text: string, options: TargetsFileOptions): ForwardSpec[] {
  const forwards: ForwardSpec[] = [];
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    // Neither a target nor a port holds "#" or "//" after a space.
    const line = raw.replace(/(^|\s)(#|\/\/).*$/, "").trim();
    if (line === "") continue;
    const source = `${options.name}:${index + 1}`;
    try {
      const { namespace, words } = splitNamespace(line.split(/\s+/), options.namespace);
      if (words.length === 0) throw new UsageError(`no target after "-n ${namespace}"`);
      forwards.push(...parseForwardArgs(words, { namespace, source }));
    } catch (error) {
      if (error instanceof UsageError) throw new UsageError(`${source}: ${error.message}`);
      throw error;
    }
  }
  if (forwards.length === 0) {
    throw new UsageError(`targets file ${options.name} has no targets (one TARGET PORT… a line)`);
  }
  return forwards;
}

/** Takes `-n NS`, `-n=NS`, `-nNS`, `--namespace NS` and `--namespace=NS` out of a line. */
function splitNamespace(
  tokens: string[],
  fallback: string | undefined,
): { namespace?: string; words: string[] } {
  let namespace = fallback;
  const words: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (token === "-n" || token === "--namespace") {
      const value = tokens[++i];
      if (value === undefined) throw new UsageError(`"${token}" needs a namespace`);
      namespace = value;
    } else if (token.startsWith("--namespace=")) {
      namespace = token.slice("--namespace=".length);
    } else if (token.startsWith("-n")) {
      namespace = token.slice(token[2] === "=" ? 3 : 2);
    } else if (token.startsWith("-")) {
      throw new UsageError(`unknown flag "${token}": a targets file line takes only -n NAMESPACE`);
    } else {
      words.push(token);
    }
  }
  if (namespace === "") throw new UsageError(`empty namespace after -n`);
  // The global -n was checked already; a line's own is checked as strictly.
  if (namespace !== fallback && namespace !== undefined) parseNamespace(namespace, "-n");
  return { namespace, words };
}
