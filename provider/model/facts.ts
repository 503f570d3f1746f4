// The one model of what an image is: the facts `qemu-img info` reports, typed, sizes exact
// (bigint). Both engines return it, the rules decide on it, the resource keeps it in its state
// and the CLI renders it. Converters live at the boundaries that need them: the header
// (provider/qcow2/ops/info.ts), qemu-img's JSON (./qemu-json.ts), the resource's state
// (provider/resource/state.ts).

import type { Compat, CompressionType, Preallocation } from './options';

/** An internal snapshot, as the snapshot table records it. */
export interface SnapshotFacts {
  id: string;
  name: string;
  /** Size of the saved VM state, bytes. */
  vmStateSize: bigint;
  dateSec: number;
  dateNsec: number;
  /** The guest clock at the snapshot, nanoseconds. */
  vmClockNsec: bigint;
  /** Instruction count (record/replay), when recorded. */
  icount?: bigint;
  /** The image's virtual size when the snapshot was taken (v3 extra data; a v2 entry has none, QEMU takes the image's size). Undefined when not read (qemu-img info does not report it). */
  diskSize?: bigint;
}

/** A persistent dirty bitmap, as the bitmap directory records it. */
export interface BitmapFacts {
  name: string;
  granularity: number;
  /** qemu-img's words: `in-use`, `auto`. */
  flags: string[];
  /**
   * `in-use` while no process holds the image for writing: the writer died (a VM crashed), the
   * contents are unknown, and QEMU refuses to use it. Remove it (qcow2 bitmap --remove) and add
   * it anew. An `in-use` bitmap of an image a running QEMU holds is consistent: that QEMU has it.
   */
  inconsistent: boolean;
}

/**
 * What only a read of the image itself lists (qemu-img info's snapshot table, bitmap details).
 * Engines fill it; a resource's state does not carry it.
 */
export interface ImageDetail {
  snapshots: SnapshotFacts[];
  bitmaps: BitmapFacts[];
  /** The backing name resolved against the image's folder (qemu-img's full-backing-filename). */
  fullBackingFile?: string;
}

/** An image's facts. Absent optional values are unknown or unset, never guessed. */
export interface ImageFacts {
  /** 'raw' for a raw image (then only the sizes and `path` mean anything); absent for qcow2. */
  format?: 'raw';
  virtualSize: bigint;
  /** Bytes allocated for the qcow2 file (qemu-img's actual-size). */
  actualSize: bigint;
  clusterSize: number;
  compat: Compat;
  refcountBits: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: CompressionType;
  /** The image uses an external data file (incompatible bit 2). */
  hasDataFile: boolean;
  /** The stored data file name, when the image records one. */
  dataFile?: string;
  dataFileRaw: boolean;
  backingFile?: string;
  backingFormat?: string;
  dirty: boolean;
  corrupt: boolean;
  /** Number of internal snapshots. */
  snapshots: number;
  /** Names of the persistent dirty bitmaps. */
  bitmaps: string[];
  /** Whether any L2 entry is compressed; undefined when not scanned (only a downgrade needs it). */
  hasCompressedClusters?: boolean;
  /** Where the image is (absolute), when the caller knows. */
  path?: string;
  /** The SSH host the image is on ('' for this machine), when the caller knows. */
  host?: string;
  /** The preallocation the image was created with, when known: the file does not record it. */
  preallocation?: Preallocation;
  /** The listings behind `snapshots` and `bitmaps`, when read from the image. */
  detail?: ImageDetail;
}

/** Round a size up to 512 bytes, as qemu-img does for a new or resized image. */
export function roundToSector(size: bigint): bigint {
  return ((size + 511n) / 512n) * 512n;
}

/** The facts of a raw image: its size (rounded up to 512, as QEMU reads it) and what it allocates. */
export function rawImageFacts(fileSize: bigint, actualSize: bigint): ImageFacts {
  return {
    format: 'raw', virtualSize: roundToSector(fileSize), actualSize, clusterSize: 0, compat: '1.1', refcountBits: 0,
    lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', hasDataFile: false, dataFileRaw: false,
    dirty: false, corrupt: false, snapshots: 0, bitmaps: [],
  };
}
