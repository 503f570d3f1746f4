// The guest view contract: what every source of guest bytes (a raw file, a qcow2 image with its
// backing chain) answers. Readers (convert, rebase, map) and backing chains speak only this.

import type { BlockFile } from '../io/blockfile';
import type { HostFs } from '../io/hostfs';
import type { FreePolicy } from '../meta/refcount';
import type { Image } from '../meta/image';
import type { SnapshotSelector } from '../spec/snapshot';

/** What one layer says about a guest range (QEMU's BDRV_BLOCK_* for that layer alone). */
export interface BlockStatus {
  /** Bytes from the asked offset with the same status (> 0). */
  length: number;
  data: boolean;
  zero: boolean;
  /** DATA or ZERO came from this layer itself (QEMU's BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /** Host offset in `file` when QEMU reports one (OFFSET_VALID). */
  offset?: number;
  file?: string;
}

/** A guest view: a raw file, or a qcow2 image with its backing chain. */
export interface GuestSource {
  readonly format: 'raw' | 'qcow2';
  /** Virtual size in bytes. */
  readonly size: number;
  readonly fileName: string;
  readonly backing: GuestSource | null;
  /** Guest bytes; past the virtual size they read as zeros. */
  read(offset: number, length: number): Buffer;
  /** The same into a caller's buffer: host-contiguous runs with one read each, no allocation. */
  readInto(target: Uint8Array, offset: number): void;
  /** QEMU's bdrv_co_is_zero_fast (want_zero = false): known zero without reading data. */
  isZeroFast(offset: number, length: number): boolean;
  /** This layer's status at `offset` (want_zero = true, as map asks), at most `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus;
  close(): void;
}

/** Progress of long operations: bytes done of total. */
export type ProgressFn = (done: number, total: number) => void;

/** Options for opening an image or a chain. */
export interface OpenOptions {
  writable?: boolean;
  /** Take QEMU's image locks (default true): write on image and data file, read on backing files. */
  lock?: boolean;
  /** The host the files are on (default: this machine). */
  host?: HostFs;
  /** Wrap the image file (tests record writes here). */
  wrapFile?: (f: BlockFile) => BlockFile;
  /** Use this file as the external data file instead of opening the stored name. */
  dataFile?: BlockFile;
  /** Use this guest view as the backing chain instead of opening the stored name (null: none). */
  backing?: GuestSource | null;
  /** Format of the backing file when the image does not record one (default: probe). */
  backingFormat?: string;
  /**
   * Called with the opened image before anything is written (writable opens): the engine puts
   * its legality check (provider/rules) here; a throw closes everything again.
   */
  beforeWrite?: (img: Image) => void;
  /** Read this internal snapshot instead of the current state (read-only opens; qcow2 only). */
  snapshot?: SnapshotSelector;
  /**
   * Called before a file an image's header names (backing file, data file) is opened, with the
   * name as stored, the path it resolves to (undefined: it names no local file) and the image
   * naming it. The engine puts its policy for untrusted sources (provider/rules) here; a throw
   * stops the open. Default: every name is followed, as QEMU does.
   */
  onReference?: (kind: 'backing file' | 'data file', name: string, resolved: string | undefined, from: string) => void;
  /**
   * When freed clusters may be reused (meta/refcount.ts): 'deferred' (default) after the commit
   * that dropped them; 'immediate' is QEMU's own, for the bitmap command's byte-exact writes.
   */
  frees?: FreePolicy;
}

/**
 * Whether the guest view of `src` at `offset` is known to read as zeros through its whole chain
 * (holes, zero clusters, unallocated with nothing below, the sector padding past its end), and
 * for how many bytes (at most `length`).
 */
export function chainZero(src: GuestSource, offset: number, length: number): { zero: boolean; length: number } {
  let layer: GuestSource | null = src;
  let n = length;
  while (layer) {
    if (offset >= layer.size) return { zero: true, length: n };
    const st = layer.blockStatus(offset, n);
    n = Math.min(n, st.length);
    if (st.zero) return { zero: true, length: n };
    if (st.data) return { zero: false, length: n };
    layer = layer.backing;
  }
  return { zero: true, length: n };
}
