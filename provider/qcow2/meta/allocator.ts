// A model of QEMU's qcow2 cluster allocator (qcow2-refcount.c): first-fit from
// free_cluster_index, refcount blocks that describe themselves, refcount-table growth through
// qcow2_refcount_area. Creating an image replays QEMU's allocation sequence on this model and
// then writes the final state, which is how our images come out byte-identical to qemu-img's.
// It records what each cluster last held (its role); freed clusters keep their old bytes.

import { Geometry } from '../spec/geometry';

export type Role =
  | { kind: 'header' }
  | { kind: 'reftable'; table: bigint[]; chunk: number }
  | { kind: 'refblock'; index: number }
  | { kind: 'l1'; chunk: number }
  | { kind: 'l2'; l1Index: number };

const EAGAIN = Symbol('EAGAIN');
type Result = typeof EAGAIN | undefined;

export class AllocationError extends Error {}

export class QemuAllocator {
  readonly g: Geometry;
  readonly cs: number;
  /** Refcount per host cluster (create-time counts are small). */
  counts: Uint8Array = new Uint8Array(1024);
  reftable: bigint[];
  reftableOffset: number;
  freeClusterIndex = 0;
  /** Cluster index -> what was last written there. */
  readonly roles = new Map<number, Role>();
  /** Highest byte written or truncated to: the qcow2 file's size. */
  fileEnd = 0;

  constructor(g: Geometry, reftableOffset: number, reftable: bigint[]) {
    this.g = g;
    this.cs = g.clusterSize;
    this.reftableOffset = reftableOffset;
    this.reftable = reftable;
  }

  private count(ci: number): number { return ci < this.counts.length ? this.counts[ci]! : 0; }

  private setCount(ci: number, v: number): void {
    if (ci >= this.counts.length) {
      let n = this.counts.length;
      while (n <= ci) n *= 2;
      const next = new Uint8Array(n);
      next.set(this.counts);
      this.counts = next;
    }
    if (v < 0 || v > 255) throw new AllocationError(`refcount out of model range at cluster ${ci}`);
    this.counts[ci] = v;
  }

  wrote(offset: number, length: number): void {
    this.fileEnd = Math.max(this.fileEnd, offset + length);
  }

  setRole(offset: number, role: Role): void { this.roles.set(offset / this.cs, role); }

  /** qcow2_get_refcount: 0 where no refcount block covers the cluster. */
  getRefcount(ci: number): number {
    const ti = Math.floor(ci / this.g.refblockEntries);
    if (ti >= this.reftable.length || this.reftable[ti] === 0n) return 0;
    return this.count(ci);
  }

  private maxReftableIndex(): number {
    for (let i = this.reftable.length - 1; i >= 0; i--) if (this.reftable[i] !== 0n) return i;
    return 0;
  }

  /** alloc_clusters_noref */
  allocNoref(size: number): number {
    const n = Math.ceil(size / this.cs);
    retry: for (;;) {
      for (let i = 0; i < n; i++) {
        const idx = this.freeClusterIndex++;
        if (this.getRefcount(idx) !== 0) continue retry;
      }
      return (this.freeClusterIndex - n) * this.cs;
    }
  }

  /** update_refcount, with QEMU's undo on failure and -EAGAIN restart protocol. */
  private updateRefcount(offset: number, length: number, addend: number, decrease: boolean): Result {
    if (length === 0) return undefined;
    const start = Math.floor(offset / this.cs);
    const last = Math.floor((offset + length - 1) / this.cs);
    let oldTable = -1;
    for (let ci = start; ci <= last; ci++) {
      const ti = Math.floor(ci / this.g.refblockEntries);
      if (ti !== oldTable) {
        const r = this.allocRefcountBlock(ci);
        if (r === EAGAIN) {
          if (this.freeClusterIndex > start) this.freeClusterIndex = start;
          // Undo what this call already did (QEMU's "try to undo any updates").
          if (ci > start) this.updateRefcount(offset, (ci - start) * this.cs - (offset - start * this.cs), addend, !decrease);
          return EAGAIN;
        }
      }
      oldTable = ti;
      const v = this.count(ci) + (decrease ? -addend : addend);
      if (v === 0 && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
      this.setCount(ci, v);
    }
    return undefined;
  }

  /** alloc_refcount_block */
  private allocRefcountBlock(ci: number): Result {
    const E = this.g.refblockEntries;
    const ti = Math.floor(ci / E);
    if (ti < this.reftable.length && this.reftable[ti] !== 0n) return undefined;

    const newBlock = this.allocNoref(this.cs);
    if (newBlock === 0) throw new AllocationError('Preventing invalid allocation of refcount block at offset 0');
    const nb = newBlock / this.cs;
    if (Math.floor(nb / E) === ti) {
      this.setCount(nb, 1); // describes itself
    } else {
      const r = this.updateRefcount(newBlock, this.cs, 1, false);
      if (r === EAGAIN) return EAGAIN;
    }
    this.setRole(newBlock, { kind: 'refblock', index: ti });
    this.wrote(newBlock, this.cs);

    if (ti < this.reftable.length) {
      this.reftable[ti] = BigInt(newBlock);
      return EAGAIN;
    }
    const blocksUsed = Math.ceil(Math.max(ci + 1, nb + 1) / E);
    const metaOffset = blocksUsed * E * this.cs;
    this.refcountArea(metaOffset, 0, false, ti, newBlock);
    return EAGAIN;
  }

  /** qcow2_refcount_metadata_size: refblock count covering `clusters` and themselves. */
  static refblockCount(clusters: number, clusterSize: number, refcountOrder: number, generous: boolean): number {
    const perTableCluster = clusterSize / 8;
    const perBlock = (clusterSize * 8) / 2 ** refcountOrder;
    let table = 0, blocks = 0, last: number, n = 0;
    do {
      last = n;
      blocks = Math.ceil((clusters + table + blocks) / perBlock);
      table = Math.ceil(blocks / perTableCluster);
      n = clusters + blocks + table;
      if (n === last && generous) {
        clusters += Math.ceil(table / 2);
        n = 0;
        generous = false;
      }
    } while (n !== last);
    return blocks;
  }

  /** qcow2_refcount_area: new self-covering refcount table and blocks at `start`. */
  refcountArea(start: number, additionalClusters: number, exact: boolean, newIndex: number, newOffset: number): number {
    const cs = this.cs, E = this.g.refblockEntries;
    const total = QemuAllocator.refblockCount(start / cs + additionalClusters, cs, this.g.refcountOrder, !exact);
    const areaIndex = Math.floor(start / cs / E);
    let tableSize = exact ? total : total + Math.ceil(total / 2);
    const perCluster = cs / 8;
    tableSize = Math.ceil(tableSize / perCluster) * perCluster;
    const tableClusters = (tableSize * 8) / cs;
    const newTable = new Array<bigint>(tableSize).fill(0n);
    const maxIdx = this.maxReftableIndex();
    const copyN = tableSize > maxIdx ? maxIdx + 1 : tableSize;
    for (let i = 0; i < copyN && i < this.reftable.length; i++) newTable[i] = this.reftable[i]!;
    if (newOffset) newTable[newIndex] = BigInt(newOffset);
    let additional = 0;
    for (let i = areaIndex; i < total; i++) if (newTable[i] === 0n) additional++;
    const tableOffset = start + additional * cs;
    const endOffset = tableOffset + tableClusters * cs;
    let blockOffset = start;
    for (let i = areaIndex; i < total; i++) {
      if (newTable[i] === 0n) {
        newTable[i] = BigInt(blockOffset);
        this.setRole(blockOffset, { kind: 'refblock', index: i });
        this.wrote(blockOffset, cs);
        blockOffset += cs;
      }
      const firstCovered = i * E * cs;
      if (firstCovered < endOffset) {
        const j0 = firstCovered < start ? (start - firstCovered) / cs : 0;
        const jEnd = Math.min((endOffset - firstCovered) / cs, E);
        for (let j = j0; j < jEnd; j++) this.setCount(i * E + j, 1);
      }
    }
    for (let c = 0; c < tableClusters; c++) this.setRole(tableOffset + c * cs, { kind: 'reftable', table: newTable, chunk: c });
    this.wrote(tableOffset, tableSize * 8);
    const oldOffset = this.reftableOffset, oldSize = this.reftable.length;
    this.reftable = newTable;
    this.reftableOffset = tableOffset;
    this.free(oldOffset, oldSize * 8);
    return endOffset;
  }

  /** qcow2_alloc_clusters */
  allocClusters(size: number): number {
    for (;;) {
      const off = this.allocNoref(size);
      if (this.updateRefcount(off, size, 1, false) !== EAGAIN) return off;
    }
  }

  /** qcow2_alloc_clusters_at: how many of `n` clusters at `offset` could be taken. */
  allocClustersAt(offset: number, n: number): number {
    if (n === 0) return 0;
    for (;;) {
      let i = 0;
      for (let ci = offset / this.cs; i < n; i++, ci++) if (this.getRefcount(ci) !== 0) break;
      if (this.updateRefcount(offset, i * this.cs, 1, false) !== EAGAIN) return i;
    }
  }

  /** qcow2_free_clusters (no discard: the bytes stay in the file). */
  free(offset: number, size: number): void {
    this.updateRefcount(offset, size, 1, true);
  }

  /** qcow2_get_last_cluster: highest cluster below `fileSize` with a non-zero refcount. */
  lastCluster(fileSize: number): number {
    for (let ci = Math.ceil(fileSize / this.cs) - 1; ci >= 0; ci--) if (this.getRefcount(ci) !== 0) return ci;
    return -1;
  }
}
