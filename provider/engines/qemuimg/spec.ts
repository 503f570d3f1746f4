// How file names reach qemu-img as plain file names, whatever they contain.
//
// - The image itself is never a positional file name: it is a `json:` pseudo-protocol
//   specification, {"driver":"qcow2","file":{"driver":"file","filename":ABSOLUTE}}. JSON string
//   escaping carries commas, quotes, backslashes, spaces, newlines and a leading dash unchanged,
//   and the explicit "file" driver means a name such as `nbd:host:1`, `json:{...}`, `ssh:x` or
//   `file:x` is a file in a folder, never a protocol. (Verified with qemu-img 7.2.22.)
// - The same specification decides what qemu-img may open besides the image: "backing": null
//   (never open a backing file), "data-file" as the null-co driver (never open the data file),
//   or as an explicit "file" node with an absolute path when the data file is needed (size
//   changes).
// - Values inside an `-o` option list double their commas (`data_file=a,,b`); nothing else is
//   special in a QemuOpts value.

import * as fs from 'fs';

export type DataFileSpec =
  /** The image has no external data file: add nothing (qemu-img refuses a data-file option then). */
  | { kind: 'none' }
  /** Never open the data file: qemu-img gets a null-co node instead. */
  | { kind: 'null' }
  /** Open this file (absolute) as the data file, with the plain file driver. */
  | { kind: 'file'; path: string };

export type BackingSpec =
  /** Open no backing file ("backing": null). */
  | { kind: 'none' }
  /**
   * A stand-in: an empty raw file of our own (0 bytes). QEMU then knows the image is backed
   * (a compat=0.10 downgrade keeps zero clusters allocated, as with the real backing file) while
   * nothing of the real backing file is opened, and no size change copies in backing data.
   */
  | { kind: 'stand-in'; emptyFile: string };

/** The `json:` image argument for qemu-img. `absImage` must be absolute. */
export function imageSpec(absImage: string, data: DataFileSpec, backing: BackingSpec): string {
  const spec: Record<string, unknown> = { driver: 'qcow2', file: { driver: 'file', filename: absImage } };
  if (data.kind === 'null') spec['data-file'] = { driver: 'null-co' };
  else if (data.kind === 'file') spec['data-file'] = { driver: 'file', filename: data.path };
  spec.backing = backing.kind === 'none' ? null : { driver: 'raw', file: { driver: 'file', filename: backing.emptyFile } };
  return `json:${JSON.stringify(spec)}`;
}

/** One layer of a guest view: an absolute file, its format, and (qcow2) its absolute data file. */
export interface ChainLayer {
  path: string;
  format: 'raw' | 'qcow2';
  dataFile?: string;
}

/**
 * The `json:` argument for a whole chain, top first: every image, backing file and data file
 * an explicit file node, the last layer with "backing": null. qemu-img follows nothing by name.
 */
export function chainSpec(layers: readonly ChainLayer[]): string {
  const node = (i: number): Record<string, unknown> => {
    const l = layers[i]!;
    const spec: Record<string, unknown> = { driver: l.format, file: { driver: 'file', filename: l.path } };
    if (l.format === 'qcow2') {
      if (l.dataFile !== undefined) spec['data-file'] = { driver: 'file', filename: l.dataFile };
      spec.backing = i + 1 < layers.length ? node(i + 1) : null;
    }
    return spec;
  };
  return `json:${JSON.stringify(node(0))}`;
}

/** A value inside a qemu `-o` list: commas are doubled. */
export function optValue(v: string): string {
  return v.replace(/,/g, ',,');
}

/** `key=value,...` from pairs, values escaped. */
export function optList(pairs: ReadonlyArray<readonly [string, string]>): string {
  return pairs.map(([k, v]) => `${k}=${optValue(v)}`).join(',');
}

/** What the first bytes of an image say, to decide which nodes qemu-img must be given. */
export interface HeaderPeek {
  version: number;
  /** Incompatible bit 2: the image needs a data file node. */
  hasDataFile: boolean;
}

/** The fixed header fields that decide the json specification, from a file's first bytes; undefined when not qcow2-looking. */
export function peekOf(b: Uint8Array): HeaderPeek | undefined {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < 72 || buf.readUInt32BE(0) !== 0x514649fb) return undefined;
  const version = buf.readUInt32BE(4);
  const incompat = version >= 3 && buf.length >= 80 ? buf.readBigUInt64BE(72) : 0n;
  return { version, hasDataFile: (incompat & 4n) !== 0n };
}

/**
 * Read the fixed header fields that decide the json specification (magic, version,
 * incompatible features). undefined when the file is not qcow2-looking:
 * qemu-img then reports the error itself.
 */
export function peekHeader(file: string): HeaderPeek | undefined {
  let fd: number;
  try {
    // Only regular files: opening a FIFO would block (qemu-img's file driver refuses the rest).
    if (!fs.statSync(file).isFile()) return undefined;
    fd = fs.openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const b = Buffer.alloc(80);
    const n = fs.readSync(fd, b, 0, 80, 0);
    return peekOf(b.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
}
