/**
 * relay: a drop-in replacement for `kubectl port-forward` that reaches anything the cluster
 * can reach, over TCP and UDP, through a multiplexed tunnel to an in-cluster agent.
 * `relay agent` is the in-cluster end of that tunnel, from the same binary.
 */
import { Command } from "@commander-js/extra-typings";
import { VERSION } from "./lib/version.ts";

function buildProgram() {
  const program = new Command()
    .name("relay")
    .description(
      "Forward local ports to any address, Service or workload reachable from inside a Kubernetes cluster.",
    )
    .version(VERSION, "-V, --version", "print relay's version");
  program
    .command("agent")
    .description("run the in-cluster end of the tunnel (inside the agent pod)")
    .action(() => {
      console.error("relay agent: not implemented yet");
      Deno.exit(1);
    });
  return program;
}

if (import.meta.main) {
  await buildProgram().parseAsync(Deno.args, { from: "user" });
}
