/** docs/events.schema.json, compiled: every `-o json` line relay writes must pass it. */
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const schema = JSON.parse(
  await Deno.readTextFile(new URL("../docs/events.schema.json", import.meta.url)),
);
// deno-lint-ignore no-explicit-any
const ajv = new (Ajv2020 as any)({ allErrors: true, strict: true });
// deno-lint-ignore no-explicit-any
(addFormats as any)(ajv);
const validate = ajv.compile(schema);

/** Throws naming what is wrong with `line` if it is not one valid event. */
export function assertValidEvent(line: string): Record<string, unknown> {
  const event = JSON.parse(line);
  if (!validate(event)) {
    throw new Error(`not a valid relay event: ${line}\n${ajv.errorsText(validate.errors)}`);
  }
  return event;
}
