// The Image resource's state (its outputs) <-> the image facts (provider/model/facts.ts). Pulumi
// keeps plain JSON, so bigint sizes become numbers where a number holds them exactly (below
// 2^53 bytes, 8 PiB) and decimal strings above; the facts the rules decide on (snapshot count,
// bitmaps) are kept, so a preview decides what the update will.

import type { EngineName } from '../engines/engine';
import type { ChainLayer } from '../model/chain';
import type { BitmapFacts, ImageFacts } from '../model/facts';
import type { Preallocation } from '../model/options';
import type { ConnectionArgs } from '../transport/ssh/connection';

/**
 * The outputs that are facts of the image: the facts' own types where JSON holds them as they
 * are, byte counts exact (a number below 2^53, a decimal string above), absent names as ''.
 */
export type FactOutputs = Pick<ImageFacts, 'clusterSize' | 'compat' | 'refcountBits' | 'lazyRefcounts' | 'extendedL2' | 'compressionType' |
  'dataFileRaw' | 'dirty' | 'corrupt' | 'snapshots'> & {
  /**
   * The persistent dirty bitmaps: name, granularity, flags (`auto`: recording, `in-use`) and
   * whether the bitmap is inconsistent (its writer stopped without storing it). A state written
   * before these were kept holds names only.
   */
  bitmaps: Array<BitmapFacts | string>;
  virtualSize: number | string;
  /** Bytes allocated for the qcow2 file. */
  actualSize: number | string;
  dataFile: string;
  backingFile: string;
  backingFormat: string;
};

/** Outputs: the image as last read, plus what delete and diff need. Never undefined. */
export interface ImageOutputs extends FactOutputs {
  path: string;
  /** The SSH host the image is on (connection.host), '' for this machine. */
  host: string;
  /** How to reach that host, kept for refresh and destroy (which run with the state alone); a secret. */
  connection?: ConnectionArgs;
  engine: EngineName;
  /** Preallocation asked at creation ('' when unknown: adopted images). */
  preallocation: string;
  /** This resource created the data file (so destroy may remove it). */
  createdDataFile: boolean;
  /** The data file this resource created, as "dev:ino:path" (delete removes only that file); '' otherwise. */
  dataFileIdentity: string;
  /** This resource adopted an existing image (destroy keeps it unless deleteAdopted). */
  adopted: boolean;
  dataFileOnDelete: 'auto' | 'keep' | 'delete';
  deleteAdopted: boolean;
  /** The QMP socket of the QEMU holding the image ('' when none is given). */
  qmpSocket: string;
  providerVersion: string;
  /** The source imported at creation (a URL as given, a file as an absolute path; '' when none). */
  source: string;
  /** Its checksum, `sha256:<lower-case hex>` ('' when none was given). */
  sourceChecksum: string;
  /**
   * The files below this image as this provider last recorded them (its create or update), top
   * down: device, inode, size, header fingerprint, when seen. [] without a backing file. A
   * refresh never rewrites it: a base that changed stays a difference until it is dealt with.
   */
  backingChain: ChainLayer[];
  /** What the last refresh found changed in the backing chain ('' when nothing). */
  backingDrift: string;
  /** This image with its recorded chain, as one digest (model/chain.ts); overlays built on it compare it. */
  identity: string;
  /** The identity this image had just before its last in-place change by this provider ('' when none). */
  identityFrom: string;
}

/** A byte count as Pulumi state: exact as a number below 2^53, else a decimal string. */
export function bytesOut(v: bigint): number | string {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
}

/** A byte count from state (a number or a decimal string), exactly. */
export function bytesIn(v: number | string | undefined): bigint {
  if (v === undefined) return 0n;
  return BigInt(v);
}

/** Facts -> state. */
export function factOutputs(f: ImageFacts): FactOutputs {
  return {
    virtualSize: bytesOut(f.virtualSize),
    actualSize: bytesOut(f.actualSize),
    clusterSize: f.clusterSize,
    compat: f.compat,
    refcountBits: f.refcountBits,
    lazyRefcounts: f.lazyRefcounts,
    extendedL2: f.extendedL2,
    compressionType: f.compressionType,
    dataFile: f.dataFile ?? '',
    dataFileRaw: f.dataFileRaw,
    backingFile: f.backingFile ?? '',
    backingFormat: f.backingFormat ?? '',
    dirty: f.dirty,
    corrupt: f.corrupt,
    snapshots: f.snapshots,
    bitmaps: f.detail?.bitmaps.map((b) => ({ ...b, flags: [...b.flags] })) ?? [...f.bitmaps],
  };
}

/**
 * State -> facts, as the rules see the image. A state written before snapshots were recorded
 * counts none (the next refresh or update records the real count).
 */
export function factsOfState(o: FactOutputs & Partial<Pick<ImageOutputs, 'path' | 'preallocation'>>): ImageFacts {
  const f: ImageFacts = {
    virtualSize: bytesIn(o.virtualSize),
    actualSize: bytesIn(o.actualSize),
    clusterSize: o.clusterSize,
    compat: o.compat,
    refcountBits: o.refcountBits,
    lazyRefcounts: o.lazyRefcounts,
    extendedL2: o.extendedL2,
    compressionType: o.compressionType,
    hasDataFile: o.dataFile !== '' || o.dataFileRaw,
    dataFileRaw: o.dataFileRaw,
    dirty: o.dirty,
    corrupt: o.corrupt,
    snapshots: o.snapshots ?? 0,
    bitmaps: (o.bitmaps ?? []).map((b) => (typeof b === 'string' ? b : b.name)),
  };
  const detail = (o.bitmaps ?? []).filter((b): b is BitmapFacts => typeof b !== 'string');
  if (detail.length > 0 && detail.length === (o.bitmaps ?? []).length) f.detail = { snapshots: [], bitmaps: detail.map((b) => ({ ...b, flags: [...b.flags] })) };
  if (o.path) f.path = o.path;
  if (o.dataFile) f.dataFile = o.dataFile;
  if (o.backingFile) f.backingFile = o.backingFile;
  if (o.backingFormat) f.backingFormat = o.backingFormat;
  if (o.preallocation) f.preallocation = o.preallocation as Preallocation;
  return f;
}
