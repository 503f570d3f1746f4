// `amend`, `resize` and `rebase -u` as one all-or-nothing change. Options arrive validated
// (provider/rules). The plan is computed first, with nothing written; then it is applied so
// that a crash at any moment leaves either the old image or the new one:
//
//   1. the data file grows (if it must): the old image does not look past its old size;
//   2. every new metadata cluster (L2 tables, L1, refcount blocks and table, zero clusters) goes
//      to clusters that are free in the old image, so the old image cannot see them;
//   3. flush; then the header is rewritten in one write of at most 4 KiB (one page): the commit
//      (meta/header-commit.ts);
//   4. flush; then what only the new image allows: shrinking the data file and the image file.
//
// A downgrade (compat=0.10) is not planned here: qcow2/ops/downgrade.ts edits the tables in
// place as qemu-img does, after this plan made the amend's other changes. Nor is `resize`:
// qcow2/ops/resize.ts edits the tables in place as qemu-img does; the cases it does not replay
// (persistent bitmaps; preallocation with extended L2 or a data file; see there) come here.
// Header-only changes (compat up, lazy refcounts, data file name, data-file-raw off, rebase -u)
// are step 3 alone, and their bytes equal qemu-img's. Persistent bitmaps are kept as they are
// (their clusters keep their refcounts through a rebuild), and resized with the image: stored
// anew in free clusters, the old ones freed by the same commit. Changes that move metadata are equal to
// qemu-img's in info, map and check, not in layout: qemu-img updates tables in place.

import { BlockFile } from '../io/blockfile';
import { writeZeros } from '../io/sparse';
import * as C from '../spec/constants';
import { countReferences } from './check';
import { Qcow2Error } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header } from '../spec/header';
import { HeaderCommit, planHeaderCommit, writeHeaderCommit } from '../meta/header-commit';
import { encodeL1Entry } from '../spec/l1';
import {
  L2Halves, NO_L2_ENTRY, L2_HI_COPIED, L2_LO_ZERO, SUBCLUSTERS_ALL, clusterTypeOf, subclusterTypeOf, entryOf, hostClusterOf, hostOffsetOf, normalEntry,
  parseCompressedEntry, putNormalEntry, readL2Entry, writeL2Entry,
} from '../spec/l2';
import { readRefcount } from '../spec/refcount';
import { SNAPSHOT_EXTRA_V3 } from '../spec/snapshot';
import { Image, safeOffset } from '../meta/image';
import { CountRefcounts } from '../meta/refcount';
import { BitmapClusterIo, freeBitmapClusters, loadBitmap, readBitmapDirectory, storeBitmapData } from '../meta/bitmaps';
import { BME_FLAG_AUTO, encodeBitmapDirectory } from '../spec/bitmaps';
import { Table, TableCache } from '../meta/tables';

/** A validated amend, in header terms. Undefined fields are unchanged. */
export interface AmendChanges {
  version?: 2 | 3;
  lazyRefcounts?: boolean;
  refcountOrder?: number;
  size?: bigint;
  /** New data file name; '' removes the name extension. */
  dataFile?: string;
  dataFileRaw?: boolean;
  /** rebase -u: the new backing file ('' for none) and format. */
  backing?: { file: string; format?: string };
  /** resize --preallocation: how the new area is allocated when the size grows (default off). */
  preallocation?: ResizePreallocation;
}

/** qemu-img resize --preallocation modes (qcow2_co_truncate accepts these four). */
export type ResizePreallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** Guest bytes of the backing chain (zeros past its end): the head of a cluster copied on write. */
export type BackingReader = (offset: number, length: number) => Uint8Array;

/** A write: bytes, or a generator filling `length` bytes at apply time (L2 tables are streamed, not held). */
type Write = { offset: number; data: Uint8Array } | { offset: number; length: number; fill: (out: DataView, at: number) => void };

/** Everything an amend writes, decided before anything is written. */
export interface AmendPlan {
  header: Header;
  /** New clusters (and in-place zeroing of ZERO_ALLOC clusters), written before the commit. */
  writes: Write[];
  /** The header write at offset 0 (one page; a long header's tail written before it): the commit. */
  commit: HeaderCommit;
  /** Grow the data file to this size before the commit. */
  dataFileGrow?: number;
  /** resize --preallocation=falloc|full on an external data file: the grown part is written with zeros. */
  dataFileGrowZeros?: boolean;
  /**
   * Zeros written before the commit into a cluster the image owns, past the old end (invisible
   * to the old image): the rest of the old end's cluster when growing over a longer backing file.
   */
  tailZeros?: { offset: number; length: number; inDataFile: boolean };
  /** Shrink the data file to this size after the commit. */
  dataFileShrink?: number;
  /** Shrink the image file to this size after the commit. */
  fileShrink?: number;
  /**
   * Host ranges of data clusters a shrink freed, given back to the file system (holes punched)
   * after the commit, as QEMU's truncate discards them. Never a cluster the new image uses.
   */
  discards?: Array<{ offset: number; length: number }>;
  /** True when only the header changes. */
  headerOnly: boolean;
}

/** Stored refcounts of every cluster the refcount table covers inside the file. */
export function storedRefcounts(img: Image, fileClusters: number): Uint32Array {
  const g = img.geometry;
  const counts = new Uint32Array(fileClusters);
  img.readReftable().forEach((e, ti) => {
    const off = e & C.REFT_OFFSET_MASK;
    const base = ti * g.refblockEntries;
    if (off === 0n || base >= fileClusters) return;
    const block = img.readCluster(off);
    const n = Math.min(g.refblockEntries, fileClusters - base);
    for (let k = 0; k < n; k++) {
      const v = readRefcount(block, g.refcountOrder, k);
      if (v > 0xffffffff) throw new Qcow2Error('UNSUPPORTED', `Cluster ${base + k} has a refcount of ${v}, beyond what this engine rebuilds`);
      counts[base + k] = v;
    }
  });
  return counts;
}

/**
 * The first cluster whose stored refcount exceeds `max` (a narrower refcount width cannot hold
 * it), or undefined. Reads the refcount blocks inside the file.
 */
export function firstRefcountAbove(img: Image, file: BlockFile, max: bigint): { offset: bigint; refcount: bigint } | undefined {
  const cs = img.geometry.clusterSize;
  const counts = storedRefcounts(img, Math.ceil(file.size() / cs));
  for (let ci = 0; ci < counts.length; ci++) {
    if (BigInt(counts[ci]!) > max) return { offset: BigInt(ci) * BigInt(cs), refcount: BigInt(counts[ci]!) };
  }
  return undefined;
}

/**
 * Thrown by the resize planners (here and ops/resize.ts) at an old end that a growth over a
 * longer backing file cannot zero in place: the fact, which engines/native/ops.ts turns into
 * the rules' refusal (rules/amend.ts validateGrowOverBackingEnd).
 */
export class OldEndRefused extends Error {
  constructor(readonly end: { compressedSubclusters?: boolean; owned?: boolean }) {
    super('growth over a longer backing file refused at the old end');
  }
}

/**
 * Whether an amend writes more than the header: a size change, a new refcount width, a
 * downgrade, or the repair of refcounts lazy refcounts left dirty. Such changes build on the
 * image's tables, so the engine checks them first (provider/rules validateConsistent).
 */
export function amendMovesMetadata(img: Image, ch: AmendChanges): boolean {
  const old = img.header;
  return (ch.size !== undefined && ch.size !== old.size) ||
    (ch.version === 2 && old.version === 3) ||
    (ch.refcountOrder !== undefined && ch.refcountOrder !== old.refcountOrder) ||
    img.dirty;
}

/**
 * qcow2_upgrade: v3 needs every snapshot to carry at least 16 bytes of extra data (the 64-bit
 * VM state size and the disk size); when one does not, the whole table is written anew first,
 * as qcow2_write_snapshots writes it (ops/snapshot.ts rewriteSnapshotTable), before the plan.
 */
export function upgradeRewritesSnapshots(img: Image, ch: AmendChanges): boolean {
  return ch.version === 3 && img.header.version === 2 && img.header.nbSnapshots > 0 &&
    img.readSnapshots().some((s) => s.extraDataSize < SNAPSHOT_EXTRA_V3);
}

/**
 * Plan an amend on an open image. `dataFileSize` is the current size of the external data file
 * and `backingLength` the backing file's virtual size (both needed when the size grows). Throws REFUSED for what only the data can decide (a refcount
 * that does not fit a narrower width); everything else was validated by provider/rules.
 */
export function planAmend(img: Image, file: BlockFile, ch: AmendChanges, dataFileSize?: number, backingLength?: bigint, readBacking?: BackingReader): AmendPlan {
  const old = img.header;
  const g = img.geometry;
  const cs = g.clusterSize;
  const cbits = BigInt(g.clusterBits);
  const h: Header = { ...old, unknownExtensions: [...old.unknownExtensions] };
  const fileSize = file.size();
  const fileClusters = Math.ceil(fileSize / cs);

  // Header-only fields.
  if (ch.lazyRefcounts !== undefined) {
    h.compatibleFeatures = ch.lazyRefcounts ? h.compatibleFeatures | C.QCOW2_COMPAT_LAZY_REFCOUNTS : h.compatibleFeatures & ~C.QCOW2_COMPAT_LAZY_REFCOUNTS;
  }
  if (ch.dataFileRaw === false) h.autoclearFeatures &= ~C.QCOW2_AUTOCLEAR_DATA_FILE_RAW;
  if (ch.dataFile !== undefined) {
    if (ch.dataFile === '') delete h.dataFile; else h.dataFile = ch.dataFile;
  }
  if (ch.backing) {
    if (ch.backing.file === '') { delete h.backingFile; delete h.backingFormat; } else {
      h.backingFile = ch.backing.file;
      if (ch.backing.format !== undefined) h.backingFormat = ch.backing.format; else delete h.backingFormat;
    }
  }
  // A writer clears the autoclear bits it does not maintain (that is how data-file-raw stays honest).
  h.autoclearFeatures &= C.QCOW2_AUTOCLEAR_MASK;
  if (ch.version === 3 && old.version === 2) {
    h.version = 3;
    h.headerLength = C.QCOW2_V3_HEADER_LENGTH;
  }

  const newOrder = ch.refcountOrder ?? old.refcountOrder;
  const sizeChanges = ch.size !== undefined && ch.size !== old.size;
  // A downgrade is qcow2/ops/downgrade.ts's (tables edited in place); the engine plans the rest here first.
  if (ch.version === 2 && old.version === 3) throw new Qcow2Error('UNSUPPORTED', 'A downgrade is planned by planDowngrade (qcow2/ops/downgrade.ts), not planAmend');
  const repair = img.dirty;
  const metadata = amendMovesMetadata(img, ch);

  const writes: Write[] = [];
  let plan: Omit<AmendPlan, 'commit'> = { header: h, writes, headerOnly: !metadata };

  if (metadata) {
    // Refcounts: stored ones, or recounted from references when lazy refcounts left them stale.
    // Frees are deferred: nothing the old image uses is reused before the commit.
    let stored: Uint32Array;
    if (repair) {
      const ref = countReferences(img, file);
      // Stale refcounts are what the repair fixes; broken structure it cannot.
      if (ref.beyondFile.length || ref.structuralCorruptions) {
        throw new Qcow2Error('INVALID_IMAGE', 'The image has corruptions that a refcount repair cannot fix; run qemu-img check -r all first');
      }
      stored = ref.counts;
      h.incompatibleFeatures &= ~C.QCOW2_INCOMPAT_DIRTY;
    } else {
      stored = storedRefcounts(img, fileClusters);
    }
    const a = new CountRefcounts(g, 'deferred', stored);
    const l1Old = img.readL1();
    const l1 = [...l1Old];
    const ext = g.extendedL2;
    const hasData = img.hasDataFile;
    const fmt = { dataFile: hasData, extendedL2: ext };
    // Changed L2 tables are copies (copy-on-write), placed once the plan is known: L1 index -> copy.
    const tables = new TableCache(file, cs);
    const copies = new Map<number, Table>();

    /** Data clusters a shrink frees: candidates for discarding once the plan is complete. */
    const freedByShrink: number[] = [];
    /** Metadata clusters the plan frees (old L2 tables, L1, refcount structures): discarded too on a shrink. */
    const freedMeta: number[] = [];
    const freeMeta = (first: number, n = 1) => {
      a.free(first, n);
      for (let c = first; c < first + n; c++) freedMeta.push(c);
    };
    let shrinking = false;
    const dropDataRef = (e: L2Halves) => {
      if (hasData) return;
      const t = clusterTypeOf(e.hi, e.lo, fmt);
      if (t === 'compressed') {
        const r = parseCompressedEntry(entryOf(e.hi, e.lo), g.clusterBits);
        a.free(r.firstCluster, r.clusters);
      } else if (t === 'normal' || t === 'zero-alloc') {
        const hc = hostClusterOf(e.hi, e.lo, g.clusterBits);
        a.free(hc);
        if (shrinking) freedByShrink.push(hc);
      }
    };
    /** The table at L1 index i as it stands in this plan (the copy once there is one). */
    const current = (i: number): Table | undefined => {
      const l2 = l1[i]! & C.L1E_OFFSET_MASK;
      return copies.get(i) ?? (l2 === 0n ? undefined : tables.get(safeOffset(l2)));
    };
    /** The L2 table at L1 index i, copied for writing (never edited in place). */
    const tableFor = (i: number): Table => {
      let t = copies.get(i);
      if (t !== undefined) return t;
      const l2 = l1[i]! & C.L1E_OFFSET_MASK;
      t = tables.clone(l2 === 0n ? null : safeOffset(l2));
      // A data cluster's refcount counts the L1 tables that reach it, not the L2 copies: a copy
      // of a table shared with a snapshot changes only the tables' own refcounts.
      if (l2 !== 0n) freeMeta(Number(l2 >> cbits));
      copies.set(i, t);
      return t;
    };
    const setEntry = (t: Table, k: number, e: L2Halves) => writeL2Entry(t.view, k, ext, e);
    const entryAt = (t: Table, k: number) => readL2Entry(t.view, k, ext);

    // data-file-raw as it will be: qemu-img clears the bit before it resizes.
    const raw = img.dataFileRaw && ch.dataFileRaw !== false;
    /** New L2 tables the grow path generates whole; written by generators, never held in memory. */
    const generated = new Map<number, Generated>();

    /**
     * qcow2_co_truncate with BDRV_REQ_ZERO_WRITE, for an old end inside a cluster: the rest of
     * its subcluster is written as zeros (in place: the cluster must be this image's own), the
     * subclusters after it up to the new end become zero subclusters (extended L2).
     */
    const zeroOldEndCluster = (newSize: bigint): Pick<AmendPlan, 'tailZeros'> => {
      const gc = Number(old.size / BigInt(cs));
      const inCluster = Number(old.size % BigInt(cs));
      const scs = ext ? cs / 32 : cs;
      const zeroStart = Math.ceil(inCluster / scs) * scs;
      const newEnd = Number(newSize - BigInt(gc) * BigInt(cs) < BigInt(cs) ? newSize - BigInt(gc) * BigInt(cs) : BigInt(cs));
      const i = Math.floor(gc / g.l2Entries), k = gc % g.l2Entries;
      let tailZeros: AmendPlan['tailZeros'];
      const headEnd = Math.min(zeroStart, newEnd);
      if (headEnd > inCluster) {
        const t = current(i);
        const e = t ? entryAt(t, k) : NO_L2_ENTRY;
        const sc = Math.floor(inCluster / scs);
        const own = clusterTypeOf(e.hi, e.lo, fmt) === 'normal' && (e.hi & L2_HI_COPIED) !== 0 && (!ext || (e.allocBits >>> sc) & 1);
        if (!own) {
          throw new OldEndRefused({ owned: false });
        }
        tailZeros = { offset: hostOffsetOf(e.hi, e.lo) + inCluster, length: headEnd - inCluster, inDataFile: hasData };
      }
      if (ext && newEnd > zeroStart) {
        const t = tableFor(i);
        const e = entryAt(t, k);
        if (clusterTypeOf(e.hi, e.lo, fmt) === 'compressed') {
          throw new OldEndRefused({ compressedSubclusters: true });
        }
        let mask = 0;
        for (let sc = zeroStart / scs; sc < Math.ceil(newEnd / scs); sc++) mask |= 1 << sc;
        setEntry(t, k, { ...e, allocBits: (e.allocBits & ~mask) >>> 0, zeroBits: (e.zeroBits | mask) >>> 0 });
      }
      return tailZeros ? { tailZeros } : {};
    };

    /** The old end's cluster with an external data file: already mapped, or refused (no copy-on-write there). */
    const preallocateDataFileOldEnd = (): void => {
      if (old.size % BigInt(cs) === 0n) return;
      const gc = Number(old.size / BigInt(cs));
      const t = current(Math.floor(gc / g.l2Entries));
      const e = t ? entryAt(t, gc % g.l2Entries) : NO_L2_ENTRY;
      if (clusterTypeOf(e.hi, e.lo, fmt) !== 'normal') throw refusePreallocOldEnd();
    };

    /**
     * Preallocation, the old end inside a cluster, as qemu-img leaves it: metadata mode keeps a
     * cluster the image owns alone (its rest zeroed: returned, written before the commit past
     * the old end, so invisible to the old image; a zero cluster with a host cluster is zeroed
     * whole behind its ZERO flag); falloc and full, and any cluster not owned alone (unallocated,
     * zero, shared with a snapshot), get a new data cluster holding what the old image read
     * there (its own bytes, zeros, or the backing file's) followed by zeros: qemu-img's
     * copy-on-write. A compressed cluster is refused.
     */
    const preallocateOldEnd = (mode: ResizePreallocation, longerBacking: boolean): AmendPlan['tailZeros'] => {
      const inCluster = Number(old.size % BigInt(cs));
      if (inCluster === 0) return undefined;
      const gc = Number(old.size / BigInt(cs));
      const i = Math.floor(gc / g.l2Entries), k = gc % g.l2Entries;
      const t0 = current(i);
      const e = t0 ? entryAt(t0, k) : NO_L2_ENTRY;
      const type = clusterTypeOf(e.hi, e.lo, fmt);
      if (type === 'compressed') throw refusePreallocOldEnd();
      const scs = ext ? cs / 32 : cs;
      const sc = Math.floor(inCluster / scs);
      const own = (e.hi & L2_HI_COPIED) !== 0;
      const host = type === 'normal' || type === 'zero-alloc' ? hostOffsetOf(e.hi, e.lo) : 0;
      if (mode === 'metadata' && own && type === 'normal') {
        if (ext && longerBacking && inCluster % scs !== 0 && !((e.allocBits >>> sc) & 1)) {
          // The old end's subcluster is not allocated (the old image reads the backing file or
          // zeros there, never these host bytes): its head is copied in place, as qemu-img's
          // copy-on-write does, and it becomes allocated (zeroOldEndCluster zeroes its rest).
          const from = sc * scs;
          const zero = (e.zeroBits >>> sc) & 1;
          const bytes = !zero && old.backingFile !== undefined && readBacking ? readBacking(gc * cs + from, inCluster - from) : new Uint8Array(inCluster - from);
          writes.push({ offset: host + from, data: bytes });
          setEntry(tableFor(i), k, { ...e, allocBits: (e.allocBits | (1 << sc)) >>> 0, zeroBits: (e.zeroBits & ~(1 << sc)) >>> 0 });
        }
        return { offset: host + inCluster, length: cs - inCluster, inDataFile: false };
      }
      if (mode === 'metadata' && own && type === 'zero-alloc' && !ext) {
        setEntry(tableFor(i), k, normalEntry(host));
        return { offset: host, length: cs, inDataFile: false };
      }
      // The old image's view of [0, inCluster): per subcluster, its own bytes, zeros, or the
      // backing file's (zeros without one).
      const head = new Uint8Array(inCluster);
      const backing = old.backingFile !== undefined && readBacking ? readBacking(gc * cs, inCluster) : undefined;
      for (let j = 0; j * scs < inCluster; j++) {
        const from = j * scs, to = Math.min((j + 1) * scs, inCluster);
        const st = subclusterTypeOf(type, e.allocBits, e.zeroBits, j, fmt, e.hi, e.lo);
        if (st === 'normal') head.set(file.read(host + from, to - from), from);
        else if ((st === 'unallocated-plain' || st === 'unallocated-alloc') && backing) head.set(backing.subarray(from, to), from);
      }
      dropDataRef(e);
      const c = a.alloc(1);
      // The head is written; the rest is zeros: written unless metadata mode leaves a hole past
      // the old file's end (a free cluster inside the file may hold stale bytes).
      const whole = mode !== 'metadata' || c < fileClusters;
      const data = new Uint8Array(whole ? cs : inCluster);
      data.set(head);
      writes.push({ offset: c * cs, data });
      let allocBits = 0, zeroBits = 0;
      if (ext) {
        if ((mode === 'falloc' || mode === 'full') && longerBacking) {
          allocBits = SUBCLUSTERS_ALL; // qemu-img allocates every subcluster it wrote
        } else {
          // The entry's bits stay (the copied head holds what its allocated subclusters held);
          // over a longer backing file qemu-img writes the rest of the old end's subcluster and
          // zeroes the subclusters after it up to the new end.
          allocBits = e.allocBits;
          zeroBits = e.zeroBits;
          if (longerBacking) {
            if (inCluster % scs !== 0) allocBits |= 1 << sc;
            const newEnd = Math.min(cs, Number(ch.size! - BigInt(gc) * BigInt(cs)));
            for (let j = Math.ceil(inCluster / scs); j < Math.ceil(newEnd / scs); j++) zeroBits |= 1 << j;
          }
          zeroBits = (zeroBits & ~allocBits) >>> 0;
        }
      }
      setEntry(tableFor(i), k, { ...normalEntry(c * cs, true, allocBits >>> 0), zeroBits });
      return undefined;
    };

    /**
     * Preallocation of the guest clusters after the old end's: data clusters, contiguous per L2
     * table. Inside the old file they were free and may hold stale bytes, so they are written
     * with zeros (before the commit); past it they are zeros (metadata: a hole, which the new
     * refcount structures after them keep inside the file) or written as zeros (falloc, full).
     * Entries as qemu-img leaves them: over a longer backing file metadata mode zeroes the area
     * with ZERO flags (bits with extended L2) and falloc/full allocate every subcluster.
     */
    const preallocateNewArea = (mode: ResizePreallocation, longerBacking: boolean): void => {
      const newClusters = g.clustersFor(ch.size!);
      const oldClusters = g.clustersFor(old.size);
      const entry = newPreallocEntry(mode, longerBacking, ext);
      for (let i = Math.floor(oldClusters / g.l2Entries); i * g.l2Entries < newClusters; i++) {
        const from = Math.max(oldClusters, i * g.l2Entries), to = Math.min(newClusters, (i + 1) * g.l2Entries);
        if (from >= to) continue;
        const isNew = (l1[i]! & C.L1E_OFFSET_MASK) === 0n && !copies.has(i);
        const t = isNew ? undefined : tableFor(i);
        if (t) for (let gc = from; gc < to; gc++) dropDataRef(entryAt(t, gc % g.l2Entries));
        const first = a.alloc(to - from);
        if (t) for (let gc = from; gc < to; gc++) setEntry(t, gc % g.l2Entries, entry((first + gc - from) * cs));
        else generated.set(i, { kind: 'mapped', from, to, host: (first - from) * cs, entry });
        const zeroTo = mode === 'metadata' ? Math.min(first + to - from, fileClusters) : first + to - from;
        for (let c = first; c < zeroTo; c += BATCH / cs) {
          const n = Math.min(BATCH / cs, zeroTo - c);
          writes.push({ offset: c * cs, length: n * cs, fill: () => undefined }); // the batch is zeroed
        }
      }
    };

    let l1Size = old.l1Size;
    if (sizeChanges) {
      const newSize = ch.size!;
      const oldClusters = g.clustersFor(old.size);
      const newClusters = g.clustersFor(newSize);
      /** Entries for guest clusters [oldClusters, newClusters): ZERO, or COPIED | guest offset. */
      const fillNewArea = (kind: 'zero' | 'identity') => {
        for (let i = Math.floor(oldClusters / g.l2Entries); i * g.l2Entries < newClusters; i++) {
          const from = Math.max(oldClusters, i * g.l2Entries), to = Math.min(newClusters, (i + 1) * g.l2Entries);
          if ((l1[i]! & C.L1E_OFFSET_MASK) === 0n && !copies.has(i)) {
            generated.set(i, { kind, from, to });
            continue;
          }
          const t = tableFor(i);
          for (let gc = from; gc < to; gc++) {
            const k = gc % g.l2Entries;
            dropDataRef(entryAt(t, k));
            setEntry(t, k, newAreaEntry(kind, gc, g));
          }
        }
      };
      if (newSize > old.size) {
        const need = g.l1EntriesFor(newSize);
        // provider/rules refused sizes past the L1 table's limit; this keeps memory bounded regardless.
        if (need > C.QCOW_MAX_L1_SIZE / 8) throw new Qcow2Error('REFUSED', 'Failed to grow the L1 table: File too large', { property: 'size' });
        if (need > l1Size) {
          l1Size = need;
          while (l1.length < l1Size) l1.push(0n);
        }
        const longerBacking = backingLength !== undefined && backingLength > old.size;
        const prealloc = ch.preallocation !== undefined && ch.preallocation !== 'off' ? ch.preallocation : undefined;
        if (prealloc !== undefined && !hasData) {
          // qcow2_co_truncate with preallocation: every new guest cluster gets a data cluster.
          const tail = preallocateOldEnd(prealloc, longerBacking);
          if (tail) plan = { ...plan, tailZeros: tail };
          preallocateNewArea(prealloc, longerBacking);
          if (longerBacking && old.size % BigInt(cs) !== 0n && tail) {
            // metadata: qemu-img then zeroes the new area (the head of the old end's subcluster
            // written, the subclusters after it zero); a kept cluster likewise. A new cluster of
            // falloc/full is already allocated whole and zero.
            const z = zeroOldEndCluster(newSize);
            if (!tail && z.tailZeros) plan = { ...plan, ...z };
          }
        } else if (longerBacking) {
          // As QEMU (bdrv_co_truncate): where the backing file is longer than the old end, the new
          // area must read as zeros, not as the backing file's data, so it gets ZERO entries.
          // (compat 0.10 has no zero clusters: provider/rules refused that before planning.)
          if (prealloc !== undefined) preallocateDataFileOldEnd();
          if (old.size % BigInt(cs) !== 0n) plan = { ...plan, ...zeroOldEndCluster(newSize) };
          fillNewArea(prealloc !== undefined ? 'identity' : 'zero');
        } else if (raw || prealloc !== undefined) {
          // data-file-raw keeps every guest cluster mapped 1:1, so growth preallocates metadata;
          // preallocation with an external data file maps the new area 1:1 too (preallocate_co).
          if (prealloc !== undefined && !raw) preallocateDataFileOldEnd();
          fillNewArea('identity');
        }
        if (hasData) {
          const target = Number(raw || prealloc !== undefined ? g.roundUp(newSize) : newSize);
          if ((dataFileSize ?? 0) < target) {
            plan.dataFileGrow = target;
            if (prealloc === 'falloc' || prealloc === 'full') plan.dataFileGrowZeros = true;
          }
        }
      } else {
        shrinking = true;
        const keepL1 = g.l1EntriesFor(newSize);
        for (let i = 0; i < l1.length; i++) {
          const l2 = l1[i]! & C.L1E_OFFSET_MASK;
          if (l2 === 0n) continue;
          const first = i * g.l2Entries;
          if (first + g.l2Entries <= newClusters) continue;
          if (i >= keepL1) {
            // The whole table leaves the active L1, and with it the active L1's references.
            const t = tables.get(safeOffset(l2));
            for (let k = 0; k < g.l2Entries; k++) dropDataRef(entryAt(t, k));
            freeMeta(Number(l2 >> cbits));
            l1[i] = 0n;
            continue;
          }
          const t = tableFor(i);
          for (let k = Math.max(0, newClusters - first); k < g.l2Entries; k++) {
            const e = entryAt(t, k);
            if (e.hi === 0 && e.lo === 0 && e.allocBits === 0 && e.zeroBits === 0) continue;
            dropDataRef(e);
            setEntry(t, k, NO_L2_ENTRY);
          }
        }
        if (hasData) plan.dataFileShrink = Number(newSize);
      }
      h.size = newSize;
      resizeBitmaps(img, h, newSize, a, writes);
    }

    // New L2 tables, then a new L1 that points at them (the old L1 stays as it was).
    const l1Changed = copies.size > 0 || generated.size > 0 || l1Size !== old.l1Size || l1.some((e, i) => e !== l1Old[i]);
    for (const i of [...new Set([...copies.keys(), ...generated.keys()])].sort((x, y) => x - y)) {
      const c = a.alloc(1);
      const t = copies.get(i);
      if (t) {
        writes.push({ offset: c * cs, data: t.buf });
      } else {
        const gen = generated.get(i)!;
        writes.push({ offset: c * cs, length: cs, fill: (dv, at) => fillGenerated(dv, at, g, i, gen) });
      }
      l1[i] = encodeL1Entry(BigInt(c * cs), true);
    }
    let newL1: number | undefined;
    if (l1Changed && l1Size > 0) {
      const oldL1 = Number(old.l1TableOffset >> cbits);
      if (old.l1Size > 0) freeMeta(oldL1, Math.ceil((old.l1Size * 8) / cs));
      newL1 = a.alloc(Math.ceil((l1Size * 8) / cs));
    }
    // Every allocation is made: what the plan freed counts from here on.
    a.applyFrees();
    if (newL1 !== undefined) {
      const bytes = l1Size * 8;
      const buf = Buffer.alloc(Math.ceil(bytes / cs) * cs);
      l1.forEach((e, i) => {
        // COPIED follows the refcount of the L2 table it points at.
        const l2c = Number((e & C.L1E_OFFSET_MASK) >> cbits);
        const v = e === 0n ? 0n : (e & ~C.QCOW_OFLAG_COPIED) | (a.get(l2c) === 1 ? C.QCOW_OFLAG_COPIED : 0n);
        buf.writeBigUInt64BE(v, i * 8);
      });
      writes.push({ offset: newL1 * cs, data: buf.subarray(0, bytes) });
      h.l1TableOffset = BigInt(newL1 * cs);
      h.l1Size = l1Size;
    }

    if (!a.touched && newOrder === old.refcountOrder && !repair) {
      // Nothing moved (a size change within the L1): the
      // header alone changes, exactly as qemu-img would write it.
      return { ...plan, headerOnly: writes.length === 0, commit: planHeaderCommit(h, cs, file) };
    }

    // New refcount structures for the new state, placed after everything else; the old ones
    // are no longer referenced.
    freeMeta(Number(old.refcountTableOffset >> cbits), old.refcountTableClusters);
    img.readReftable().forEach((e) => {
      const off = e & C.REFT_OFFSET_MASK;
      if (off !== 0n && off < BigInt(fileSize)) freeMeta(Number(off >> cbits));
    });
    a.applyFrees();
    // provider/rules refused widths the stored refcounts do not fit (validateRefcountWidth);
    // what this plan adds is refcount 1, so rebuild's own check only guards the invariant.
    const rebuilt = a.rebuild(Math.max(a.end(), fileClusters), newOrder);
    for (const b of rebuilt.blocks) writes.push(b);
    writes.push({ offset: rebuilt.tableOffset, data: rebuilt.table });
    h.refcountOrder = newOrder;
    h.refcountTableOffset = BigInt(rebuilt.tableOffset);
    h.refcountTableClusters = rebuilt.tableClusters;

    if (sizeChanges && ch.size! < old.size) {
      const end = a.end() * cs;
      if (end < fileSize) plan.fileShrink = end;
      // What stays free inside the new end is punched, as QEMU discards what a shrink frees;
      // what lies past it goes with the truncate.
      const discards: Array<{ offset: number; length: number }> = [];
      for (const c of [...new Set([...freedByShrink, ...freedMeta])].sort((x, y) => x - y)) {
        if (c >= a.end() || a.get(c) !== 0) continue;
        const last = discards[discards.length - 1];
        if (last && last.offset + last.length === c * cs) last.length += cs;
        else discards.push({ offset: c * cs, length: cs });
      }
      if (discards.length) plan.discards = discards;
    }
    plan = { ...plan, headerOnly: false };
  }
  return { ...plan, commit: planHeaderCommit(h, cs, file) };
}

/**
 * A resize resizes the persistent bitmaps, as qemu-img 7.2 does (bits past the new end dropped,
 * new ones clear): each is stored anew (data, then table, in directory order), then a new
 * directory; the old clusters are freed in the plan. provider/rules refused inconsistent ones.
 */
function resizeBitmaps(img: Image, h: Header, newSize: bigint, a: CountRefcounts, writes: Write[]): void {
  const old = img.header.bitmaps;
  if (old === undefined) return;
  const cs = img.geometry.clusterSize;
  const read = (o: number, l: number) => img.read(o, l);
  const io: BitmapClusterIo = {
    clusterSize: cs,
    alloc: (n) => a.alloc(n),
    free: (first, n) => a.free(first, n),
    write: (offset, data) => writes.push({ offset, data }),
    read,
  };
  const entries = readBitmapDirectory(img.header, cs, read);
  const stored = entries.map((e) => {
    const b = loadBitmap(e, img.header.size, cs, read);
    if (b.inconsistent) throw new Qcow2Error('REFUSED', `Bitmap '${e.name}' is inconsistent and cannot be used`, { property: 'size' });
    b.truncate(newSize);
    const t = storeBitmapData(b, io);
    return { name: e.name, tableOffset: t.tableOffset, tableSize: t.tableSize, rawFlags: e.rawFlags & BME_FLAG_AUTO, granularityBits: e.granularityBits };
  });
  const dir = encodeBitmapDirectory(stored);
  const d = a.alloc(Math.ceil(dir.length / cs));
  writes.push({ offset: d * cs, data: dir });
  h.bitmaps = { nbBitmaps: stored.length, bitmapDirectorySize: BigInt(dir.length), bitmapDirectoryOffset: BigInt(d) * BigInt(cs) };
  for (const e of entries) freeBitmapClusters(e, io);
  a.free(Number(old.bitmapDirectoryOffset / BigInt(cs)), Math.ceil(Number(old.bitmapDirectorySize) / cs));
}

/** The entry of guest cluster `gc` in new area: ZERO, or COPIED | guest offset (data-file-raw). */
/** A new L2 table written by a generator: ZERO entries, 1:1 entries, or entries mapped to host + gc * cluster size. */
type Generated = { kind: 'zero' | 'identity'; from: number; to: number }
  | { kind: 'mapped'; from: number; to: number; host: number; entry: (hostOffset: number) => L2Halves };

/** The entry of a preallocated new cluster (see preallocateNewArea in planAmend). */
function newPreallocEntry(mode: ResizePreallocation, longerBacking: boolean, ext: boolean): (host: number) => L2Halves {
  if (!longerBacking) return (host) => normalEntry(host);
  if (mode === 'metadata') {
    return ext ? (host) => ({ ...normalEntry(host), zeroBits: SUBCLUSTERS_ALL }) : (host) => ({ ...normalEntry(host), lo: (normalEntry(host).lo | L2_LO_ZERO) >>> 0 });
  }
  return ext ? (host) => normalEntry(host, true, SUBCLUSTERS_ALL) : (host) => normalEntry(host);
}

function refusePreallocOldEnd(): Qcow2Error {
  return new Qcow2Error('REFUSED', 'Cannot preallocate with the native engine: the old end of the image is inside a compressed cluster, whose rest qemu-img fills by copy-on-write. Resize to a multiple of the cluster size first (without preallocation), then preallocate from there; or use the qemu-img engine', { property: 'preallocation' });
}

function newAreaEntry(kind: 'zero' | 'identity', gc: number, g: Geometry): L2Halves {
  if (kind === 'identity') return normalEntry(gc * g.clusterSize);
  return g.extendedL2 ? { hi: 0, lo: 0, allocBits: 0, zeroBits: SUBCLUSTERS_ALL } : { hi: 0, lo: L2_LO_ZERO, allocBits: 0, zeroBits: 0 };
}

/** Apply a plan in the order stated at the top of this file. */
export function applyAmend(file: BlockFile, plan: AmendPlan, dataFile?: BlockFile, punchHole?: (offset: number, length: number) => void): void {
  if (plan.dataFileGrow !== undefined) {
    if (!dataFile) throw new Qcow2Error('NOT_FOUND', 'The external data file must be open to grow it');
    const from = dataFile.size();
    if (plan.dataFileGrowZeros) writeZeros(dataFile, from, plan.dataFileGrow - from, true);
    else dataFile.truncate(plan.dataFileGrow);
    dataFile.flush();
  }
  if (plan.tailZeros) {
    const z = plan.tailZeros;
    const target = z.inDataFile ? dataFile : file;
    if (!target) throw new Qcow2Error('NOT_FOUND', 'The external data file must be open to zero the old end');
    target.write(z.offset, new Uint8Array(z.length));
    if (z.inDataFile) target.flush();
  }
  writeAll(file, plan.writes);
  if (plan.writes.length || plan.tailZeros) file.flush();
  writeHeaderCommit(file, plan.commit);
  file.flush();
  if (plan.dataFileShrink !== undefined && dataFile) {
    dataFile.truncate(plan.dataFileShrink);
    dataFile.flush();
  }
  if (plan.fileShrink !== undefined) {
    file.truncate(plan.fileShrink);
    file.flush();
  }
  // After the commit the ranges are unreferenced: punching them changes no guest view.
  if (punchHole && plan.discards) {
    for (const d of plan.discards) punchHole(d.offset, d.length);
    file.flush();
  }
}

/** Entries of a generated L2 table, written as u32 halves (no BigInt per entry). */
function fillGenerated(dv: DataView, at: number, g: Geometry, l1Index: number, gen: Generated): void {
  const step = g.l2EntrySize;
  for (let gc = gen.from; gc < gen.to; gc++) {
    const p = at + (gc - l1Index * g.l2Entries) * step;
    if (gen.kind === 'mapped') {
      writeL2Entry(dv, p / step, g.extendedL2, gen.entry(gen.host + gc * g.clusterSize));
      continue;
    }
    // The identity fill (a 1 TiB data-file-raw growth: 16M entries) makes no object per entry.
    if (gen.kind === 'identity') putNormalEntry(dv, p, gc * g.clusterSize);
    else writeL2Entry(dv, p / step, g.extendedL2, newAreaEntry('zero', gc, g));
  }
}

const BATCH = 4 << 20;

/** Write the plan's new clusters, coalescing generated runs into one reused 4 MiB buffer. */
function writeAll(file: BlockFile, writes: Write[]): void {
  const batch = new Uint8Array(BATCH);
  const dv = new DataView(batch.buffer);
  let start = -1, used = 0;
  const flushBatch = () => {
    if (used) file.write(start, batch.subarray(0, used));
    start = -1;
    used = 0;
  };
  for (const w of writes) {
    if ('data' in w) {
      flushBatch();
      file.write(w.offset, w.data);
      continue;
    }
    if (start >= 0 && (w.offset !== start + used || used + w.length > BATCH)) flushBatch();
    if (start < 0) start = w.offset;
    batch.fill(0, used, used + w.length);
    w.fill(dv, used);
    used += w.length;
  }
  flushBatch();
}
