// An open image's mapping metadata in memory: the header as it will be written, the L1 table,
// the L2 tables (meta/tables.ts), and the refcounts (meta/refcount.ts, frees deferred). Lookups
// read it; writers change it here (copy-on-write of shared L2 tables included); commit() writes
// what changed in the order below.
//
// Write-ordering invariant (QEMU's, qcow2-refcount.c beside qcow2_cache_set_dependency): a
// reference is never on disk before the refcount that accounts for it, and a refcount is never
// dropped on disk before the last reference to it is gone. commit() writes, with a flush
// (barrier) between the steps that have anything to write:
//   1. guest data (new clusters only become visible through step 3);
//   2. refcount blocks holding increments, then the refcount table entries that point at new
//      blocks; a refcount table that had to move is published here by a header write, as
//      QEMU's qcow2_refcount_area does, because step 3 may rely on clusters only it covers;
//   3. L2 tables (new ones and changed ones);
//   4. the L1 table;
//   5. the header (autoclear bits, backing file of a rebase): last;
//   6. refcount decrements of clusters freed by the steps above (deferred until here: a freed
//      cluster is not reused before the table that dropped it is on disk).
// The only header writes outside a commit are the autoclear policy's (guest/open.ts), which
// come before any guest data is written.

import { BlockFile } from '../io/blockfile';
import { HostFs } from '../io/hostfs';
import * as C from '../spec/constants';
import { invalidImage } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header, encodeHeader } from '../spec/header';
import { encodeL1Entry } from '../spec/l1';
import {
  ClusterType, L2Format, L2Halves, NO_L2_ENTRY, L2_HI_COPIED, clusterTypeOf, hostOffsetIsSafe, hostOffsetOf, parseCompressedEntry,
  entryOf, readL2Entry, writeL2Entry,
} from '../spec/l2';
import { Image, safeOffset } from '../meta/image';
import { planHeaderCommit, writeHeaderCommit } from '../meta/header-commit';
import { FreePolicy, TableRefcounts } from '../meta/refcount';
import { Table, TableCache } from '../meta/tables';

export class Qcow2Metadata {
  readonly g: Geometry;
  readonly cs: number;
  readonly fmt: L2Format;
  /** The header as it will be written on the next header write. */
  readonly header: Header;
  /** The header as last written (a moved refcount table is published from it, nothing else). */
  private diskHeader: Header;
  private headerDirty = false;
  readonly l1: BigUint64Array;
  private readonly l1Dirty = new Set<number>();
  readonly l2: TableCache;
  readonly refcounts: TableRefcounts;
  private dataWritten = false;

  /**
   * `frees`: 'deferred' (the data path: a freed cluster is reused only after the commit that
   * dropped it) or 'immediate' (QEMU's own policy, which the bitmap operations replay byte for
   * byte: they order their own header writes).
   */
  constructor(readonly file: BlockFile, image: Image, readonly dataFile: BlockFile | null, readonly host: HostFs, frees: FreePolicy = 'deferred') {
    const h = image.header;
    this.g = image.geometry;
    this.cs = this.g.clusterSize;
    this.fmt = { dataFile: image.hasDataFile, extendedL2: this.g.extendedL2 };
    this.header = { ...h, unknownExtensions: [...h.unknownExtensions] };
    this.diskHeader = { ...this.header };
    this.l1 = BigUint64Array.from(image.readL1());
    this.l2 = new TableCache(file, this.cs);
    this.refcounts = new TableRefcounts(this.g, frees, new TableCache(file, this.cs), BigUint64Array.from(image.readReftable()),
      safeOffset(h.refcountTableOffset));
  }

  get hasDataFile(): boolean { return this.fmt.dataFile; }

  // -------------------------------------------------------------------------------------------
  // Lookups

  /** The L2 table offset of L1 index `l1i`, 0 when none. */
  l2Offset(l1i: number): number {
    const e = this.l1[l1i] ?? 0n;
    const off = e & C.L1E_OFFSET_MASK;
    if (off === 0n) return 0;
    if (off % BigInt(this.cs) !== 0n) {
      throw invalidImage(`L2 table offset 0x${off.toString(16)} unaligned (L1 index: 0x${l1i.toString(16)})`, off);
    }
    return safeOffset(off);
  }

  /** The L2 table of L1 index `l1i`, or undefined; valid until the next table access. */
  l2Table(l1i: number): Table | undefined {
    const off = this.l2Offset(l1i);
    return off === 0 ? undefined : this.l2.get(off);
  }

  /** The L2 entry of guest cluster `gc`. */
  entry(gc: number): L2Halves {
    const t = this.l2Table(Math.floor(gc / this.g.l2Entries));
    return t === undefined ? NO_L2_ENTRY : readL2Entry(t.view, gc % this.g.l2Entries, this.fmt.extendedL2);
  }

  /** The L2 entries of guest clusters gc..gc+n-1, one table lookup per L2 table they span. */
  entries(gc: number, n: number): L2Halves[] {
    const per = this.g.l2Entries;
    const out: L2Halves[] = new Array<L2Halves>(n);
    for (let i = 0; i < n;) {
      const c = gc + i;
      const stop = Math.min(n, i + per - (c % per));
      const t = this.l2Table(Math.floor(c / per));
      for (; i < stop; i++) out[i] = t === undefined ? NO_L2_ENTRY : readL2Entry(t.view, (gc + i) % per, this.fmt.extendedL2);
    }
    return out;
  }

  typeOf(e: L2Halves): ClusterType {
    return clusterTypeOf(e.hi, e.lo, this.fmt);
  }

  /** The host cluster offset of a normal or zero-alloc entry, checked as QEMU checks it. */
  hostOf(e: L2Halves): number {
    const off = hostOffsetOf(e.hi, e.lo);
    if (!hostOffsetIsSafe(e.hi)) safeOffset(entryOf(e.hi, e.lo) & C.L2E_OFFSET_MASK);
    if (off % this.cs !== 0) throw invalidImage(`Cluster allocation offset 0x${off.toString(16)} unaligned`, off);
    return off;
  }

  /** An entry is normal or zero-alloc with COPIED: this image alone owns its cluster. */
  owns(e: L2Halves): boolean {
    const t = this.typeOf(e);
    return (t === 'normal' || t === 'zero-alloc') && (e.hi & L2_HI_COPIED) !== 0;
  }

  // -------------------------------------------------------------------------------------------
  // Changes

  /** `n` new contiguous host clusters (refcounted); the first one's index. */
  allocClusters(n: number): number {
    return this.refcounts.alloc(n);
  }

  /** qcow2_alloc_bytes: host bytes for a compressed cluster (meta/refcount.ts). */
  allocBytes(size: number): number {
    return this.refcounts.allocBytes(size);
  }

  /** The L2 table of `l1i` ready to change: allocated, or copied when shared (no COPIED). */
  l2ForWrite(l1i: number): Table {
    const e = this.l1[l1i]!;
    const old = this.l2Offset(l1i);
    if (old !== 0 && (e & C.QCOW_OFLAG_COPIED) !== 0n) return this.l2.get(old);
    const c = this.allocClusters(1);
    const t = old === 0 ? this.l2.create(c * this.cs) : this.l2.copy(old, c * this.cs);
    if (old !== 0) this.refcounts.free(old / this.cs);
    this.l1[l1i] = encodeL1Entry(BigInt(c * this.cs), true);
    this.l1Dirty.add(l1i);
    return t;
  }

  /** Set the entry of guest cluster `gc`. */
  setEntry(gc: number, e: L2Halves): void {
    const l1i = Math.floor(gc / this.g.l2Entries);
    const t = this.l2ForWrite(l1i);
    writeL2Entry(t.view, gc % this.g.l2Entries, this.fmt.extendedL2, e);
    this.l2.markDirty(this.l2Offset(l1i));
  }

  /**
   * setEntry for each of guest clusters gc..gc+n-1 that `pick(i)` gives an entry for, in order:
   * each L2 table readied (l2ForWrite) when its first entry is set, and looked up once.
   */
  setEntries(gc: number, n: number, pick: (i: number) => L2Halves | undefined): void {
    const per = this.g.l2Entries;
    for (let i = 0; i < n;) {
      const c = gc + i;
      const l1i = Math.floor(c / per);
      const stop = Math.min(n, i + per - (c % per));
      let t: Table | undefined;
      for (; i < stop; i++) {
        const e = pick(i);
        if (e === undefined) continue;
        t ??= this.l2ForWrite(l1i);
        writeL2Entry(t.view, (gc + i) % per, this.fmt.extendedL2, e);
      }
      if (t !== undefined) this.l2.markDirty(this.l2Offset(l1i));
    }
  }

  /**
   * qcow2_free_any_cluster for an entry just unlinked: its clusters' references go (deferred to
   * commit step 6); with a data file nothing is refcounted, and `discard` punches the range.
   */
  release(e: L2Halves, discard: boolean): void {
    const t = this.typeOf(e);
    if (this.hasDataFile) {
      if (discard && (t === 'normal' || t === 'zero-alloc')) this.host.punchHole(this.dataFile!, this.hostOf(e), this.cs);
      return;
    }
    if (t === 'compressed') {
      const r = parseCompressedEntry(entryOf(e.hi, e.lo), this.g.clusterBits);
      this.refcounts.free(r.firstCluster, r.clusters);
    } else if (t === 'normal' || t === 'zero-alloc') {
      this.refcounts.free(this.hostOf(e) / this.cs);
    }
  }

  /** Guest data went to a new host location: commit flushes it before any metadata. */
  noteDataWritten(): void {
    this.dataWritten = true;
  }

  /** Change the header; written last on commit (encoded now, so a name that does not fit fails now). */
  changeHeader(change: (h: Header) => void): void {
    change(this.header);
    encodeHeader(this.header, this.cs);
    this.headerDirty = true;
  }

  /** Write the header now (the autoclear policy's writes, before any guest data). */
  writeHeaderNow(h: Header = this.header): void {
    writeHeaderCommit(this.file, planHeaderCommit(h, this.cs, this.file));
    this.file.flush();
    this.diskHeader = { ...h, unknownExtensions: [...h.unknownExtensions] };
    delete this.diskHeader.staleBitmaps;
    delete this.header.staleBitmaps;
    if (h === this.header) this.headerDirty = false;
  }

  /**
   * Change some header fields and write the header now, with only those changes (QEMU's
   * update_header_sync for the bitmaps extension and autoclear bit 0): changes made through
   * changeHeader still wait for the commit.
   */
  writeHeaderFields(change: (h: Header) => void): void {
    change(this.header);
    const next: Header = { ...this.diskHeader, unknownExtensions: [...this.diskHeader.unknownExtensions] };
    change(next);
    const dirty = this.headerDirty;
    this.writeHeaderNow(next);
    this.headerDirty = dirty;
  }

  /** The header as it is on disk. */
  get writtenHeader(): Header { return this.diskHeader; }

  /** Bytes of metadata waiting to be written. */
  get dirtyBytes(): number {
    return (this.l2.dirtyCount + this.refcounts.blocks.dirtyCount) * this.cs + this.refcounts.pendingFrees * 8;
  }

  /** Write everything changed, in the order stated at the top of this file. */
  commit(): void {
    const barrier = () => {
      this.dataFile?.flush();
      this.file.flush();
    };
    const writeTable = (offset: number, t: Buffer) => this.file.write(offset, t);
    const rc = this.refcounts;
    // 1. data
    if (this.dataWritten) {
      barrier();
      this.dataWritten = false;
    }
    // 2. refcount blocks (increments), refcount table, a moved table's header
    let any = rc.blocks.writeBack(writeTable) > 0;
    if (rc.reftableMoved) {
      this.file.write(rc.reftableOffset, rc.reftableBytes());
      barrier();
      this.header.refcountTableOffset = BigInt(rc.reftableOffset);
      this.header.refcountTableClusters = Math.ceil((rc.reftable.length * 8) / this.cs);
      this.writeHeaderNow({
        ...this.diskHeader,
        refcountTableOffset: this.header.refcountTableOffset,
        refcountTableClusters: this.header.refcountTableClusters,
      });
      any = false;
    } else if (rc.reftableDirty.size) {
      for (const ti of [...rc.reftableDirty].sort((a, b) => a - b)) {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(rc.reftable[ti]!);
        this.file.write(rc.reftableOffset + ti * 8, b);
      }
      any = true;
    }
    rc.markWritten();
    if (any) barrier();
    // 3. L2 tables
    if (this.l2.writeBack(writeTable) > 0) barrier();
    // 4. L1
    if (this.l1Dirty.size) {
      const l1Off = safeOffset(this.header.l1TableOffset);
      const idx = [...this.l1Dirty].sort((a, b) => a - b);
      for (let i = 0; i < idx.length;) {
        let j = i + 1;
        while (j < idx.length && idx[j] === idx[j - 1]! + 1) j++;
        const b = Buffer.alloc((j - i) * 8);
        for (let k = i; k < j; k++) b.writeBigUInt64BE(this.l1[idx[k]!]!, (k - i) * 8);
        this.file.write(l1Off + idx[i]! * 8, b);
        i = j;
      }
      this.l1Dirty.clear();
      barrier();
    }
    // 5. header
    if (this.headerDirty) this.writeHeaderNow();
    // 6. deferred frees
    if (rc.pendingFrees) {
      rc.applyFrees();
      if (rc.blocks.writeBack(writeTable) > 0) barrier();
    }
  }
}
