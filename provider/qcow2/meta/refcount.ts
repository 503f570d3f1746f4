// The refcount component (QEMU's qcow2-refcount.c): get and change refcounts, first-fit
// allocation from free_cluster_index, refcount blocks placed where QEMU places them (describing
// themselves when they can), refcount-table growth through qcow2_refcount_area, and a rebuild
// of all refcount structures at a new place and width. One algorithm, over two stores:
//
//   TableRefcounts: the image's own refcount table and blocks, through a TableCache. create
//     replays QEMU's create sequence on it (over an empty cache: byte-identical images), and
//     the data path allocates with it (over the image file).
//   CountRefcounts: one count per cluster in memory, for amend, which never changes the old
//     structures and rebuilds new ones (rebuild) once its plan is complete.
//
// Frees follow a policy. 'immediate' is QEMU's: a freed cluster is reusable at once (create
// relies on it for QEMU's layout). 'deferred' keeps the decrement until applyFrees(): the data
// path applies it after the tables that dropped the reference are on disk (a refcount never
// drops on disk before its last reference), amend after its last allocation (nothing the old
// image uses is reused before the commit).

import { invalidImage } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import * as C from '../spec/constants';
import { readRefcount, refcountMax, writeRefcount } from '../spec/refcount';
import { TableCache } from './tables';

export type FreePolicy = 'immediate' | 'deferred';

/** update_refcount's -EAGAIN: a refcount block was placed; the caller starts over. */
const EAGAIN = Symbol('EAGAIN');
type Result = typeof EAGAIN | undefined;

/** New refcount structures from rebuild(): what to write, all at or after its start cluster. */
export interface RebuiltRefcounts {
  blocks: Array<{ offset: number; data: Uint8Array }>;
  table: Uint8Array;
  tableOffset: number;
  tableClusters: number;
}

export abstract class Refcounts {
  /** QEMU's free_cluster_index: first-fit searches start here. */
  freeClusterIndex = 0;
  readonly cs: number;
  readonly max: number;
  private pending: number[] = [];
  /** Some refcount changed (or a change is pending) since this was made. */
  touched = false;
  /** When set, collects the clusters a decrement brought to 0 (QEMU discards those it frees so). */
  zeroed: number[] | undefined;

  constructor(readonly g: Geometry, readonly frees: FreePolicy) {
    this.cs = g.clusterSize;
    const max = refcountMax(g.refcountOrder);
    this.max = max > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(max);
  }

  /** Refcount of host cluster `ci`: 0 where no refcount block covers it (qcow2_get_refcount). */
  abstract get(ci: number): number;
  protected abstract put(ci: number, value: number): void;
  /** Make sure a refcount block covers `ci`; EAGAIN when one had to be placed. */
  protected abstract cover(ci: number): Result;

  /** alloc_clusters_noref: the first run of `n` clusters with refcount 0 from free_cluster_index. */
  protected findFree(n: number): number {
    retry: for (;;) {
      for (let i = 0; i < n; i++) {
        if (this.get(this.freeClusterIndex++) !== 0) continue retry;
      }
      return this.freeClusterIndex - n;
    }
  }

  /** update_refcount over clusters [first, first+n): QEMU's undo and -EAGAIN restart protocol. */
  protected update(first: number, n: number, delta: number): Result {
    let coveredTi = -1;
    for (let ci = first; ci < first + n; ci++) {
      const ti = Math.floor(ci / this.g.refblockEntries);
      if (ti !== coveredTi) {
        if (this.cover(ci) === EAGAIN) {
          if (this.freeClusterIndex > first) this.freeClusterIndex = first;
          if (ci > first) this.update(first, ci - first, -delta); // undo what this call did
          return EAGAIN;
        }
        coveredTi = ti;
      }
      const v = this.get(ci) + delta;
      if (v < 0 || v > this.max) {
        throw invalidImage(`Refcount of cluster ${ci} would become ${v}: out of range for ${this.g.refcountBits}-bit refcounts`);
      }
      if (v === 0 && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
      if (v === 0 && delta < 0) this.zeroed?.push(ci);
      this.put(ci, v);
      this.touched = true;
    }
    return undefined;
  }

  /** qcow2_alloc_clusters: `n` contiguous clusters, each with refcount 1; the first one's index. */
  alloc(n: number): number {
    for (;;) {
      const first = this.findFree(n);
      if (this.update(first, n, 1) !== EAGAIN) return first;
    }
  }

  /** QEMU's free_byte_offset: where the next compressed cluster's bytes may go (0: none open). */
  freeByteOffset = 0;

  /**
   * qcow2_alloc_bytes: `size` bytes (at most a cluster) for a compressed cluster, packed after
   * the previous ones; a host cluster gets one reference per compressed cluster that touches it.
   * A new cluster is taken when the bytes do not fit, continuing the open one when it is the
   * next cluster of the file. The byte offset.
   */
  allocBytes(size: number): number {
    const cs = this.cs;
    let offset = this.freeByteOffset;
    if (offset && this.get(Math.floor(offset / cs)) === this.max) offset = 0;
    let freeInCluster = cs - (offset % cs);
    for (;;) {
      if (!offset || freeInCluster < size) {
        const fresh = this.findFree(1) * cs; // alloc_clusters_noref
        if (!offset || Math.ceil(offset / cs) * cs !== fresh) {
          offset = fresh;
          freeInCluster = cs;
        } else {
          freeInCluster += cs;
        }
      }
      const first = Math.floor(offset / cs);
      if (this.update(first, Math.floor((offset + size - 1) / cs) - first + 1, 1) !== EAGAIN) break;
      offset = 0; // a refcount block was placed: again, from a fresh cluster
    }
    this.freeByteOffset = (offset + size) % cs === 0 ? 0 : offset + size;
    return offset;
  }

  /** qcow2_alloc_clusters_at: how many of the `n` clusters from `first` were free and are now taken. */
  allocAt(first: number, n: number): number {
    if (n === 0) return 0;
    for (;;) {
      let i = 0;
      while (i < n && this.get(first + i) === 0) i++;
      if (this.update(first, i, 1) !== EAGAIN) return i;
    }
  }

  /** qcow2_update_cluster_refcount(+1) on `n` clusters from `first` (a block is placed where none covers them). */
  increment(first: number, n = 1): void {
    while (this.update(first, n, 1) === EAGAIN) { /* a refcount block was placed: again */ }
  }

  /** Change one cluster's refcount by `delta` now, whatever the policy (check -r's repairs). */
  add(ci: number, delta: number): void {
    if (delta === 0) return;
    while (this.update(ci, 1, delta) === EAGAIN) { /* a refcount block was placed: again */ }
  }

  /** qcow2_free_clusters: drop one reference to each of `n` clusters, now or per the policy. */
  free(first: number, n = 1): void {
    this.touched = true;
    if (this.frees === 'deferred') {
      for (let i = 0; i < n; i++) this.pending.push(first + i);
      return;
    }
    this.update(first, n, -1);
  }

  /** Clusters whose frees wait for applyFrees(). */
  get pendingFrees(): number { return this.pending.length; }

  /** Apply the deferred frees. */
  applyFrees(): void {
    const list = this.pending;
    this.pending = [];
    for (const ci of list) this.update(ci, 1, -1);
  }

  /** qcow2_get_last_cluster: the highest cluster below `endCluster` with a refcount, or -1. */
  lastCluster(endCluster: number): number {
    for (let ci = endCluster - 1; ci >= 0; ci--) if (this.get(ci) !== 0) return ci;
    return -1;
  }

  /**
   * qcow2_refcount_metadata_size: how many refcount blocks cover `clusters` clusters plus the
   * blocks and table themselves (`generous`: room for the table to grow by half).
   */
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
}

/** Told where new refcount structures went (create records what each cluster holds). */
export interface RefcountObserver {
  refblock(offset: number, reftableIndex: number): void;
  reftable(offset: number, table: BigUint64Array): void;
}

/** Refcounts in the image's refcount table and blocks (the blocks through a TableCache). */
export class TableRefcounts extends Refcounts {
  reftable: BigUint64Array;
  reftableOffset: number;
  /** Reftable entries changed in place since the last markWritten(). */
  readonly reftableDirty = new Set<number>();
  /** The table moved (qcow2_refcount_area) since the last markWritten(): write it whole. */
  reftableMoved = false;
  private lastTi = -1;
  private lastBlock: Uint8Array | undefined;
  private lastBlockOffset = 0;

  constructor(g: Geometry, frees: FreePolicy, readonly blocks: TableCache, reftable: BigUint64Array, reftableOffset: number,
    private readonly observer?: RefcountObserver) {
    super(g, frees);
    this.reftable = reftable;
    this.reftableOffset = reftableOffset;
  }

  /** Offset of the refcount block for table index `ti`, 0 when there is none. */
  private blockOffset(ti: number): number {
    if (ti >= this.reftable.length) return 0;
    const off = this.reftable[ti]! & C.REFT_OFFSET_MASK;
    if (off === 0n) return 0;
    if (off % BigInt(this.cs) !== 0n) {
      throw invalidImage(`Refblock offset 0x${off.toString(16)} unaligned (reftable index: 0x${ti.toString(16)})`, off);
    }
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidImage(`Refblock offset 0x${off.toString(16)} is beyond the largest file offset this engine handles (2^53)`, off);
    return Number(off);
  }

  private block(ti: number): Uint8Array | undefined {
    if (ti === this.lastTi) return this.lastBlock;
    const off = this.blockOffset(ti);
    const b = off === 0 ? undefined : this.blocks.get(off).buf;
    this.lastTi = ti;
    this.lastBlock = b;
    this.lastBlockOffset = off;
    return b;
  }

  get(ci: number): number {
    const E = this.g.refblockEntries;
    const b = this.block(Math.floor(ci / E));
    return b === undefined ? 0 : readRefcount(b, this.g.refcountOrder, ci % E);
  }

  protected put(ci: number, value: number): void {
    const E = this.g.refblockEntries;
    const b = this.block(Math.floor(ci / E));
    if (b === undefined) throw new Error(`internal: no refcount block covers cluster ${ci}`);
    writeRefcount(b, this.g.refcountOrder, ci % E, value);
    this.blocks.markDirty(this.lastBlockOffset);
  }

  /** A new zeroed refcount block at cluster `c` (the cache's buffers move: forget the last one). */
  private newBlock(c: number, ti: number): Uint8Array {
    this.lastTi = -1;
    const b = this.blocks.create(c * this.cs).buf;
    this.observer?.refblock(c * this.cs, ti);
    return b;
  }

  /** alloc_refcount_block */
  protected cover(ci: number): Result {
    const E = this.g.refblockEntries;
    const ti = Math.floor(ci / E);
    if (this.blockOffset(ti) !== 0) return undefined;

    const nb = this.findFree(1);
    if (nb === 0) throw invalidImage('Preventing invalid allocation of refcount block at offset 0');
    if (Math.floor(nb / E) === ti) {
      writeRefcount(this.newBlock(nb, ti), this.g.refcountOrder, nb % E, 1); // it describes itself
    } else {
      if (this.update(nb, 1, 1) === EAGAIN) return EAGAIN;
      this.newBlock(nb, ti);
    }
    if (ti < this.reftable.length) {
      this.reftable[ti] = BigInt(nb * this.cs);
      this.reftableDirty.add(ti);
      return EAGAIN;
    }
    // The table is full: a new one, with the blocks it needs, after everything the current
    // blocks cover (so that the new structures describe themselves).
    const blocksUsed = Math.ceil(Math.max(ci + 1, nb + 1) / E);
    this.refcountArea(blocksUsed * E * this.cs, 0, false, ti, nb * this.cs);
    return EAGAIN;
  }

  private maxReftableIndex(): number {
    for (let i = this.reftable.length - 1; i >= 0; i--) if (this.reftable[i] !== 0n) return i;
    return 0;
  }

  /**
   * qcow2_refcount_area: a new refcount table and the blocks it needs at byte `start`, covering
   * themselves and `additionalClusters` more; the old table is freed. Returns the end of the area.
   */
  refcountArea(start: number, additionalClusters: number, exact: boolean, newIndex: number, newOffset: number): number {
    const cs = this.cs, E = this.g.refblockEntries;
    const total = Refcounts.refblockCount(start / cs + additionalClusters, cs, this.g.refcountOrder, !exact);
    const areaIndex = Math.floor(start / cs / E);
    const perCluster = cs / 8;
    let tableSize = exact ? total : total + Math.ceil(total / 2);
    tableSize = Math.ceil(tableSize / perCluster) * perCluster;
    const tableClusters = (tableSize * 8) / cs;
    const table = new BigUint64Array(tableSize);
    const maxIdx = this.maxReftableIndex();
    table.set(this.reftable.subarray(0, Math.min(this.reftable.length, tableSize > maxIdx ? maxIdx + 1 : tableSize)));
    if (newOffset) table[newIndex] = BigInt(newOffset);
    let additional = 0;
    for (let i = areaIndex; i < total; i++) if (table[i] === 0n) additional++;
    const tableOffset = start + additional * cs;
    const endOffset = tableOffset + tableClusters * cs;
    let blockOffset = start;
    const old = { offset: this.reftableOffset, entries: this.reftable.length };
    this.reftable = table; // block() reads the new table from here on
    this.lastTi = -1;
    for (let i = areaIndex; i < total; i++) {
      if (table[i] === 0n) {
        table[i] = BigInt(blockOffset);
        this.newBlock(blockOffset / cs, i);
        blockOffset += cs;
      }
      const firstCovered = i * E * cs;
      if (firstCovered < endOffset) {
        const j0 = firstCovered < start ? (start - firstCovered) / cs : 0;
        const jEnd = Math.min((endOffset - firstCovered) / cs, E);
        for (let j = j0; j < jEnd; j++) this.put(i * E + j, 1);
      }
    }
    this.observer?.reftable(tableOffset, table);
    this.reftableOffset = tableOffset;
    this.reftableMoved = true;
    this.reftableDirty.clear();
    this.free(old.offset / cs, Math.ceil((old.entries * 8) / cs));
    return endOffset;
  }

  /** The table as bytes (a moved table is written whole). */
  reftableBytes(): Uint8Array {
    const out = new Uint8Array(Math.ceil((this.reftable.length * 8) / this.cs) * this.cs);
    const dv = new DataView(out.buffer);
    this.reftable.forEach((e, i) => dv.setBigUint64(i * 8, e));
    return out;
  }

  /** The owner wrote the table (and its dirty entries). */
  markWritten(): void {
    this.reftableDirty.clear();
    this.reftableMoved = false;
  }
}

/** Refcounts as one count per cluster in memory: always covered, nothing placed (amend). */
export class CountRefcounts extends Refcounts {
  constructor(g: Geometry, frees: FreePolicy, private counts: Uint32Array) {
    super(g, frees);
  }

  get(ci: number): number {
    return ci < this.counts.length ? this.counts[ci]! : 0;
  }

  protected put(ci: number, value: number): void {
    if (ci >= this.counts.length) {
      const next = new Uint32Array(Math.max(ci + 1, this.counts.length * 2));
      next.set(this.counts);
      this.counts = next;
    }
    this.counts[ci] = value;
  }

  protected cover(): Result {
    return undefined;
  }

  /** One past the highest cluster with a refcount. */
  end(): number {
    return this.lastCluster(this.counts.length) + 1;
  }

  /**
   * Refcount structures for the current counts at width 2^order, placed from cluster `start`
   * (after everything in use) and covering themselves: the blocks, then the table. Their own
   * clusters are counted here. Amend's way: the old structures stay as they are until its commit.
   */
  rebuild(start: number, order: number): RebuiltRefcounts {
    const ng = new Geometry(this.g.clusterBits, order, this.g.extendedL2);
    const cs = this.cs;
    let blocks = 0, tableClusters = 0;
    for (;;) {
      const nb = Math.ceil((start + blocks + tableClusters) / ng.refblockEntries);
      const nt = Math.ceil((nb * 8) / cs);
      if (nb === blocks && nt === tableClusters) break;
      blocks = nb;
      tableClusters = nt;
    }
    for (let k = 0; k < blocks + tableClusters; k++) this.put(start + k, 1);
    const max = refcountMax(order);
    const table = new Uint8Array(tableClusters * cs);
    const dv = new DataView(table.buffer);
    const out: RebuiltRefcounts = { blocks: [], table, tableOffset: (start + blocks) * cs, tableClusters };
    for (let b = 0; b < blocks; b++) {
      const block = new Uint8Array(cs);
      const base = b * ng.refblockEntries;
      for (let k = 0; k < ng.refblockEntries; k++) {
        const v = this.get(base + k);
        if (v === 0) continue;
        if (BigInt(v) > max) throw new Error(`internal: refcount ${v} of cluster ${base + k} does not fit ${ng.refcountBits} bits`);
        writeRefcount(block, order, k, v);
      }
      out.blocks.push({ offset: (start + b) * cs, data: block });
      dv.setBigUint64(b * 8, BigInt((start + b) * cs));
    }
    return out;
  }
}
