/** What the e2e tests ask about relay's agent pods, and running checks a few at a time. */
import { kubectl } from "./harness.ts";

/** The label every agent Job and pod carries. */
export const AGENT_SELECTOR = "app.kubernetes.io/name=relay-agent";

/** Names of the agent pods in `namespace`. */
export async function agentPodNames(namespace: string): Promise<string[]> {
  const out = await kubectl([
    "get",
    "pods",
    "-n",
    namespace,
    "-l",
    AGENT_SELECTOR,
    "-o",
    "jsonpath={.items[*].metadata.name}",
  ]);
  return out.split(/\s+/).filter(Boolean);
}

/** Runs `f` over `items`, at most `limit` at a time (the machine has two cores). */
export async function inBatches<T>(
  items: T[],
  limit: number,
  f: (item: T) => Promise<void>,
): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: limit }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await f(item);
  }));
}
