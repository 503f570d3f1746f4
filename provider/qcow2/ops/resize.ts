// `resize` in qemu-img 7.2's layout: tables edited in place where qcow2_co_truncate edits them,
// new clusters where its allocator puts them, so that the file equals qemu-img's byte for byte.
//
// The planner replays qcow2_co_truncate on the image's own tables in memory (QEMU's first-fit
// allocator and immediate frees: meta/refcount.ts TableRefcounts), nothing written. Where QEMU
// writes the header (grow_l1_table's new L1, the size at the end) the replay closes a stage:
// what the stage changed, in the order that keeps every prefix of the writes an image that
// check finds sound and whose guest reads the old content or the new:
//
//   shrink (one stage):
//     1. the header with the smaller size (one page): the commit; entries past the new end
//        are still referenced and counted, the guest no longer reads them;
//     2. clusters nothing on disk references (an L2 table QEMU's discard allocates);
//     3. refcount blocks raised (each entry at the larger of before and after), new blocks'
//        reftable entries;
//     4. in place: L2 tables (entries past the new end cleared), L1 entries (past the new L1
//        size zeroed, or pointing at a table of step 2);
//     5. refcount blocks as they end (the decrements), then reftable entries of blocks that
//        now count only themselves dropped (qcow2_shrink_reftable);
//     6. the file truncated after its last used cluster; freed clusters inside it punched
//        (QEMU discards what a shrink frees).
//   grow (a stage per QEMU header write: a new L1 when it grows; with falloc/full a new
//   refcount table (qcow2_refcount_area); the size last):
//     1. the file grown (preallocation: sparse for metadata, zeros for falloc/full), then
//        clusters nothing on disk references: a new L1, L2 tables, refcount table and blocks,
//        data clusters (the copy-on-write of the old end's head, the new end's tail);
//     2. refcount blocks raised, new blocks' reftable entries;
//     3. in place, only what the old image's guest does not read: L2 entries past the old end
//        (ZERO entries over a longer backing file, preallocated clusters), an old end cluster
//        remapped to a copy holding the same bytes, L1 entries pointing at tables of step 1,
//        zeros past the old end inside the image's own cluster;
//     4. the header (one page: the new L1's fields, the new refcount table's, or the size):
//        the stage's commit;
//     5. refcount blocks as they end (an old L1, refcount table or old end cluster freed).
//   A cluster a stage frees is reused only by a later stage (once the header that stopped
//   using it is written), as QEMU's own order reuses it; where the replay would reuse it
//   within the stage, the resize is not replayed (below).
//
// A crash leaves at most leaked clusters: between steps 2 (raised) and 5 (as they end) some
// refcounts count a reference that is not (yet, or any more) on disk. qemu-img leaves the same
// leaks when it stops at the same point: it writes refcount blocks before the tables that use
// a new cluster and after the tables that drop one. `check -r leaks` repairs them.
//
// An external data file is truncated to the new size, as qemu-img truncates it: before the
// stages when growing, after them when shrinking (with the ranges QEMU's discard punched).
//
// Deliberate difference: preallocated clusters inside the old file, which QEMU leaves holding
// whatever stale bytes a freed cluster held (a guest would read them), are written with zeros.
//
// Cases this does not replay are planned by ops/amend.ts (new tables written elsewhere, one
// header commit): persistent bitmaps, lazy refcounts left dirty, preallocation with extended
// L2 entries or an external data file (and the growth of a data-file-raw image, which QEMU
// preallocates), preallocation over an old end cluster that is zero, compressed or shared,
// zeros QEMU writes into the data file at the old end, a refcount table that moves for a new
// refcount block, and a replay whose stage would reuse a cluster the image on disk still uses.

import { BlockFile } from '../io/blockfile';
import { writeZeros } from '../io/sparse';
import * as C from '../spec/constants';
import { HEADER_V2 } from '../spec/header';
import {
  L2Format, L2Halves, NO_L2_ENTRY, L2_HI_COPIED, L2_LO_ZERO, SUBCLUSTERS_ALL, clusterTypeOf, entryOf, hostClusterOf, hostOffsetOf, normalEntry, parseCompressedEntry,
  readL2Entry, writeL2Entry,
} from '../spec/l2';
import { readRefcount, writeRefcount } from '../spec/refcount';
import { Qcow2Error } from '../../model/errors';
import { Image, safeOffset } from '../meta/image';
import { TableRefcounts } from '../meta/refcount';
import { TableCache } from '../meta/tables';
import { COMMIT_PAGE } from '../meta/header-commit';
import { Geometry } from '../spec/geometry';
import { OldEndRefused, type BackingReader, type ResizePreallocation } from './amend';

/** A write of bytes at a file offset. */
export interface ResizeWrite { offset: number; data: Uint8Array }

/** What one stage writes, in the order of the file comment. */
export interface ResizeStage {
  /** The header page is written first (a shrink's commit), else last (a grow stage's commit). */
  headerFirst: boolean;
  /** The first page of the file as the stage ends it. */
  header: Uint8Array;
  /** The image file grows to `to` first (preallocation): with zeros written from `zerosFrom`, else sparse. */
  extend?: { to: number; zerosFrom?: number };
  /** Clusters nothing on disk references. */
  fresh: ResizeWrite[];
  /** Refcount blocks raised in place, then reftable entries of new blocks. */
  raise: ResizeWrite[];
  /** L2 tables, L1 entries and data the other image's guest does not read. */
  inPlace: ResizeWrite[];
  /** Refcount blocks as they end, then reftable entries dropped. */
  lower: ResizeWrite[];
}

/** A resize planned in qemu-img's layout. */
export interface ResizePlan {
  stages: ResizeStage[];
  /** Truncate the image file to this length after the last stage (a shrink). */
  truncate?: number;
  /**
   * What QEMU's discards leave in the file system, replayed after the last stage and before the
   * truncate, in QEMU's order: holes punched in clusters a shrink freed, and the zeros QEMU
   * wrote into clusters it used for a while (an L2 table its discard allocates, freed again by
   * the shrink) before punching them. Only clusters free in the new image are touched, so
   * nothing any image reads changes; the file's allocation ends as qemu-img's.
   */
  discards: Array<{ punch: boolean; offset: number; length: number }>;
  /**
   * The external data file: truncated to the new size (qemu-img truncates it exactly), before
   * the stages when growing (the old image reads nothing past its end), after them when
   * shrinking, once the ranges QEMU's discard gives back are punched.
   */
  dataFile?: { size: number; grow: boolean; punches: Array<{ offset: number; length: number }> };
}

/** The replay met a case it does not write in place; ops/amend.ts plans it instead. */
export class NotInPlace extends Error {}

/**
 * Plan `qemu-img resize [--preallocation=MODE] FILE newSize` in qemu-img's layout, or throw
 * NotInPlace. `backingLength`: the backing file's virtual size when growing over one. The size
 * was validated by provider/rules; REFUSED is thrown for what only the tables can decide.
 */
export function planResizeInPlace(img: Image, file: BlockFile, newSize: bigint, backingLength?: bigint,
  prealloc: ResizePreallocation = 'off', readBacking?: BackingReader): ResizePlan {
  const h = img.header;
  if (prealloc !== 'off' && (img.hasDataFile || img.geometry.extendedL2)) throw new NotInPlace('preallocation with a data file or subclusters');
  if (h.bitmaps !== undefined) throw new NotInPlace('persistent bitmaps');
  if (img.dataFileRaw && newSize > h.size) throw new NotInPlace('data-file-raw growth preallocates');
  if (img.dirty) throw new NotInPlace('dirty refcounts');
  if (newSize === h.size) throw new NotInPlace('no size change');
  const r = new Replay(img, file, readBacking);
  if (newSize < h.size) r.shrink(newSize); else r.grow(newSize, backingLength, prealloc);
  return r.plan();
}

/** qcow2_co_truncate replayed in memory; stages collected as QEMU writes its header. */
class Replay {
  private readonly g: Geometry;
  private readonly cs: number;
  private readonly ext: boolean;
  private readonly fmt: L2Format;
  /** The image has an external data file: data clusters are not counted, discards punch it. */
  private readonly hasData: boolean;
  /** Ranges of the data file QEMU's discard punches (qcow2_free_any_cluster). */
  private readonly dataPunches: Array<{ offset: number; length: number }> = [];
  private readonly l2: TableCache;
  private readonly rb: TableCache;
  private readonly rc: TableRefcounts;
  private l1: bigint[];
  private l1Offset: number;
  private l1Moved = false;
  private readonly l1Dirty = new Set<number>();
  private readonly page: Buffer;
  private size: bigint;
  private readonly stages: ResizeStage[] = [];
  /** Per stage: clusters allocated, clusters freed (and whether unreferenced on disk already), data writes. */
  private allocated = new Set<number>();
  private freed = new Set<number>();
  private released = new Set<number>();
  private data: { fresh: ResizeWrite[]; inPlace: ResizeWrite[] } = { fresh: [], inPlace: [] };
  /** The refcount table and the blocks' bytes as the previous stage left them. */
  private committedTable: bigint[];
  private readonly committedBlocks = new Map<number, Uint8Array>();
  /** Clusters freed with QCOW2_DISCARD_ALWAYS, in QEMU's batches (each processed as its adjacent runs). */
  private discardBatch: number[] | undefined;
  /** The file operations of QEMU's discards, in order: a batch of clusters punched (as its runs), or a cluster written. */
  private readonly discardLog: Array<{ batch: number[] } | { wrote: number }> = [];
  private truncateTo: number | undefined;
  /** The image file's length as QEMU's writes so far have left it (bdrv_getlength in the replay). */
  private simSize: number;
  /** Grow the image file to this length with zeros before the last stage's writes (preallocation). */
  private growFileTo = 0;
  /** falloc/full: the file grows with zeros written from here (else sparse). */
  private zeroFrom: number | undefined;
  /** The size grew (else it shrank). */
  private grew = false;
  /** The stage writes the refcount table whole (qcow2_shrink_reftable). */
  private wholeReftable = false;

  constructor(img: Image, private readonly file: BlockFile, private readonly readBacking?: BackingReader) {
    this.g = img.geometry;
    this.cs = this.g.clusterSize;
    this.ext = this.g.extendedL2;
    this.hasData = img.hasDataFile;
    this.fmt = { dataFile: this.hasData, extendedL2: this.ext };
    const h = img.header;
    this.l2 = new TableCache(file, this.cs, Number.MAX_SAFE_INTEGER);
    this.rb = new TableCache(file, this.cs, Number.MAX_SAFE_INTEGER);
    const table = img.readReftable();
    this.committedTable = [...table];
    this.rc = new TableRefcounts(this.g, 'immediate', this.rb, BigUint64Array.from(table), safeOffset(h.refcountTableOffset));
    this.l1 = img.readL1();
    this.l1Offset = safeOffset(h.l1TableOffset);
    this.page = file.read(0, Math.min(this.cs, COMMIT_PAGE, file.size()));
    this.simSize = file.size();
    this.size = h.size;
  }

  // --- QEMU's steps ---------------------------------------------------------------------------

  /** qcow2_co_truncate, shrinking (prealloc off). */
  shrink(newSize: bigint): void {
    const cs = BigInt(this.cs);
    const oldSize = this.size;
    const from = ((newSize + cs - 1n) / cs) * cs;
    this.setSize(newSize); // written first: see the file comment
    const keepL1 = this.g.l1EntriesFor(newSize);
    if (from < oldSize) this.discard(Number(from / cs), this.g.clustersFor(oldSize), keepL1);
    this.shrinkL1(keepL1);
    this.shrinkReftable();
    const fileSize = this.simSize;
    const last = this.rc.lastCluster(Math.ceil(fileSize / this.cs));
    if ((last + 1) * this.cs < fileSize) this.truncateTo = (last + 1) * this.cs;
    this.endStage(true);
  }

  /** qcow2_co_truncate, growing (prealloc off). */
  grow(newSize: bigint, backingLength?: bigint, prealloc: ResizePreallocation = 'off'): void {
    const oldSize = this.size;
    this.grew = true;
    const need = this.g.l1EntriesFor(newSize);
    if (need > C.QCOW_MAX_L1_SIZE / 8) throw new Qcow2Error('REFUSED', 'Failed to grow the L1 table: File too large', { property: 'size' });
    if (need > this.l1.length) this.growL1(need);
    // bdrv_co_truncate asks for zeros where the backing file is longer than the old end; the
    // file driver gives them itself when falloc or full grows the file (the flag is dropped).
    let zeroWrite = backingLength !== undefined && backingLength > oldSize;
    if (prealloc === 'metadata') this.preallocateMetadata(oldSize, newSize);
    if (prealloc === 'falloc' || prealloc === 'full') {
      this.preallocateData(oldSize, newSize);
      zeroWrite = false;
    }
    if (zeroWrite) {
      const scs = this.ext ? this.cs / 32 : this.cs;
      const zeroStart = BigInt(Math.ceil(Number(oldSize) / scs) * scs);
      if (newSize > zeroStart) this.zeroize(zeroStart, newSize);
      if (zeroStart > oldSize) this.zeroHead(oldSize, zeroStart < newSize ? zeroStart : newSize);
    }
    this.setSize(newSize);
    this.endStage(false);
  }

  /** qcow2_grow_l1_table(exact): a new L1 first fit, published by its header fields, the old one freed. */
  private growL1(n: number): void {
    const bytes = n * 8;
    const first = this.alloc(Math.ceil(bytes / this.cs));
    const oldOffset = this.l1Offset, oldSize = this.l1.length;
    while (this.l1.length < n) this.l1.push(0n);
    this.l1Offset = first * this.cs;
    this.l1Moved = true;
    const f = Buffer.alloc(12);
    f.writeUInt32BE(n, 0);
    f.writeBigUInt64BE(BigInt(this.l1Offset), 4);
    f.copy(this.page, HEADER_V2.offsets.l1Size!);
    this.endStage(false);
    // After the header write: the old table is no longer referenced (QCOW2_DISCARD_OTHER).
    if (oldSize > 0) this.free(oldOffset / this.cs, Math.ceil((oldSize * 8) / this.cs), false, true);
  }

  /** qcow2_cluster_discard(full_discard) over guest clusters [first, end), QCOW2_DISCARD_ALWAYS. */
  private discard(first: number, end: number, keepL1: number): void {
    const E = this.g.l2Entries;
    this.discardBatch = []; // s->cache_discards: processed together at the end
    for (let gc = first; gc < end;) {
      const i = Math.floor(gc / E);
      const stop = Math.min(end, (i + 1) * E);
      const none = this.l1[i] === 0n;
      const { t } = this.clusterTable(gc);
      if (none) {
        // A new, empty table (get_cluster_table allocates one): nothing in it to clear. Past the
        // new L1 size it is freed again by shrinkL1; its bytes are never written.
        if (i >= keepL1) this.l2.forget(t.offset);
        gc = stop;
        continue;
      }
      for (; gc < stop; gc++) {
        const k = gc % E;
        const e = readL2Entry(t.view, k, this.ext);
        if (e.hi === 0 && e.lo === 0 && e.allocBits === 0 && e.zeroBits === 0) continue;
        writeL2Entry(t.view, k, this.ext, NO_L2_ENTRY);
        this.l2.markDirty(t.offset);
        this.freeAny(e, true);
      }
    }
    this.processDiscards();
    this.discardBatch = undefined;
  }

  /** qcow2_shrink_l1_table: entries past the new size zeroed (the header's L1 size stays), their tables freed. */
  private shrinkL1(n: number): void {
    for (let i = this.l1.length - 1; i >= n; i--) {
      const off = this.l1[i]! & C.L1E_OFFSET_MASK;
      if (this.l1[i] !== 0n) this.l1Dirty.add(i);
      this.l1[i] = 0n;
      if (off !== 0n) this.free(Number(off >> BigInt(this.g.clusterBits)), 1, true);
    }
  }

  /**
   * qcow2_shrink_reftable: blocks that count nothing but themselves leave the table; each one's
   * own refcount is cleared in the block that covers it (qcow2_discard_refcount_block), and it
   * is discarded.
   */
  private shrinkReftable(): void {
    const E = this.g.refblockEntries;
    const order = this.g.refcountOrder;
    const t = this.rc.reftable;
    const drops: number[] = [];
    for (let i = 0; i < t.length; i++) {
      const off = Number(t[i]! & C.REFT_OFFSET_MASK);
      if (off === 0) continue;
      const block = Buffer.from(this.rb.get(off).buf);
      const self = Math.floor(off / this.cs);
      if (Math.floor(self / E) === i) writeRefcount(block, order, self % E, 0);
      if (block.every((b) => b === 0)) drops.push(i);
    }
    this.wholeReftable = true;
    const batch: number[] = [];
    for (const i of drops) {
      const off = Number(t[i]! & C.REFT_OFFSET_MASK);
      const self = off / this.cs;
      const covering = Number((t[Math.floor(self / E)] ?? 0n) & C.REFT_OFFSET_MASK);
      // QEMU stops there (a corruption it signals): not replayed.
      if (covering === 0 || readRefcount(this.rb.get(covering).buf, order, self % E) !== 1) throw new NotInPlace('refcount block not counted once');
      writeRefcount(this.rb.get(covering).buf, order, self % E, 0);
      this.rb.markDirty(covering);
      if (self < this.rc.freeClusterIndex) this.rc.freeClusterIndex = self;
      this.rb.forget(off);
      batch.push(self);
      t[i] = 0n;
      this.rc.reftableDirty.add(i);
    }
    this.discardLog.push({ batch });
  }

  /** The old image's guest bytes [from, to) of guest cluster gc (its own, the backing file's, zeros). */
  private oldView(gc: number, from: number, to: number): Uint8Array {
    const t = this.tableOf(gc);
    const e = t ? readL2Entry(t.view, gc % this.g.l2Entries, this.ext) : NO_L2_ENTRY;
    const type = clusterTypeOf(e.hi, e.lo, this.fmt);
    if (type === 'normal') return this.file.read(hostOffsetOf(e.hi, e.lo) + from, to - from);
    if (type === 'unallocated') return this.backing(gc * this.cs + from, to - from);
    if (type === 'compressed') throw new NotInPlace('copy-on-write of a compressed cluster');
    return new Uint8Array(to - from);
  }

  /** The backing file's bytes (zeros past its end, or without one): what QEMU's copy-on-write reads there. */
  private backing(offset: number, length: number): Uint8Array {
    if (this.readBacking === undefined) return new Uint8Array(length);
    return this.readBacking(offset, length);
  }

  /**
   * preallocate_co(from, to): qcow2_alloc_host_offset over the range, call after call: a cluster
   * the image owns alone is kept; the others get data clusters, contiguous while they can be
   * (qcow2_alloc_clusters_at after the previous run), else first fit, each table's L2 table
   * first; copy-on-write of the old end's head and of the new end cluster's tail. Then the file
   * grows to the last data cluster.
   */
  private preallocateMetadata(from: bigint, to: bigint): void {
    const cs = this.cs, E = this.g.l2Entries;
    const end = Number(to);
    let start = Number(from);
    let fileEnd = 0;
    while (start < end) {
      let hostEnd = -1;
      for (;;) {
        if (start >= end) break;
        const gc = Math.floor(start / cs);
        const t0 = this.tableOf(gc);
        const e = t0 ? readL2Entry(t0.view, gc % E, this.ext) : NO_L2_ENTRY;
        const type = clusterTypeOf(e.hi, e.lo, this.fmt);
        const copied = (e.hi & L2_HI_COPIED) !== 0;
        if (type === 'normal' && copied) {
          // handle_copied: kept, if contiguous with the run
          const host = hostOffsetOf(e.hi, e.lo);
          if (hostEnd >= 0 && host !== hostEnd) break;
          hostEnd = host + cs;
          start = (gc + 1) * cs;
          fileEnd = Math.max(fileEnd, hostEnd);
          continue;
        }
        if (type !== 'unallocated') throw new NotInPlace(`preallocation over a ${type} cluster`);
        // handle_alloc: the L2 table first, then the data clusters
        const lastGc = Math.min(Math.ceil(end / cs), (Math.floor(gc / E) + 1) * E) - 1;
        let n = 1;
        while (gc + n <= lastGc) {
          const tn = this.tableOf(gc + n);
          const en = tn ? readL2Entry(tn.view, (gc + n) % E, this.ext) : NO_L2_ENTRY;
          if (clusterTypeOf(en.hi, en.lo, this.fmt) !== 'unallocated') break;
          n++;
        }
        const head = gc * cs < start ? start - gc * cs : 0;
        const headBytes = head > 0 ? this.oldView(gc, 0, head) : undefined;
        const { t } = this.clusterTable(gc);
        let first: number;
        if (hostEnd < 0) {
          first = this.alloc(n);
        } else {
          this.processDiscards();
          const got = this.rc.allocAt(hostEnd / cs, n);
          if (got === 0) break;
          for (let c = hostEnd / cs; c < hostEnd / cs + got; c++) this.allocated.add(c);
          n = got;
          first = hostEnd / cs;
        }
        for (let j = 0; j < n; j++) writeL2Entry(t.view, (gc + j) % E, this.ext, normalEntry((first + j) * cs));
        this.l2.markDirty(t.offset);
        // perform_cow: the head of the first cluster, the tail of the one holding the new end
        if (headBytes) this.data.fresh.push({ offset: first * cs, data: headBytes });
        const lastEnd = (gc + n) * cs;
        if (lastEnd > end && end % cs !== 0) {
          const tail = end % cs;
          this.data.fresh.push({ offset: (first + n - 1) * cs + tail, data: this.backing(end, cs - tail) });
        }
        // Free clusters inside the file may hold stale bytes QEMU leaves there: zeros instead.
        for (let c = first; c < first + n && c * cs < this.file.size(); c++) {
          const from0 = c === first ? head : 0;
          const to0 = c === first + n - 1 && lastEnd > end ? end % cs || cs : cs;
          if (to0 > from0) this.data.fresh.push({ offset: c * cs + from0, data: new Uint8Array(to0 - from0) });
        }
        hostEnd = (first + n) * cs;
        fileEnd = Math.max(fileEnd, hostEnd);
        start = Math.min(end, (gc + n) * cs);
      }
    }
    if (fileEnd > this.growFileTo) this.growFileTo = fileEnd;
  }

  /**
   * qcow2_co_truncate with falloc or full: refcount structures for the new area at the end of
   * the used file (qcow2_refcount_area: a new refcount table, published by its own header
   * write), the data clusters after them, the file grown over them with zeros, then L2 entries
   * per table (the old end's head copied on write; a cluster it replaces freed).
   */
  private preallocateData(from: bigint, to: bigint): void {
    const cs = this.cs, E = this.g.l2Entries;
    const size = this.simSize;
    const last = this.rc.lastCluster(Math.ceil(size / cs));
    const oldFileSize = last >= 0 ? (last + 1) * cs : Math.ceil(size / cs) * cs;
    const firstGc = Math.floor(Number(from) / cs);
    let nData = this.g.clustersFor(to) - firstGc;
    const nL2 = Math.ceil(nData / E) + 1;
    this.processDiscards();
    const allocStart = this.rc.refcountArea(oldFileSize, nData + nL2, true, 0, 0);
    const f = Buffer.alloc(12);
    f.writeBigUInt64BE(BigInt(this.rc.reftableOffset), 0);
    f.writeUInt32BE(Math.ceil((this.rc.reftable.length * 8) / cs), 8);
    f.copy(this.page, HEADER_V2.offsets.refcountTableOffset!);
    this.endStage(false);
    const got = this.rc.allocAt(allocStart / cs, nData);
    if (got !== nData) throw new NotInPlace(`data area not free: ${got} of ${nData} at cluster ${allocStart / cs} (old file ${oldFileSize})`);
    for (let c = allocStart / cs; c < allocStart / cs + nData; c++) this.allocated.add(c);
    this.growFileTo = allocStart + nData * cs;
    this.zeroFrom = allocStart;
    let gc = firstGc, host = allocStart;
    const head = Number(from) % cs;
    while (nData > 0) {
      const n = Math.min(nData, E - (gc % E));
      const headBytes = gc === firstGc && head > 0 ? this.oldView(gc, 0, head) : undefined;
      const { t } = this.clusterTable(gc);
      const old: L2Halves[] = [];
      for (let j = 0; j < n; j++) {
        old.push(readL2Entry(t.view, (gc + j) % E, this.ext));
        writeL2Entry(t.view, (gc + j) % E, this.ext, normalEntry(host + j * cs));
      }
      this.l2.markDirty(t.offset);
      if (headBytes) this.data.fresh.push({ offset: host, data: headBytes });
      for (const e of old) this.freeAny(e, false); // QCOW2_DISCARD_NEVER
      gc += n;
      host += n * cs;
      nData -= n;
    }
  }

  /** qcow2_subcluster_zeroize(from, to - from) during a truncate: flags 0, the end is the image's end. */
  private zeroize(from: bigint, to: bigint): void {
    const cs = BigInt(this.cs);
    let offset = from;
    const head = (to < ((offset + cs - 1n) / cs) * cs ? to : ((offset + cs - 1n) / cs) * cs) - offset;
    offset += head;
    if (head > 0n) {
      // zero_l2_subclusters: the rest of the old end's cluster (extended L2 only).
      const scs = this.cs / 32;
      const gc = Number((offset - head) / cs);
      const sc = Number(((offset - head) % cs) / BigInt(scs));
      const nsc = Math.ceil(Number(head) / scs);
      const { t, k } = this.clusterTable(gc);
      const e = readL2Entry(t.view, k, this.ext);
      if (clusterTypeOf(e.hi, e.lo, this.fmt) === 'compressed') {
        throw new OldEndRefused({ compressedSubclusters: true });
      }
      const mask = nsc >= 32 ? SUBCLUSTERS_ALL : ((((1 << nsc) >>> 0) - 1) << sc) >>> 0;
      const ne = { ...e, allocBits: (e.allocBits & ~mask) >>> 0, zeroBits: (e.zeroBits | mask) >>> 0 };
      if (ne.allocBits !== e.allocBits || ne.zeroBits !== e.zeroBits) {
        writeL2Entry(t.view, k, this.ext, ne);
        this.l2.markDirty(t.offset);
      }
    }
    const end = this.g.clustersFor(to);
    for (let gc = Number(offset / cs); gc < end; gc++) {
      const { t, k } = this.clusterTable(gc);
      const e = readL2Entry(t.view, k, this.ext);
      const compressed = clusterTypeOf(e.hi, e.lo, this.fmt) === 'compressed';
      const ne = compressed ? { ...NO_L2_ENTRY } : { ...e };
      if (this.ext) ne.zeroBits = SUBCLUSTERS_ALL, ne.allocBits = 0; else ne.lo = (ne.lo | L2_LO_ZERO) >>> 0;
      if (ne.hi === e.hi && ne.lo === e.lo && ne.allocBits === e.allocBits && ne.zeroBits === e.zeroBits) continue;
      writeL2Entry(t.view, k, this.ext, ne);
      this.l2.markDirty(t.offset);
      if (compressed) this.freeAny(e, false); // QCOW2_DISCARD_REQUEST: qemu-img opens without unmap
    }
  }

  /** The explicit zeros of the old end's subcluster: written in place, in a cluster the image owns alone. */
  private zeroHead(from: bigint, to: bigint): void {
    if (this.hasData) throw new NotInPlace('zeros written into the data file');
    const cs = BigInt(this.cs);
    const gc = Number(from / cs);
    const inCluster = Number(from % cs);
    const t = this.tableOf(gc);
    const e = t ? readL2Entry(t.view, gc % this.g.l2Entries, this.ext) : NO_L2_ENTRY;
    const scs = this.ext ? this.cs / 32 : this.cs;
    const sc = Math.floor(inCluster / scs);
    const own = clusterTypeOf(e.hi, e.lo, this.fmt) === 'normal' && (e.hi & L2_HI_COPIED) !== 0 &&
      (!this.ext || ((e.allocBits >>> sc) & 1) === 1);
    if (!own) {
      throw new OldEndRefused({ owned: false });
    }
    this.data.inPlace.push({ offset: hostOffsetOf(e.hi, e.lo) + inCluster, data: new Uint8Array(Number(to - from)) });
  }

  // --- QEMU's helpers ---------------------------------------------------------------------------

  private setSize(n: bigint): void {
    this.size = n;
    this.page.writeBigUInt64BE(n, HEADER_V2.offsets.size!);
  }

  /** The L2 table of guest cluster gc as it stands, or undefined. */
  private tableOf(gc: number) {
    const l2 = this.l1[Math.floor(gc / this.g.l2Entries)]! & C.L1E_OFFSET_MASK;
    return l2 === 0n ? undefined : this.l2.get(safeOffset(l2));
  }

  /** get_cluster_table: the L2 table of guest cluster gc, made the image's own (l2_allocate) first. */
  private clusterTable(gc: number): { t: { view: DataView; offset: number }; k: number } {
    const i = Math.floor(gc / this.g.l2Entries);
    const e = this.l1[i]!;
    let off = Number(e & C.L1E_OFFSET_MASK);
    if ((e & C.QCOW_OFLAG_COPIED) === 0n) {
      const c = this.alloc(1);
      if (off === 0) this.l2.create(c * this.cs); else this.l2.copy(off, c * this.cs);
      this.discardLog.push({ wrote: c }); // l2_allocate writes it at once
      this.simSize = Math.max(this.simSize, (c + 1) * this.cs);
      this.l1[i] = BigInt(c * this.cs) | C.QCOW_OFLAG_COPIED;
      this.l1Dirty.add(i);
      if (off !== 0) this.free(off / this.cs, 1, false);
      off = c * this.cs;
    }
    return { t: { view: this.l2.get(off).view, offset: off }, k: gc % this.g.l2Entries };
  }

  /** qcow2_free_any_cluster; `discard`: of a type QEMU passes down (QCOW2_DISCARD_ALWAYS). */
  private freeAny(e: L2Halves, discard: boolean): void {
    const type = clusterTypeOf(e.hi, e.lo, this.fmt);
    if (this.hasData) {
      if (discard && (type === 'normal' || type === 'zero-alloc')) this.dataPunches.push({ offset: hostOffsetOf(e.hi, e.lo), length: this.cs });
      return;
    }
    if (type === 'compressed') {
      const r = parseCompressedEntry(entryOf(e.hi, e.lo), this.g.clusterBits);
      this.free(r.firstCluster, r.clusters, discard);
    } else if (type === 'normal' || type === 'zero-alloc') {
      this.free(hostClusterOf(e.hi, e.lo, this.g.clusterBits), 1, discard);
    }
  }

  /** qcow2_process_discards of the queue s->cache_discards kept. */
  private processDiscards(): void {
    if (this.discardBatch?.length) this.discardLog.push({ batch: this.discardBatch });
    if (this.discardBatch) this.discardBatch = [];
  }

  private alloc(n: number): number {
    this.processDiscards(); // alloc_clusters_noref: nothing queued for discard is handed out
    const first = this.rc.alloc(n);
    for (let c = first; c < first + n; c++) this.allocated.add(c);
    return first;
  }

  /** qcow2_free_clusters; `discard`: QEMU punches what this brings to 0; `released`: nothing on disk references it any more. */
  private free(first: number, n: number, discard: boolean, released = false): void {
    const zeroed: number[] = [];
    this.rc.zeroed = zeroed;
    this.rc.free(first, n);
    this.rc.zeroed = undefined;
    for (let c = first; c < first + n; c++) {
      this.freed.add(c);
      if (released) this.released.add(c);
    }
    if (discard) {
      if (this.discardBatch) this.discardBatch.push(...zeroed); else this.discardLog.push({ batch: zeroed });
    }
  }

  // --- stages -----------------------------------------------------------------------------------

  /** Refcount of cluster c as the previous stage left it. */
  private committedRefcount(c: number): number {
    const E = this.g.refblockEntries;
    const ti = Math.floor(c / E);
    const off = Number((this.committedTable[ti] ?? 0n) & C.REFT_OFFSET_MASK);
    if (off === 0) return 0;
    return readRefcount(this.committedBlock(off), this.g.refcountOrder, c % E);
  }

  private committedBlock(off: number): Uint8Array {
    let b = this.committedBlocks.get(off);
    if (b === undefined) {
      b = this.file.read(off, this.cs);
      this.committedBlocks.set(off, b);
    }
    return b;
  }

  /** A write of fresh bytes into clusters the disk may not hold anything in use at. */
  private requireFree(offset: number, length: number): void {
    for (let c = Math.floor(offset / this.cs); c * this.cs < offset + length; c++) {
      if (this.freed.has(c) && !this.released.has(c)) throw new NotInPlace(`cluster ${c} freed and reused in one stage`);
      if (this.committedRefcount(c) !== 0 && !this.released.has(c)) throw new NotInPlace(`cluster ${c} in use`);
    }
  }

  /** Close a stage at a header write of QEMU's: collect what changed since the last one. */
  private endStage(headerFirst: boolean): void {
    const cs = this.cs;
    const st: ResizeStage = { headerFirst, header: Buffer.from(this.page), fresh: [], raise: [], inPlace: [], lower: [] };
    if (this.growFileTo > 0) {
      st.extend = { to: this.growFileTo, ...(this.zeroFrom !== undefined ? { zerosFrom: this.zeroFrom } : {}) };
      this.growFileTo = 0;
      this.zeroFrom = undefined;
    }
    // qcow2_refcount_area: a new table (its entries included) in fresh clusters, published by
    // this stage's header; the old one freed, lowered after it.
    if (this.rc.reftableMoved) st.fresh.push({ offset: this.rc.reftableOffset, data: this.rc.reftableBytes() });

    // New refcount blocks (not in the table the stage started with) are fresh; the others are
    // raised first and lowered last.
    const blocksAtStart = new Set(this.committedTable.map((e) => Number(e & C.REFT_OFFSET_MASK)).filter((o) => o !== 0));
    const order = this.g.refcountOrder;
    const ended = new Map<number, Uint8Array>();
    const lowered: ResizeWrite[] = [];
    this.rb.writeBack((off, buf) => {
      const end = Buffer.from(buf);
      if (!blocksAtStart.has(off)) {
        st.fresh.push({ offset: off, data: end });
      } else {
        const start = this.committedBlock(off);
        const raised = Buffer.from(start);
        for (let k = 0; k < this.g.refblockEntries; k++) {
          const v = readRefcount(end, order, k);
          if (v > readRefcount(start, order, k)) writeRefcount(raised, order, k, v);
        }
        if (!raised.equals(start)) st.raise.push({ offset: off, data: raised });
        if (!end.equals(raised)) lowered.push({ offset: off, data: end });
      }
      ended.set(off, end);
    });
    const table = this.rc.reftable;
    for (const i of [...this.rc.reftableDirty].sort((a, b) => a - b)) {
      const before = this.committedTable[i] ?? 0n, after = table[i]!;
      if (before === after) continue;
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(after);
      const w = { offset: this.rc.reftableOffset + i * 8, data: b };
      if (before === 0n) st.raise.push(w);
      else if (after === 0n) { if (!this.wholeReftable) st.lower.push(w); }
      else throw new NotInPlace('a refcount block moves');
    }
    // qcow2_shrink_reftable writes the whole table (its entries dropped, the others as they are).
    if (this.wholeReftable) st.lower.push({ offset: this.rc.reftableOffset, data: this.rc.reftableBytes() });
    this.wholeReftable = false;
    // Dropped reftable entries first: a block's own refcount, cleared in the block covering
    // it, may be lowered only once nothing points at it.
    st.lower.push(...lowered);
    this.rc.markWritten();

    // L2 tables: those still in use, fresh where allocated in this stage, else in place.
    this.l2.writeBack((off, buf) => {
      const c = off / cs;
      if (this.rc.get(c) === 0) return; // freed again: QEMU drops it from its cache
      const w = { offset: off, data: Buffer.from(buf) };
      if (this.allocated.has(c)) st.fresh.push(w); else st.inPlace.push(w);
    });
    // L1: a new table is fresh (QEMU writes its entries' bytes exactly); changed entries in place.
    const l1Bytes = (from: number, to: number) => {
      const b = Buffer.alloc((to - from) * 8);
      for (let i = from; i < to; i++) b.writeBigUInt64BE(this.l1[i]!, (i - from) * 8);
      return b;
    };
    if (this.l1Moved) {
      st.fresh.push({ offset: this.l1Offset, data: l1Bytes(0, this.l1.length) });
    } else {
      const dirty = [...this.l1Dirty].sort((a, b) => a - b);
      for (let j = 0; j < dirty.length;) {
        let k = j + 1;
        while (k < dirty.length && dirty[k] === dirty[k - 1]! + 1) k++;
        st.inPlace.push({ offset: this.l1Offset + dirty[j]! * 8, data: l1Bytes(dirty[j]!, dirty[k - 1]! + 1) });
        j = k;
      }
    }
    st.fresh.push(...this.data.fresh);
    st.inPlace.push(...this.data.inPlace);
    for (const w of st.fresh) {
      this.requireFree(w.offset, w.data.length);
      this.simSize = Math.max(this.simSize, w.offset + w.data.length);
    }
    if (st.extend) this.simSize = Math.max(this.simSize, st.extend.to);
    for (const [off, end] of ended) this.committedBlocks.set(off, end);

    this.stages.push(st);
    this.committedTable = [...table];
    this.l1Moved = false;
    this.l1Dirty.clear();
    this.allocated = new Set();
    this.freed = new Set();
    this.released = new Set();
    this.data = { fresh: [], inPlace: [] };
  }

  plan(): ResizePlan {
    const cs = this.cs;
    const end = Math.min(this.truncateTo ?? Number.MAX_SAFE_INTEGER, this.file.size());
    const free = (c: number) => this.rc.get(c) === 0 && (c + 1) * cs <= end;
    // A batch is punched as its runs of adjacent clusters (update_refcount_discard merges
    // them), less what is in use again at the end (QEMU punched it before reusing it).
    const discards: ResizePlan['discards'] = [];
    for (const op of this.discardLog) {
      if ('wrote' in op) {
        if (free(op.wrote)) discards.push({ punch: false, offset: op.wrote * cs, length: cs });
        continue;
      }
      let last: ResizePlan['discards'][number] | undefined;
      for (const c of [...new Set(op.batch)].sort((a, b) => a - b)) {
        if (!free(c)) { last = undefined; continue; }
        if (last && last.offset + last.length === c * cs) last.length += cs;
        else discards.push(last = { punch: true, offset: c * cs, length: cs });
      }
    }
    const plan: ResizePlan = { stages: this.stages, ...(this.truncateTo !== undefined ? { truncate: this.truncateTo } : {}), discards };
    if (this.hasData) plan.dataFile = { size: Number(this.size), grow: this.grew, punches: this.dataPunches };
    return plan;
  }
}

/**
 * Write a plan in the order of the file comment, a flush between steps that wrote anything.
 * `punchHole` punches the image file, `dataFile` (with `punchData`) is the open external data file.
 */
export function applyResize(file: BlockFile, plan: ResizePlan, punchHole?: (offset: number, length: number) => void,
  dataFile?: BlockFile, punchData?: (offset: number, length: number) => void): void {
  const df = plan.dataFile;
  if (df && !dataFile) throw new Qcow2Error('NOT_FOUND', 'The external data file must be open to resize it');
  // Growing never shortens a data file that is already longer (qemu-img would cut it to the new
  // size: bytes no mapping reaches, but bytes of a file the user keeps).
  if (df?.grow && dataFile && dataFile.size() < df.size) {
    dataFile.truncate(df.size);
    dataFile.flush();
  }
  let pending = false;
  const write = (ws: ResizeWrite[]) => {
    for (const w of ws) file.write(w.offset, w.data);
    if (ws.length) pending = true;
  };
  const barrier = () => {
    if (pending) file.flush();
    pending = false;
  };
  for (const st of plan.stages) {
    const header = [{ offset: 0, data: st.header }];
    if (st.headerFirst) { write(header); barrier(); }
    if (st.extend?.zerosFrom !== undefined) {
      writeZeros(file, st.extend.zerosFrom, st.extend.to - st.extend.zerosFrom, true);
      pending = true;
    } else if (st.extend && st.extend.to > file.size()) {
      file.truncate(st.extend.to);
      pending = true;
    }
    write(st.fresh); barrier();
    write(st.raise); barrier();
    write(st.inPlace); barrier();
    if (!st.headerFirst) { write(header); barrier(); }
    write(st.lower); barrier();
  }
  // After the last stage these clusters are free: punching them or writing zeros there
  // changes nothing any image reads. Advisory, as QEMU's discard: only where holes can be punched.
  if (punchHole && plan.discards.length) {
    for (const d of plan.discards) {
      if (d.punch) punchHole(d.offset, d.length);
      else file.write(d.offset, new Uint8Array(d.length));
    }
    file.flush();
  }
  if (plan.truncate !== undefined && plan.truncate < file.size()) {
    file.truncate(plan.truncate);
    file.flush();
  }
  if (df && !df.grow && dataFile) {
    if (punchData) for (const p of df.punches) if (p.offset < df.size) punchData(p.offset, Math.min(p.length, df.size - p.offset));
    dataFile.truncate(df.size);
    dataFile.flush();
  }
}
