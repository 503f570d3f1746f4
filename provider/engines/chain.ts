// Reading backing-chain identities from this machine's files, for the rules: each layer's
// device, inode, size and header fingerprint (one read of its first bytes), and the images in a
// folder that name a given file as their backing file (one header read per file, bounded).
// Nothing is written, nothing is locked: these are header reads, like `qemu-img info -U`.

import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { HEADER_BYTES, type ChainLayer, type ChainView } from '../model/chain';
import { hasProtocolPrefix, resolveBackingName } from '../model/backing-name';

const QCOW_MAGIC = 0x514649fb;
/** Deeper than QEMU would open (its limit is also in the qcow2 ring): a loop or a hostile chain. */
const MAX_CHAIN = 64;
/** How many folder entries a dependents scan looks at, at most. */
export const SCAN_LIMIT = 4096;

interface Peek {
  layer: Omit<ChainLayer, 'seen'>;
  /** The backing name stored in the header, when the file is qcow2 and names one. */
  backing?: string;
}

const bytes = (n: bigint) => (n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString());

/**
 * One read of a file's first bytes: its identity and, for qcow2, the backing name. undefined
 * when it is not there or not a regular file.
 */
function peek(file: string): Peek | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (!st.isFile()) return undefined;
    const buf = Buffer.alloc(Number(st.size < BigInt(HEADER_BYTES) ? st.size : BigInt(HEADER_BYTES)));
    const n = buf.length ? fs.readSync(fd, buf, 0, buf.length, 0) : 0;
    const head = buf.subarray(0, n);
    const layer = { path: file, dev: st.dev.toString(), ino: st.ino.toString(), size: bytes(st.size), header: createHash('sha256').update(head).digest('hex').slice(0, 32) };
    return { layer, ...backingName(fd, head) };
  } finally {
    fs.closeSync(fd);
  }
}

/** The backing name in a qcow2 header (a second small read only if it lies past the first bytes). */
function backingName(fd: number, head: Buffer): { backing?: string } {
  if (head.length < 20 || head.readUInt32BE(0) !== QCOW_MAGIC) return {};
  const offset = head.readBigUInt64BE(8);
  const size = head.readUInt32BE(16);
  // QEMU refuses names longer than 1023 bytes or outside cluster 0 (at most 2 MiB).
  if (offset === 0n || size === 0 || size > 1023 || offset > 2n << 20n) return {};
  const at = Number(offset);
  if (at + size <= head.length) return { backing: head.subarray(at, at + size).toString('utf8') };
  const b = Buffer.alloc(size);
  return fs.readSync(fd, b, 0, size, at) === size ? { backing: b.toString('utf8') } : {};
}

/** The identity of one file (its own layer), or undefined when it is not there. */
export function readLayer(file: string, seen: string): ChainLayer | undefined {
  const p = peek(file);
  return p && { ...p.layer, seen };
}

/**
 * The backing chain below `imagePath`, top down, as QEMU would open it: each name resolved
 * against the folder of the image that stores it. Stops at a file that is not there (`missing`),
 * at a raw file, at a name that is not a local file, and after MAX_CHAIN layers.
 */
export function readChain(imagePath: string, seen: string): ChainView {
  const layers: ChainLayer[] = [];
  const visited = new Set<string>();
  let at = peek(imagePath);
  while (at?.backing !== undefined && at.backing !== '' && layers.length < MAX_CHAIN) {
    if (hasProtocolPrefix(at.backing)) break; // not a local file: nothing here to fingerprint
    const name = path.resolve(resolveBackingName(at.layer.path, at.backing));
    const next = peek(name);
    if (!next) return { layers, missing: name };
    const key = `${next.layer.dev}:${next.layer.ino}`;
    if (visited.has(key)) break;
    visited.add(key);
    layers.push({ ...next.layer, seen });
    at = next;
  }
  return { layers };
}

/**
 * Images that name `imagePath` as their backing file: the given candidates (images this provider
 * knows of), then the qcow2 files in the image's own folder, one header read each, at most
 * SCAN_LIMIT entries. Returns their paths, and whether the folder had more entries than were read.
 */
export function findDependents(imagePath: string, candidates: Iterable<string> = []): { dependents: string[]; truncated: boolean } {
  const target = fs.statSync(imagePath, { throwIfNoEntry: false });
  if (!target) return { dependents: [], truncated: false };
  const same = (name: string) => {
    const st = fs.statSync(name, { throwIfNoEntry: false });
    return st !== undefined && st.dev === target.dev && st.ino === target.ino;
  };
  const found = new Set<string>();
  const consider = (file: string) => {
    if (found.has(file) || same(file)) return;
    const p = peek(file);
    if (p?.backing === undefined || p.backing === '' || hasProtocolPrefix(p.backing)) return;
    if (same(path.resolve(resolveBackingName(file, p.backing)))) found.add(file);
  };
  for (const c of candidates) consider(path.resolve(c));
  const dir = path.dirname(path.resolve(imagePath));
  let truncated = false;
  let handle: fs.Dir | undefined;
  try {
    handle = fs.opendirSync(dir);
    for (let i = 0; ; i++) {
      const e = handle.readSync();
      if (!e) break;
      if (i >= SCAN_LIMIT) {
        truncated = true;
        break;
      }
      if (e.isFile()) consider(path.join(dir, e.name));
    }
  } catch {
    // An unreadable folder: only the candidates were checked.
  } finally {
    handle?.closeSync();
  }
  return { dependents: [...found].sort(), truncated };
}
