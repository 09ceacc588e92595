/** Turns `TARGET PORT… [TARGET PORT…]…` (argv, or one line of a targets file) into forwards. */
import { UsageError } from "../errors.ts";
import type { ForwardSpec } from "../plan.ts";
import { parsePortSpec } from "./ports.ts";
import { parseTargetRef } from "./target.ts";

/** Options for {@link parseForwardArgs}. */
export interface ForwardArgsOptions {
  /** Namespace for every target in these words (`-n`). */
  namespace?: string;
  /** Where the words came from, recorded on each spec: `argv`, `targets.txt:3`. */
  source: string;
}

/**
 * Groups words into forwards. The first word is always a target; after it, a word with a
 * "/" starts the next target and any other word is a port. So a bare pod name works as the
 * first target (as in kubectl), and later pods are written `pod/NAME`.
 */
export function parseForwardArgs(
  words: readonly string[],
  options: ForwardArgsOptions,
): ForwardSpec[] {
  const groups: { written: string; forward: ForwardSpec }[] = [];
  for (const [index, word] of words.entries()) {
    if (index === 0 && /^(?:\d+|:)[\d:@a-z]*$/i.test(word) && /^\d+$|[:@]/.test(word)) {
      throw new UsageError(
        `"${word}" looks like a port, but a TARGET comes first: like svc/NAME ${word} ` +
          `(or pod/${word} for a pod with that name)`,
      );
    }
    if (index === 0 || word.includes("/")) {
      const target = parseTargetRef(word, options.namespace);
      groups.push({ written: word, forward: { target, ports: [], source: options.source } });
    } else {
      groups[groups.length - 1].forward.ports.push(parsePortSpec(word));
    }
  }
  for (const { written, forward } of groups) {
    if (forward.ports.length === 0) {
      throw new UsageError(
        `target "${written}" has no ports: expected TARGET [local:]remote[@tcp|@udp]…`,
      );
    }
  }
  return groups.map((group) => group.forward);
}
