/**
 * Writes release archives (.tar.gz and .zip) in TypeScript rather than through the host's tar
 * and zip: GNU tar and bsdtar disagree on flags, zip is not on every machine, and this way every
 * entry has the same owner (0), mode and time on every build machine.
 */

/** One file to put in an archive. */
export interface ArchiveEntry {
  /** Path inside the archive; a plain file name for relay's archives. */
  readonly name: string;
  readonly data: Uint8Array;
  /** Unix permission bits, e.g. 0o755 for the binary. */
  readonly mode: number;
}

/** What every archive-writing function takes besides its entries. */
export interface ArchiveOptions {
  /** Modification time recorded for every entry. */
  readonly mtime: Date;
}

const encoder = new TextEncoder();

async function compress(data: Uint8Array, format: CompressionFormat): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream(format),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ustar numeric fields are zero-padded octal, ending in NUL, filling the field.
function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function tarHeader(entry: ArchiveEntry, mtime: Date): Uint8Array {
  const nameBytes = encoder.encode(entry.name);
  if (nameBytes.length > 100) throw new Error(`archive entry name too long: ${entry.name}`);
  const header = new Uint8Array(512);
  const put = (text: string, at: number) => header.set(encoder.encode(text), at);
  header.set(nameBytes, 0);
  put(octal(entry.mode, 8), 100);
  put(octal(0, 8), 108); // uid
  put(octal(0, 8), 116); // gid
  put(octal(entry.data.length, 12), 124);
  put(octal(Math.floor(mtime.getTime() / 1000), 12), 136);
  put("        ", 148); // checksum is computed with its own field as spaces
  put("0", 156); // regular file
  put("ustar\x0000", 257);
  put("root", 265);
  put("root", 297);
  const sum = header.reduce((n, b) => n + b, 0);
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  return header;
}

/** A gzip-compressed ustar archive holding `entries`, as `tar -xzf` expects. */
export async function tarGz(
  entries: readonly ArchiveEntry[],
  options: ArchiveOptions,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (const entry of entries) {
    parts.push(tarHeader(entry, options.mtime), entry.data);
    const pad = (512 - (entry.data.length % 512)) % 512;
    parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024)); // two zero blocks end the archive
  return await compress(concat(parts), "gzip");
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// MS-DOS date and time, as zip stores them (local time, 2-second resolution, from 1980).
function dosDateTime(d: Date): { time: number; date: number } {
  const year = Math.max(d.getFullYear(), 1980);
  return {
    time: (d.getHours() << 11) | (d.getMinutes() << 5) | Math.floor(d.getSeconds() / 2),
    date: ((year - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate(),
  };
}

/** A zip archive of `entries`, each deflated; sizes must stay under 4 GiB (no zip64). */
export async function zip(
  entries: readonly ArchiveEntry[],
  options: ArchiveOptions,
): Promise<Uint8Array> {
  const { time, date } = dosDateTime(options.mtime);
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const entry of entries) {
    const name = encoder.encode(entry.name);
    const packed = await compress(entry.data, "deflate-raw");
    const crc = crc32(entry.data);
    if (packed.length >= 0xffffffff || entry.data.length >= 0xffffffff) {
      throw new Error(`archive entry too large for zip without zip64: ${entry.name}`);
    }

    const local = new Uint8Array(30 + name.length);
    const l = new DataView(local.buffer);
    l.setUint32(0, 0x04034b50, true);
    l.setUint16(4, 20, true); // version needed: 2.0 (deflate)
    l.setUint16(6, 0x0800, true); // names are UTF-8
    l.setUint16(8, 8, true); // deflate
    l.setUint16(10, time, true);
    l.setUint16(12, date, true);
    l.setUint32(14, crc, true);
    l.setUint32(18, packed.length, true);
    l.setUint32(22, entry.data.length, true);
    l.setUint16(26, name.length, true);
    local.set(name, 30);

    const central = new Uint8Array(46 + name.length);
    const c = new DataView(central.buffer);
    c.setUint32(0, 0x02014b50, true);
    c.setUint16(4, (3 << 8) | 20, true); // made by Unix, so the mode below is honoured
    c.setUint16(6, 20, true);
    c.setUint16(8, 0x0800, true);
    c.setUint16(10, 8, true);
    c.setUint16(12, time, true);
    c.setUint16(14, date, true);
    c.setUint32(16, crc, true);
    c.setUint32(20, packed.length, true);
    c.setUint32(24, entry.data.length, true);
    c.setUint16(28, name.length, true);
    c.setUint32(38, ((0o100000 | entry.mode) << 16) >>> 0, true); // regular file + mode
    c.setUint32(42, offset, true);
    central.set(name, 46);

    locals.push(local, packed);
    centrals.push(central);
    offset += local.length + packed.length;
  }
  const directory = concat(centrals);
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, entries.length, true);
  e.setUint16(10, entries.length, true);
  e.setUint32(12, directory.length, true);
  e.setUint32(16, offset, true);
  return concat([...locals, directory, end]);
}
