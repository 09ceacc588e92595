/**
 * Helpers for the WebSocket client tests: frames as a server sends them.
 */

/** What a server sends: an unmasked frame, with knobs to break the rules. */
export function serverFrame(
  opcode: number,
  payload: Uint8Array,
  options: { fin?: boolean; rsv?: number; mask?: boolean; longLength?: boolean } = {},
): Uint8Array {
  const length = payload.length;
  const form = options.longLength ? 127 : length < 126 ? length : length < 65536 ? 126 : 127;
  const extra = form === 126 ? 2 : form === 127 ? 8 : 0;
  const maskBytes = options.mask ? 4 : 0;
  const out = new Uint8Array(2 + extra + maskBytes + length);
  out[0] = ((options.fin ?? true) ? 0x80 : 0) | ((options.rsv ?? 0) << 4) | opcode;
  out[1] = (options.mask ? 0x80 : 0) | form;
  const view = new DataView(out.buffer);
  if (form === 126) view.setUint16(2, length);
  if (form === 127) view.setBigUint64(2, BigInt(length));
  out.set(payload, 2 + extra + maskBytes);
  return out;
}
