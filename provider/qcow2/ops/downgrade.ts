// `amend -o compat=0.10` as qemu-img 7.2's qcow2_downgrade makes it: the zero clusters of every
// L2 table, the active L1's and each internal snapshot's (qcow2_expand_zero_clusters), expanded
// in place, then the header written as version 2. The tables stay where they are (the header's
// l1_table_offset and refcount_table_offset do not move) and new clusters are placed where
// QEMU's allocator puts them, so the file is laid out as qemu-img leaves it.
//
// The writes, in order (applyDowngrade); nothing either image's guest reads changes before the
// header does:
//   1. zeros into every cluster that will back an expanded entry: a ZERO_ALLOC entry's own
//      cluster (the guest reads zeros there through the ZERO flag whatever it holds) and every
//      new cluster (free in the old image; the file grows for those past its end);
//   2. the refcounts of the new clusters: refcount blocks that must be added (whole, describing
//      themselves as QEMU's alloc_refcount_block makes them), the edited blocks, flushed; then
//      the new blocks' refcount table entries, flushed. A crash from here until step 3 is done
//      leaves the new clusters leaked (allocated, not referenced), as qemu-img's own order does
//      (its refcount cache is flushed before its L2 cache);
//   3. the L2 tables, edited in place: each zero entry becomes unallocated (no backing file: the
//      guest reads zeros either way) or a zeroed data cluster, COPIED when the table's refcount
//      is 1; every entry is written whole within a page, so a torn write mixes old and new entries;
//   4. the header (meta/header-commit.ts): version 2, compatible and autoclear features cleared.
//
// What provider/rules decides before this: the image is v3 without extended L2 entries or a data
// file, 16-bit refcounts, every snapshot fits v2, refcounts are clean (a dirty image is repaired
// by its own commit first), and no ZERO_ALLOC cluster is data in another table (qemu-img would
// zero it under a snapshot that still reads it: firstSharedZeroCluster).

import { BlockFile } from '../io/blockfile';
import { zeroRange } from '../io/sparse';
import { Qcow2Error } from '../../model/errors';
import * as C from '../spec/constants';
import { Header } from '../spec/header';
import { HeaderCommit, planHeaderCommit, writeHeaderCommit } from '../meta/header-commit';
import { readEntries } from '../spec/l1';
import { NO_L2_ENTRY, clusterTypeOf, hostClusterOf, hostOffsetOf, normalEntry, readL2Entry, writeL2Entry } from '../spec/l2';
import { writeRefcount } from '../spec/refcount';
import { Image, safeOffset } from '../meta/image';
import { storedRefcounts } from './amend';

/** Everything a downgrade writes, decided before anything is written. */
export interface DowngradePlan {
  header: Header;
  /** Step 1: clusters (host offsets) written with zeros. */
  zeros: number[];
  /** Step 2: refcount blocks (new ones first, whole clusters), then refcount table entries. */
  refblocks: Array<{ offset: number; data: Uint8Array }>;
  reftable: Array<{ offset: number; data: Uint8Array }>;
  /** Step 3: the edited L2 tables, whole clusters in place. */
  tables: Array<{ offset: number; data: Uint8Array }>;
  /** Step 4. */
  commit: HeaderCommit;
}

const FMT = { dataFile: false, extendedL2: false };
/** qcow2_validate_table for a snapshot's L1 table, in QEMU's words and errno. */
function validateSnapshotL1(offset: bigint, l1Size: number, cs: number): void {
  if (l1Size > C.QCOW_MAX_L1_SIZE / 8) {
    throw new Qcow2Error('REFUSED', 'Snapshot L1 table too large\nFailed to turn zero into data clusters: File too large', { property: 'snapshot' });
  }
  if ((1n << 63n) - 1n - BigInt(l1Size) * 8n < offset || offset % BigInt(cs) !== 0n) {
    throw new Qcow2Error('REFUSED', 'Snapshot L1 table offset invalid\nFailed to turn zero into data clusters: Invalid argument', { property: 'snapshot' });
  }
}

/** Refuse, in qemu-img's words, a snapshot L1 table qcow2_expand_zero_clusters would refuse. */
export function checkSnapshotL1Tables(img: Image): void {
  for (const sn of img.readSnapshots()) validateSnapshotL1(sn.l1TableOffset, sn.l1Size, img.geometry.clusterSize);
}

/** The L1 tables qcow2_expand_zero_clusters walks: the active one, then each snapshot's. */
function l1Tables(img: Image): bigint[][] {
  const cs = img.geometry.clusterSize;
  const out = [img.readL1()];
  for (const sn of img.readSnapshots()) {
    validateSnapshotL1(sn.l1TableOffset, sn.l1Size, cs);
    out.push(sn.l1Size === 0 ? [] : readEntries(img.read(sn.l1TableOffset, sn.l1Size * 8), sn.l1Size));
  }
  return out;
}

/** Each L2 table once, in the order QEMU reaches it, with its entries' view. */
function* l2TablesOf(img: Image, l1s: bigint[][]): Generator<{ offset: number; buf: Uint8Array; view: DataView }> {
  const seen = new Set<number>();
  for (const l1 of l1s) {
    for (const e of l1) {
      const l2 = e & C.L1E_OFFSET_MASK;
      if (l2 === 0n) continue;
      const offset = safeOffset(l2);
      if (seen.has(offset)) continue;
      seen.add(offset);
      const buf = new Uint8Array(img.readCluster(offset));
      yield { offset, buf, view: new DataView(buf.buffer, buf.byteOffset, buf.byteLength) };
    }
  }
}

/**
 * The first ZERO_ALLOC entry whose host cluster another table reads as data (a snapshot taken
 * before the zeros were written, the tables copied since): qemu-img would write zeros into a
 * cluster that snapshot still reads. Undefined when there is none (the usual case). Read-only.
 */
export function firstSharedZeroCluster(img: Image): { hostOffset: number } | undefined {
  if (img.header.version !== 3 || img.extendedL2 || img.hasDataFile) return undefined;
  const g = img.geometry;
  const data = new Set<number>();
  const zeroAlloc: number[] = [];
  for (const t of l2TablesOf(img, l1Tables(img))) {
    for (let k = 0; k < g.l2Entries; k++) {
      const e = readL2Entry(t.view, k, false);
      const type = clusterTypeOf(e.hi, e.lo, FMT);
      if (type === 'normal') data.add(hostClusterOf(e.hi, e.lo, g.clusterBits));
      else if (type === 'zero-alloc') zeroAlloc.push(hostClusterOf(e.hi, e.lo, g.clusterBits));
    }
  }
  const c = zeroAlloc.find((z) => data.has(z));
  return c === undefined ? undefined : { hostOffset: c * g.clusterSize };
}

/**
 * Plan the downgrade of a clean v3 image (see the top of this file). Throws REFUSED, in
 * qemu-img's words, for a snapshot L1 table qcow2_validate_table refuses, and UNSUPPORTED when a
 * new cluster would lie beyond what the refcount table can describe (QEMU grows the table then).
 */
export function planDowngrade(img: Image, file: BlockFile): DowngradePlan {
  const old = img.header;
  const g = img.geometry;
  const cs = g.clusterSize;
  const rbe = g.refblockEntries;
  const backed = old.backingFile !== undefined;
  const counts = storedRefcounts(img, Math.ceil(file.size() / cs));
  const reftable = img.readReftable();

  // QEMU's allocator: first fit from free_cluster_index, which starts at 0 on open.
  const added = new Map<number, number>();
  const blocks = new Map<number, Uint8Array>(); // refcount table index -> the block as it will be
  const newBlocks = new Map<number, number>(); // refcount table index -> the new block's cluster
  let freeIndex = 0;
  const refcountOf = (c: number) => added.get(c) ?? (c < counts.length ? counts[c]! : 0);
  const covered = (ti: number) => (reftable[ti]! & C.REFT_OFFSET_MASK) !== 0n || newBlocks.has(ti);
  const blockOf = (ti: number): Uint8Array => {
    let b = blocks.get(ti);
    if (b === undefined) {
      const off = reftable[ti]! & C.REFT_OFFSET_MASK;
      b = off === 0n ? new Uint8Array(cs) : new Uint8Array(img.readCluster(off));
      blocks.set(ti, b);
    }
    return b;
  };
  const setRefcount = (c: number, v: number) => {
    added.set(c, v);
    writeRefcount(blockOf(Math.floor(c / rbe)), g.refcountOrder, c % rbe, v);
  };
  const nextFree = () => {
    while (refcountOf(freeIndex) !== 0) freeIndex++;
    return freeIndex++;
  };
  const tooFar = () => new Qcow2Error('UNSUPPORTED',
    'Cannot downgrade this image in place: the clusters its zero clusters expand to lie beyond what its refcount table describes, ' +
    'and this engine does not grow the refcount table in place. Use the qemu-img engine (or qemu-img amend)', { property: 'compat' });
  /** qcow2_alloc_clusters of one cluster whose refcount becomes `refcount`. */
  const alloc = (refcount: number): number => {
    const c = nextFree();
    const ti = Math.floor(c / rbe);
    if (ti >= reftable.length) throw tooFar();
    if (!covered(ti)) {
      // alloc_refcount_block: the block takes the next free cluster and describes itself when it
      // falls in the range it covers (else QEMU's search recurses: not done here); the cluster
      // asked for stays where it was found, as qemu-img leaves them.
      const b = nextFree();
      if (Math.floor(b / rbe) !== ti) throw tooFar();
      newBlocks.set(ti, b);
      setRefcount(b, 1);
    }
    setRefcount(c, refcount);
    return c;
  };

  const zeros: number[] = [];
  const tables: DowngradePlan['tables'] = [];
  for (const t of l2TablesOf(img, l1Tables(img))) {
    const l2rc = refcountOf(t.offset / cs);
    let changed = false;
    for (let k = 0; k < g.l2Entries; k++) {
      const e = readL2Entry(t.view, k, false);
      const type = clusterTypeOf(e.hi, e.lo, FMT);
      if (type === 'zero-plain') {
        changed = true;
        if (!backed) {
          writeL2Entry(t.view, k, false, NO_L2_ENTRY);
          continue;
        }
        // Every L1 table sharing this L2 table reaches the new cluster.
        const c = alloc(l2rc);
        zeros.push(c * cs);
        writeL2Entry(t.view, k, false, normalEntry(c * cs, l2rc === 1));
      } else if (type === 'zero-alloc') {
        changed = true;
        // Every reference to the cluster reads zeros (firstSharedZeroCluster): zeroed in place.
        // COPIED when nothing else references it (qemu-img asks the table's refcount only, and
        // marks a cluster two tables share COPIED, which its check then reports).
        const host = hostOffsetOf(e.hi, e.lo);
        zeros.push(host);
        writeL2Entry(t.view, k, false, normalEntry(host, refcountOf(hostClusterOf(e.hi, e.lo, g.clusterBits)) === 1));
      }
    }
    if (changed) tables.push({ offset: t.offset, data: t.buf });
  }

  const refblocks: DowngradePlan['refblocks'] = [];
  const reftableWrites: DowngradePlan['reftable'] = [];
  for (const [ti, b] of newBlocks) refblocks.push({ offset: b * cs, data: blocks.get(ti)! });
  for (const [ti, data] of blocks) {
    if (!newBlocks.has(ti)) refblocks.push({ offset: safeOffset(reftable[ti]! & C.REFT_OFFSET_MASK), data });
  }
  for (const [ti, b] of newBlocks) {
    const e = new Uint8Array(8);
    new DataView(e.buffer).setBigUint64(0, BigInt(b * cs));
    reftableWrites.push({ offset: safeOffset(old.refcountTableOffset) + ti * 8, data: e });
  }

  const h: Header = { ...old, unknownExtensions: [...old.unknownExtensions] };
  h.version = 2;
  h.headerLength = C.QCOW2_V2_HEADER_LENGTH;
  h.compatibleFeatures = 0n;
  h.autoclearFeatures = 0n;
  h.unknownFields = new Uint8Array(0);
  if (h.compressionType !== C.QCOW2_COMPRESSION_TYPE_ZLIB) {
    // provider/rules refused a zstd image with compressed clusters.
    h.compressionType = C.QCOW2_COMPRESSION_TYPE_ZLIB;
    h.incompatibleFeatures &= ~C.QCOW2_INCOMPAT_COMPRESSION;
  }
  return { header: h, zeros, refblocks, reftable: reftableWrites, tables, commit: planHeaderCommit(h, cs, file) };
}

/**
 * Apply a downgrade plan in the order stated at the top of this file. The clusters are zeroed
 * one by one in QEMU's order and its way (io/sparse.ts zeroRange), so the file system holds
 * them as qemu-img leaves them (map's `zero` reads that).
 */
export function applyDowngrade(file: BlockFile, plan: DowngradePlan, clusterSize: number): void {
  for (const z of plan.zeros) zeroRange(file, z, clusterSize);
  for (const w of plan.refblocks) file.write(w.offset, w.data);
  if (plan.zeros.length || plan.refblocks.length) file.flush();
  if (plan.reftable.length) {
    for (const w of plan.reftable) file.write(w.offset, w.data);
    file.flush();
  }
  if (plan.tables.length) {
    for (const w of plan.tables) file.write(w.offset, w.data);
    file.flush();
  }
  writeHeaderCommit(file, plan.commit);
  file.flush();
}
