// The vocabulary of provider/rules: what an existing image is (as info reads it), what a
// program or command asks for, and the decisions the rules return. Pure data, no I/O.

import type { Compat, CompressionType, CreateOptions, Preallocation } from '../model/options';

/** An existing image as the rules see it: what `info` reads, plus a few facts from the header. */
export interface ImageState {
  virtualSize: bigint;
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
  snapshots: number;
  bitmaps: number;
  /** Whether any L2 entry is compressed; undefined when not scanned (only a downgrade needs it). */
  hasCompressedClusters?: boolean;
  /** Where the image is (absolute), when the caller knows. */
  path?: string;
  /** The preallocation the image was created with, when known: the file does not record it. */
  preallocation?: Preallocation;
}

/** An `amend` request in qemu-img terms: only the fields given are changed. */
export interface AmendRequest {
  compat?: Compat;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  size?: bigint;
  /** New data file name; '' removes the stored name. */
  dataFile?: string;
  dataFileRaw?: boolean;
  backingFile?: string;
  backingFormat?: string;
}

/** What a program or stack declares for an image (resource inputs, typed): the create options, plus opt-ins. */
export interface DesiredSpec extends Omit<CreateOptions, 'adoptDataFile'> {
  /** Where the image should be (absolute). Moving it means a new image. */
  path?: string;
  /** Shrinking destroys data beyond the new end: only with this set. */
  allowShrink?: boolean;
  /** Properties that can only change by replacing the image may do so (the old image is deleted). */
  allowReplace?: boolean;
}

/** Facts the caller gathered by I/O for rules that depend on the world (rules never do I/O). */
export interface WorldFacts {
  /** The desired data file, when it differs from the current one: does it exist, and its size. */
  desiredDataFile?: { exists: boolean; size?: bigint };
}

export type Action = 'none' | 'amend' | 'replace' | 'refuse';

/** How an in-place change is carried out by an engine. */
export type Operation = 'amend' | 'resize' | 'rebase';

/** One decision: what happens to one property, and why, in words a person can act on. */
export interface Change {
  property: keyof DesiredSpec;
  action: Action;
  operation?: Operation;
  reason: string;
  from?: unknown;
  to?: unknown;
}

/** A refusal in qemu-img's words, with the option or property it is about. */
export interface Refusal {
  property: string;
  message: string;
}
