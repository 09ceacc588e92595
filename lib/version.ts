import denoJson from "../deno.json" with { type: "json" };

/** relay's own version; the agent image is tagged with it so client and agent always match. */
export const VERSION: string = denoJson.version;

/** The agent image used unless `--agent-image` says otherwise. */
export const DEFAULT_AGENT_IMAGE = `ghcr.io/relay-dev/relay-agent:${VERSION}`;
