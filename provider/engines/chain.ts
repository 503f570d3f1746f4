// Reading backing-chain identities from the files of an engine's host, for the rules: each
// layer's device, inode, size and header fingerprint (one read of its first bytes), and the
// images in a folder that name a given file as their backing file (one header read per file,
// bounded). Nothing is written, nothing is locked: these are header reads, like `qemu-img info -U`.
//
// The walks are written once, as generators that ask for what they need (a file's first bytes
// and identity, a stat, a folder listing) and are driven either synchronously over a HostFs
// (this machine, or a remote host from a worker thread through the bridge) or asynchronously
// over a remote host's files on the calling thread (the qemu-img engine's SSH host).

import { createHash } from 'crypto';
import * as path from 'path';
import { HostFs, localFs } from '../qcow2/io/hostfs';
import { HEADER_BYTES, type ChainLayer, type ChainView, type Dependents, type ImageChain } from '../model/chain';
import { hasProtocolPrefix, resolveBackingName } from '../model/backing-name';

const QCOW_MAGIC = 0x514649fb;
/** Deeper than QEMU would open (its limit is also in the qcow2 ring): a loop or a hostile chain. */
const MAX_CHAIN = 64;
/** How many folder entries a dependents scan looks at, at most. */
export const SCAN_LIMIT = 4096;

/** One file's first bytes as a walk sees them: its identity and, for qcow2, the backing name. */
export interface Peek {
  layer: Omit<ChainLayer, 'seen'>;
  /** The backing name stored in the header, when the file is qcow2 and names one. */
  backing?: string;
}

/** A regular file of a folder as a dependents scan sees it: its identity and the backing name its header stores. */
export interface ScannedFile {
  name: string;
  id: string;
  backing?: string;
}

/** What a walk asks its driver for. */
type Ask = { peek: string } | { id: string } | { scan: string };
/**
 * peek: the file's Peek (undefined: not there, not a regular file); id: its identity "dev:ino"
 * (undefined: nothing there); scan: the folder's regular files, at most SCAN_LIMIT entries read.
 */
type Answer = Peek | string | { files: ScannedFile[]; truncated: boolean } | undefined;
type Walk<T> = Generator<Ask, T, Answer>;

/**
 * Where a walk reads, asynchronously: a remote host's files on the calling thread. `head` gives a
 * regular file's first bytes (its first cluster, where QEMU requires the backing name to be, or
 * the whole file) with its size and identity; undefined for anything else.
 */
export interface ChainFiles {
  head(file: string): Promise<{ head: Buffer; size: number; id: string } | undefined>;
  id(file: string): Promise<string | undefined>;
  /** The regular files of a folder with their identities and backing names, at most `limit` entries read. */
  scan(dir: string, limit: number): Promise<{ files: ScannedFile[]; truncated: boolean }>;
}

const bytes = (n: number) => (n <= Number.MAX_SAFE_INTEGER ? n : String(n));

/** Names resolve as QEMU resolves them on the host: POSIX paths (a remote host's are absolute already). */
const resolve = (p: string) => path.posix.resolve(p);

/** Where the backing name lies in a qcow2 header, if it names one QEMU would read. */
function backingAt(head: Buffer): { at: number; size: number } | undefined {
  if (head.length < 20 || head.readUInt32BE(0) !== QCOW_MAGIC) return undefined;
  const offset = head.readBigUInt64BE(8);
  const size = head.readUInt32BE(16);
  // QEMU refuses names longer than 1023 bytes or outside cluster 0 (at most 2 MiB).
  if (offset === 0n || size === 0 || size > 1023 || offset > 2n << 20n) return undefined;
  return { at: Number(offset), size };
}

/** A Peek from a file's first bytes; `more` reads a backing name past them (undefined when the file ends first). */
function peekOf(file: string, head: Buffer, size: number, id: string, more: (at: number, n: number) => Buffer | undefined): Peek {
  const [dev, ino] = id.split(':');
  const first = head.subarray(0, Math.min(size, HEADER_BYTES));
  const layer = { path: file, dev: dev!, ino: ino!, size: bytes(size), header: createHash('sha256').update(first).digest('hex').slice(0, 32) };
  const b = backingAt(head);
  if (b === undefined) return { layer };
  const name = b.at + b.size <= head.length ? head.subarray(b.at, b.at + b.size) : b.at + b.size <= size ? more(b.at, b.size) : undefined;
  return name === undefined ? { layer } : { layer, backing: name.toString('utf8') };
}

// ---------------------------------------------------------------------------------------------
// The walks

function* chainBelow(top: Peek | undefined, seen: string): Walk<ChainView> {
  const layers: ChainLayer[] = [];
  const visited = new Set<string>();
  let at = top;
  while (at?.backing !== undefined && at.backing !== '' && layers.length < MAX_CHAIN) {
    if (hasProtocolPrefix(at.backing)) break; // not a file: nothing here to fingerprint
    const name = resolve(resolveBackingName(at.layer.path, at.backing));
    const next = (yield { peek: name }) as Peek | undefined;
    if (!next) return { layers, missing: name };
    const key = `${next.layer.dev}:${next.layer.ino}`;
    if (visited.has(key)) break;
    visited.add(key);
    layers.push({ ...next.layer, seen });
    at = next;
  }
  return { layers };
}

function* imageChain(imagePath: string, seen: string): Walk<ImageChain> {
  const top = (yield { peek: imagePath }) as Peek | undefined;
  return { ...(top ? { self: { ...top.layer, seen } } : {}), view: yield* chainBelow(top, seen) };
}

function* dependents(imagePath: string, candidates: Iterable<string>): Walk<Dependents> {
  const target = (yield { id: imagePath }) as string | undefined;
  if (target === undefined) return { dependents: [], truncated: false };
  const found = new Set<string>();
  function* judge(file: string, id: string | undefined, backing: string | undefined): Walk<void> {
    if (id === undefined || id === target || found.has(file)) return;
    if (backing === undefined || backing === '' || hasProtocolPrefix(backing)) return;
    if ((yield { id: resolve(resolveBackingName(file, backing)) }) === target) found.add(file);
  }
  for (const c of candidates) {
    const file = resolve(c);
    const p = (yield { peek: file }) as Peek | undefined;
    yield* judge(file, p && `${p.layer.dev}:${p.layer.ino}`, p?.backing);
  }
  const dir = path.posix.dirname(resolve(imagePath));
  // Anything but a regular file is passed over (opened without waiting, then refused).
  const { files, truncated } = (yield { scan: dir }) as { files: ScannedFile[]; truncated: boolean };
  for (const f of files) yield* judge(path.posix.join(dir, f.name), f.id, f.backing);
  return { dependents: [...found].sort(), truncated };
}

// ---------------------------------------------------------------------------------------------
// Drivers

/** One read of a file's first bytes through a HostFs (which refuses anything but a regular file, without waiting). */
function peek(file: string, host: HostFs): Peek | undefined {
  let opened;
  try {
    opened = host.open(file, 'read');
  } catch {
    return undefined;
  }
  const f = opened.file;
  try {
    const head = f.read(0, Math.min(opened.size, HEADER_BYTES));
    return peekOf(file, head, opened.size, host.identity(f, file), (at, n) => f.read(at, n));
  } catch {
    return undefined;
  } finally {
    f.close();
  }
}

function runSync<T>(walk: Walk<T>, host: HostFs): T {
  let step = walk.next();
  while (!step.done) {
    const ask = step.value;
    let answer: Answer;
    if ('peek' in ask) answer = peek(ask.peek, host);
    else if ('id' in ask) {
      try {
        answer = host.stat(ask.id)?.id;
      } catch {
        answer = undefined;
      }
    } else {
      let names: string[] = [];
      try {
        names = host.readdir(ask.scan);
      } catch {
        // An unreadable folder: only the candidates were checked.
      }
      const files: ScannedFile[] = [];
      for (const name of names.slice(0, SCAN_LIMIT)) {
        const p = peek(path.posix.join(ask.scan, name), host);
        if (p) files.push({ name, id: `${p.layer.dev}:${p.layer.ino}`, ...(p.backing !== undefined ? { backing: p.backing } : {}) });
      }
      answer = { files, truncated: names.length > SCAN_LIMIT };
    }
    step = walk.next(answer);
  }
  return step.value;
}

async function runAsync<T>(walk: Walk<T>, files: ChainFiles): Promise<T> {
  let step = walk.next();
  while (!step.done) {
    const ask = step.value;
    let answer: Answer;
    if ('peek' in ask) {
      const h = await files.head(ask.peek).catch(() => undefined);
      answer = h && peekOf(ask.peek, h.head, h.size, h.id, () => undefined);
    } else if ('id' in ask) answer = await files.id(ask.id).catch(() => undefined);
    else answer = await files.scan(ask.scan, SCAN_LIMIT).catch(() => ({ files: [], truncated: false }));
    step = walk.next(answer);
  }
  return step.value;
}

// ---------------------------------------------------------------------------------------------
// The reads

/** The identity of one file (its own layer), or undefined when it is not there. */
export function readLayer(file: string, seen: string, host: HostFs = localFs): ChainLayer | undefined {
  const p = peek(file, host);
  return p && { ...p.layer, seen };
}

/**
 * The backing chain below `imagePath`, top down, as QEMU would open it: each name resolved
 * against the folder of the image that stores it. Stops at a file that is not there (`missing`),
 * at a raw file, at a name that is not a file, and after MAX_CHAIN layers.
 */
export function readChain(imagePath: string, seen: string, host: HostFs = localFs): ChainView {
  return readImageChain(imagePath, seen, host).view;
}

/** An image's own layer and the chain below it, its header read once (what the resource records). */
export function readImageChain(imagePath: string, seen: string, host: HostFs = localFs): ImageChain {
  return runSync(imageChain(imagePath, seen), host);
}

/** readImageChain on a remote host's files, from the calling thread. */
export function readImageChainAsync(imagePath: string, seen: string, files: ChainFiles): Promise<ImageChain> {
  return runAsync(imageChain(imagePath, seen), files);
}

/**
 * Images that name `imagePath` as their backing file: the given candidates (images this provider
 * knows of), then the qcow2 files in the image's own folder, one header read each, at most
 * SCAN_LIMIT entries. Returns their paths, and whether the folder had more entries than were read.
 */
export function findDependents(imagePath: string, candidates: Iterable<string> = [], host: HostFs = localFs): Dependents {
  return runSync(dependents(imagePath, candidates), host);
}

/** findDependents on a remote host's files, from the calling thread. */
export function findDependentsAsync(imagePath: string, candidates: Iterable<string>, files: ChainFiles): Promise<Dependents> {
  return runAsync(dependents(imagePath, candidates), files);
}
