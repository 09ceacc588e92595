/**
 * `relay proxy`: its subcommand (the forwarding form's session flags, and its own) and its
 * plan: one local SOCKS5/HTTP proxy into the cluster, with forwards beside it when targets
 * follow (`relay proxy svc/db 5432`).
 */
import { Command, type Option } from "@commander-js/extra-typings";
import { UsageError } from "../errors.ts";
import { isLoopback, LOCALHOST } from "../net/address.ts";
import type { Plan, ProxyCredentials, ProxySpec } from "../plan.ts";
import { type CliIo, type CommandOptions, toPlan } from "./plan_build.ts";
import { parsePortNumber } from "./ports.ts";

/** The proxy's port when `--port` is not given: SOCKS's registered port. */
export const PROXY_DEFAULT_PORT = 1080;

/** The forwarding form's flags that mean the same for the proxy (the session's, not targets'). */
const SHARED_FLAGS = new Set([
  "--namespace",
  "--address",
  "--patch",
  "--patch-file",
  "--agent-image",
  "--server.image",
  "--agent-namespace",
  "--server.namespace",
  "--tunnels",
  "--udp-idle-timeout",
  "--kubeconfig",
  "--context",
  "--cluster",
  "--user",
  "--server",
  "--token",
  "--certificate-authority",
  "--client-certificate",
  "--client-key",
  "--tls-server-name",
  "--insecure-skip-tls-verify",
  "--as",
  "--as-group",
  "--as-uid",
  "--request-timeout",
  "--pod-running-timeout",
  "--verbose",
  "--quiet",
  "--output",
]);

/** `relay proxy`'s flags as commander hands them over, before validation. */
export type ProxyCommandOptions = CommandOptions & { port?: string; proxyAuth?: string };

/** One line: shell completion shows it beside the subcommand's name. */
const SUMMARY = "a SOCKS5 and HTTP proxy whose connections leave from the cluster";

// Wrapped by hand: text after the flag list is printed as it is.
const DETAILS = `
One local port speaks SOCKS5 (CONNECT and UDP ASSOCIATE) and HTTP (CONNECT, as HTTPS_PROXY
and curl -x use it, and http:// requests: one request per connection to the origin).
Connections leave from the agent pod and names are resolved inside the cluster:
payments.shop.svc, or a short name like payments in the -n namespace. Targets and ports
after the flags run as forwards beside the proxy.

The proxy reaches anything the agent's pod can, except that pod's loopback and link-local
addresses. Listening beyond loopback (-l 0.0.0.0) needs --proxy-auth.
`;

const EXAMPLES = `
Examples:
  # A proxy on 127.0.0.1:1080, short names in namespace shop
  relay proxy -n shop
  curl --socks5-hostname 127.0.0.1:1080 http://payments:8080/
  curl -x http://127.0.0.1:1080 http://payments.shop.svc:8080/
  HTTPS_PROXY=http://127.0.0.1:1080 curl https://api.shop.svc/

  # On every interface: a user and password are required
  relay proxy -l 0.0.0.0 --port 1081 --proxy-auth alice:s3cret

  # The proxy and a forward in one command
  relay proxy -n shop svc/db 5432
`;

/**
 * The `proxy` subcommand: `shared` are the root program's options, of which it takes the
 * session's; its action hands words and flags to `onProxy`, validated after.
 */
export function proxyCommand(
  shared: readonly Option[],
  onProxy: (words: string[], opts: ProxyCommandOptions) => void,
) {
  const command = new Command("proxy")
    .description(SUMMARY)
    .usage("[flags] [TARGET [local:]remote[@tcp|@udp]...]...")
    .argument("[target-and-ports...]")
    .option(
      "--port <port>",
      `local port of the proxy, 0 for a free one (default: ${PROXY_DEFAULT_PORT})`,
    )
    .option(
      "--proxy-auth <user:password>",
      "require this user and password of clients (SOCKS5 username/password, HTTP Proxy-Authorization: Basic)",
    );
  for (const option of shared) {
    if (option.long && SHARED_FLAGS.has(option.long)) command.addOption(option);
  }
  return command
    .helpOption("-h, --help", "print this help")
    .addHelpText("after", DETAILS + EXAMPLES)
    .showSuggestionAfterError(true)
    .action((words, opts) => onProxy(words, opts as ProxyCommandOptions));
}

/** Validates `relay proxy`'s words and flags into a plan with its `proxy`. */
export async function toProxyPlan(
  words: string[],
  opts: ProxyCommandOptions,
  io: CliIo,
): Promise<Plan> {
  const proxy: ProxySpec = {
    port: parsePortNumber(opts.port ?? String(PROXY_DEFAULT_PORT), 0, "--port", "relay proxy"),
  };
  if (opts.proxyAuth !== undefined) proxy.auth = parseProxyAuth(opts.proxyAuth);
  const plan = await toPlan(words, opts, io, proxy);
  const open = plan.options.addresses.find((a) => a !== LOCALHOST && !isLoopback(a));
  if (open !== undefined && !proxy.auth) {
    throw new UsageError(
      `relay proxy -l ${open}: listening beyond loopback needs --proxy-auth USER:PASSWORD ` +
        `(relay does not start an open proxy into the cluster)`,
    );
  }
  return plan;
}

/**
 * `USER:PASSWORD`, split at the first colon (as HTTP Basic does); each 1–255 bytes, SOCKS5's
 * limits (RFC 1929). Messages name the user, never the password.
 */
export function parseProxyAuth(text: string): ProxyCredentials {
  const colon = text.indexOf(":");
  const user = colon < 0 ? "" : text.slice(0, colon);
  const password = colon < 0 ? "" : text.slice(colon + 1);
  const bad = (why: string) => new UsageError(`invalid --proxy-auth: ${why}`);
  if (colon < 0) throw bad('expected USER:PASSWORD (no ":" in it)');
  if (user === "") throw bad("the user before the first colon is empty");
  if (password === "") throw bad(`the password after "${user}:" is empty`);
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(text)) throw bad("control characters are not allowed");
  const bytes = (s: string) => new TextEncoder().encode(s).length;
  if (bytes(user) > 255) throw bad(`the user is ${bytes(user)} bytes; SOCKS5 allows 255`);
  if (bytes(password) > 255) {
    throw bad(`the password is ${bytes(password)} bytes; SOCKS5 allows 255`);
  }
  return { user, password };
}
