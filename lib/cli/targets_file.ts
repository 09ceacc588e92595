/**
 * krelay's targets file (`-f FILE`, `-f -` for stdin): one target a line, in the command
 * line's syntax, optionally with `-n NAMESPACE` and `-l ADDRESS`; blank lines are ignored,
 * and so is what follows `#` or `//` at the start of a line or after a space.
 */
import { UsageError } from "../errors.ts";
import type { ForwardSpec } from "../plan.ts";
import { parseForwardArgs } from "./forward_args.ts";
import { parseNamespace } from "./target.ts";
import { parseAddresses } from "./addresses.ts";

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
      const { namespace, addresses, words } = splitFlags(line.split(/\s+/), options.namespace);
      if (words.length === 0) throw new UsageError(`no target on the line, only its flags`);
      const parsed = parseForwardArgs(words, { namespace, source });
      if (addresses.length > 0) {
        const local = parseAddresses(addresses);
        for (const forward of parsed) forward.addresses = local;
      }
      forwards.push(...parsed);
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

/**
 * Takes a line's flags out of it, as krelay's do: `-n NS` (also `-n=NS`, `-nNS`,
 * `--namespace NS`, `--namespace=NS`) and `-l ADDRESS` (likewise, `--address`; repeatable,
 * comma-separated).
 */
function splitFlags(
  tokens: string[],
  fallback: string | undefined,
): { namespace?: string; addresses: string[]; words: string[] } {
  let namespace = fallback;
  const addresses: string[] = [];
  const words: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    const flag = /^(-n|--namespace|-l|--address)(=?)(.*)$/.exec(token);
    if (flag) {
      const [, name, equals, attached] = flag;
      // `-nfoo`, as pflag takes it; `--namespacefoo` is not a flag.
      if (!equals && attached && name.startsWith("--")) {
        throw new UsageError(`unknown flag "${token}": a targets file line takes -n and -l`);
      }
      const value = equals || attached ? attached : tokens[++i];
      const what = name === "-n" || name === "--namespace" ? "a namespace" : "an address";
      if (value === undefined) throw new UsageError(`"${token}" needs ${what}`);
      if (what === "a namespace") namespace = value;
      else addresses.push(value);
    } else if (token.startsWith("-")) {
      throw new UsageError(`unknown flag "${token}": a targets file line takes -n and -l`);
    } else {
      words.push(token);
    }
  }
  if (namespace === "") throw new UsageError(`empty namespace after -n`);
  // The global -n was checked already; a line's own is checked as strictly.
  if (namespace !== fallback && namespace !== undefined) parseNamespace(namespace, "-n");
  return { namespace, addresses, words };
}
