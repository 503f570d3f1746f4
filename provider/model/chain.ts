// The identity of the files in a backing chain: which file each layer was (device and inode),
// its size and a fingerprint of its first bytes (the header). An overlay records its chain when
// it is created or changed and compares it later, so that a base replaced or rewritten under it
// is seen before its guest reads different data. Pure data and digests, no I/O.

import { createHash } from 'crypto';

/** One file of a backing chain as it was seen. dev and ino as decimal strings (exact past 2^53). */
export interface ChainLayer {
  /** The name opened (absolute, resolved as QEMU resolves backing names). */
  path: string;
  dev: string;
  ino: string;
  /** File size, bytes (a number below 2^53, a decimal string above). */
  size: number | string;
  /** sha256 of the file's first HEADER_BYTES bytes (the whole file when shorter), hex, first 32 digits. */
  header: string;
  /** When this provider recorded the layer (ISO 8601). */
  seen: string;
}

/**
 * How many leading bytes the header fingerprint covers: a qcow2 header with its extensions and
 * backing name (QEMU writes them in the first 4 KiB unless an image has unusually many).
 */
export const HEADER_BYTES = 4096;

/** What a chain read finds: the layers below an image, and the first name that could not be opened. */
export interface ChainView {
  layers: ChainLayer[];
  /** A backing file named in the chain that is not there (it and anything below it are unknown). */
  missing?: string;
}

/** An image's own layer (undefined: nothing there) and the chain below it, from one read of its header. */
export interface ImageChain {
  self?: ChainLayer;
  view: ChainView;
}

/** Images that name a file as their backing file, and whether the folder scan stopped early. */
export interface Dependents {
  dependents: string[];
  truncated: boolean;
}

/** What makes a layer the same file with the same header: everything but when it was seen. */
export function layerKey(l: Pick<ChainLayer, 'path' | 'dev' | 'ino' | 'size' | 'header'>): string {
  return `${l.path}\0${l.dev}:${l.ino}\0${String(l.size)}\0${l.header}`;
}

/**
 * The identity of an image with the chain below it: one digest over the image's own layer and
 * its backing chain. Images built on it compare this with the chain they recorded.
 */
export function chainDigest(layers: ReadonlyArray<Pick<ChainLayer, 'path' | 'dev' | 'ino' | 'size' | 'header'>>): string {
  const h = createHash('sha256');
  for (const l of layers) h.update(layerKey(l)).update('\n');
  return `sha256:${h.digest('hex').slice(0, 32)}`;
}

/** The first index where two chains differ (a layer that changed, appeared or vanished), or -1. */
export function firstDifference(recorded: readonly ChainLayer[], current: readonly ChainLayer[]): number {
  const n = Math.max(recorded.length, current.length);
  for (let i = 0; i < n; i++) {
    const a = recorded[i], b = current[i];
    if (!a || !b || layerKey(a) !== layerKey(b)) return i;
  }
  return -1;
}

/** What the Image resource hands an overlay built on it: its identity, and the one it had before an in-place change. */
export interface BackingIdentity {
  identity: string;
  /** The image's identity just before its last in-place change by this provider ('' when none vouched). */
  from: string;
}
