// Image geometry computed once: cluster size, table entry counts, and the index helpers
// (QEMU's offset_to_l1_index and friends). Everything else asks this object.

import * as C from './constants';
import { invalidOption } from '../../model/errors';

export class Geometry {
  readonly clusterSize: number;
  readonly l2EntrySize: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  readonly l2Bits: number;
  readonly refcountBits: number;
  /** Entries per refcount block. */
  readonly refblockEntries: number;
  readonly refblockBits: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Coverage: bigint;
  readonly subclustersPerCluster: number;

  constructor(readonly clusterBits: number, readonly refcountOrder: number, readonly extendedL2: boolean) {
    this.clusterSize = 2 ** clusterBits;
    this.l2EntrySize = extendedL2 ? C.L2E_SIZE_EXTENDED : C.L2E_SIZE_NORMAL;
    this.l2Entries = this.clusterSize / this.l2EntrySize;
    this.l2Bits = Math.log2(this.l2Entries);
    this.refcountBits = 2 ** refcountOrder;
    this.refblockEntries = (this.clusterSize * 8) / this.refcountBits;
    this.refblockBits = Math.log2(this.refblockEntries);
    this.l2Coverage = BigInt(this.l2Entries) << BigInt(clusterBits);
    this.subclustersPerCluster = extendedL2 ? 32 : 1;
  }

  static forClusterSize(clusterSize: number, refcountBits = 16, extendedL2 = false): Geometry {
    return new Geometry(Math.log2(clusterSize), Math.log2(refcountBits), extendedL2);
  }

  /** L1 entries needed for a virtual size (QEMU size_to_l1). */
  l1EntriesFor(size: bigint): number {
    return Number((size + this.l2Coverage - 1n) / this.l2Coverage);
  }

  /** Number of clusters covering `bytes` (rounded up). */
  clustersFor(bytes: bigint | number): number {
    const b = BigInt(bytes);
    return Number((b + BigInt(this.clusterSize) - 1n) >> BigInt(this.clusterBits));
  }

  /** Bytes rounded up to a whole number of clusters. */
  roundUp(bytes: bigint): bigint {
    const cs = BigInt(this.clusterSize);
    return ((bytes + cs - 1n) / cs) * cs;
  }

  l1Index(guestOffset: bigint): number {
    return Number(guestOffset >> BigInt(this.clusterBits + this.l2Bits));
  }

  l2Index(guestOffset: bigint): number {
    return Number((guestOffset >> BigInt(this.clusterBits)) & BigInt(this.l2Entries - 1));
  }

  /** Refcount table index covering a host cluster index. */
  reftableIndex(clusterIndex: number): number {
    return Math.floor(clusterIndex / this.refblockEntries);
  }

  refblockIndex(clusterIndex: number): number {
    return clusterIndex % this.refblockEntries;
  }

  isClusterAligned(offset: bigint | number): boolean {
    return BigInt(offset) % BigInt(this.clusterSize) === 0n;
  }
}

/** The largest virtual size QEMU accepts for a geometry: L1 at most 32 MiB of entries. */
export function maxVirtualSize(g: Geometry): bigint {
  return BigInt(C.QCOW_MAX_L1_SIZE / C.L1E_SIZE) * g.l2Coverage;
}

export function assertClusterSize(clusterSize: number): void {
  const bits = Math.log2(clusterSize);
  if (!Number.isInteger(bits) || bits < C.MIN_CLUSTER_BITS || bits > C.MAX_CLUSTER_BITS) {
    throw invalidOption('Cluster size must be a power of two between 512 and 2048k', 'cluster_size');
  }
}
