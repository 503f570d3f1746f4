// `check -r leaks|all`: QEMU's qcow2_co_check_locked with fix flags, step by step as QEMU
// repairs (the snapshot table read, qcow2_check_refcounts with its rebuild of the refcount
// structure, check_oflag_copied, the snapshot table rewrite, the dirty and corrupt bits), with
// QEMU's messages, counters and results. It is also the repair QEMU runs when it opens a
// dirty (lazy refcounts) image read/write.
//
// Each step is written with meta/ordered.ts, after the previous step is on disk: refcounts are
// raised before anything relies on them and lowered only after the references are gone, a
// rebuilt refcount structure is published by one header write, COPIED flags come after the
// refcounts they describe, and the dirty and corrupt bits are cleared last. A crash at any
// point leaves an image whose check shows no problem it did not have before, except clusters
// leaked by an interrupted step (a rebuilt structure's old blocks); a dirty image stays
// dirty until the whole repair is done, so QEMU (or this) repairs it again on the next open.

import { BlockFile } from '../io/blockfile';
import * as C from '../spec/constants';
import { Qcow2Error } from '../../model/errors';
import { HEADER_V2, encodeHeader } from '../spec/header';
import { encodeRefblock } from '../spec/refcount';
import { L2_HI_COPIED, clusterTypeOf, entryOf, hostClusterOf } from '../spec/l2';
import { Image, safeOffset } from '../meta/image';
import { TableRefcounts } from '../meta/refcount';
import { TableCache } from '../meta/tables';
import { ReferenceTable, writeOrdered } from '../meta/ordered';
import { CheckResult, Mismatch, checkSnapshotTable, checkWithFindings } from './check';
import { rewriteSnapshotTable } from './snapshot';

export type RepairMode = 'leaks' | 'all';

export interface RepairResult {
  /** What QEMU prints on stderr while it repairs, in order. */
  messages: string[];
  /** The counters of the repair pass: what remains, and what was fixed. */
  result: CheckResult;
  leaksFixed: number;
  corruptionsFixed: number;
  /** The repair stopped (QEMU's -EIO: "ERROR need to rebuild refcount structures" with -r leaks). */
  failed: boolean;
}

export interface RepairOptions {
  /** Make a byte range read as zeros: QEMU discards the leaked clusters it frees. */
  punch?: (offset: number, length: number) => void;
}

const hex = (v: bigint | number) => v.toString(16);

/** The image's refcounts as stored (QEMU's allocator over its refcount blocks). */
function storedRefcounts(file: BlockFile, img: Image): TableRefcounts {
  return new TableRefcounts(img.geometry, 'immediate', new TableCache(file, img.geometry.clusterSize),
    BigUint64Array.from(img.readReftable()), safeOffset(img.header.refcountTableOffset));
}

/**
 * compare_refcounts with fix flags: each mismatch is repaired when the flags allow (the
 * refcount set to the references counted), else counted; the lines QEMU prints.
 */
function comparePass(file: BlockFile, img: Image, mismatches: readonly Mismatch[], fix: { leaks: boolean; errors: boolean },
  messages: string[], opts: RepairOptions): { leaks: number; corruptions: number; leaksFixed: number; corruptionsFixed: number; rebuild: boolean } {
  const out = { leaks: 0, corruptions: 0, leaksFixed: 0, corruptionsFixed: 0, rebuild: false };
  const rc = storedRefcounts(file, img);
  rc.zeroed = [];
  for (const m of mismatches) {
    const computed = BigInt(m.computed);
    let fixed: 'leaks' | 'corruptions' | undefined;
    if (m.stored === 0n) out.rebuild = true;
    else if (m.stored > computed && fix.leaks) fixed = 'leaks';
    else if (m.stored < computed && fix.errors) fixed = 'corruptions';
    messages.push(`${fixed ? 'Repairing' : m.stored < computed ? 'ERROR' : 'Leaked'} cluster ${m.cluster} refcount=${m.stored} reference=${m.computed}`);
    if (fixed) {
      rc.add(m.cluster, m.computed - Number(m.stored));
      if (fixed === 'leaks') out.leaksFixed++; else out.corruptionsFixed++;
      continue;
    }
    if (m.stored < computed) out.corruptions++; else out.leaks++;
  }
  if (rc.touched) {
    writeOrdered(file, { refcounts: rc, ...(opts.punch ? { discard: { clusters: rc.zeroed, punch: opts.punch } } : {}) });
  }
  return out;
}

/**
 * rebuild_refcount_structure: new refcount blocks and a new table from the counted references,
 * placed first-fit in clusters nothing references (alloc_clusters_imrt), written, then
 * published by one header write. The old structure is left as it is (leaked).
 */
function rebuildRefcounts(file: BlockFile, img: Image, counted: Uint32Array): void {
  const g = img.geometry;
  const cs = g.clusterSize;
  const E = g.refblockEntries;
  let counts = counted;
  let nb = counts.length;
  const grow = (n: number) => {
    if (n <= counts.length) { nb = Math.max(nb, n); return; }
    // realloc_refcount_array: whole refblocks' worth of entries.
    const next = new Uint32Array(Math.ceil(n / E) * E);
    next.set(counts);
    counts = next;
    nb = n;
  };
  /** alloc_clusters_imrt: `count` free clusters from *firstFree; their byte offset. */
  const alloc = (count: number, firstFree: { v: number }): number => {
    let cluster = firstFree.v, contiguous = 0, firstGap = true;
    for (; cluster < nb && contiguous < count; cluster++) {
      if ((counts[cluster] ?? 0) === 0) {
        contiguous++;
        if (firstGap) { firstFree.v = cluster; firstGap = false; }
      } else if (contiguous) {
        contiguous = 0;
      }
    }
    if (contiguous < count) grow(cluster + count - contiguous);
    cluster -= contiguous;
    for (let i = 0; i < count; i++) counts[cluster + i] = 1;
    return cluster * cs;
  };
  let reftable: number[] = [];
  const blocks = new Map<number, Uint8Array>();
  /** rebuild_refcounts_write_refblocks over [first, end); true when the table grew. */
  const writeRefblocks = (first: number, endCluster: number): boolean => {
    let end = endCluster, grown = false;
    const firstFree = { v: 0 };
    for (let cluster = first; cluster < end; cluster++) {
      if ((counts[cluster] ?? 0) === 0) continue;
      const index = Math.floor(cluster / E);
      const start = index * E;
      let offset = reftable[index] ?? 0;
      if (offset === 0) {
        if (firstFree.v < start) firstFree.v = start;
        offset = alloc(1, firstFree);
        const own = offset / cs;
        if (own >= end) end = own + 1;
        if (reftable.length <= index) {
          const entries = Math.ceil(((index + 1) * 8) / cs) * cs / 8;
          reftable = [...reftable, ...new Array<number>(entries - reftable.length).fill(0)];
          grown = true;
        }
        reftable[index] = offset;
      }
      blocks.set(offset, encodeRefblock(cs, g.refcountOrder, counts, start, E));
      cluster = start + E - 1;
    }
    return grown;
  };
  writeRefblocks(0, nb);
  let tableOffset: number, tableClusters: number;
  for (;;) {
    tableClusters = Math.ceil((reftable.length * 8) / cs);
    tableOffset = alloc(tableClusters, { v: 0 });
    if (!writeRefblocks(tableOffset / cs, tableOffset / cs + tableClusters)) break;
  }
  const table = Buffer.alloc(reftable.length * 8);
  reftable.forEach((e, i) => table.writeBigUInt64BE(BigInt(e), i * 8));
  const field = Buffer.alloc(12);
  field.writeBigUInt64BE(BigInt(tableOffset), 0);
  field.writeUInt32BE(tableClusters, 8);
  writeOrdered(file, {
    fresh: [...[...blocks].map(([offset, data]) => ({ offset, data })), { offset: tableOffset, data: table }],
    headerFields: [{ offset: HEADER_V2.offsets.refcountTableOffset!, data: field }],
  });
}

/**
 * check_oflag_copied: OFLAG_COPIED of the active L1 and L2 entries against the refcounts as
 * they are now; repaired when `repair`.
 */
function oflagCopiedPass(file: BlockFile, img: Image, repair: boolean, messages: string[]): { corruptions: number; fixed: number } {
  const out = { corruptions: 0, fixed: 0 };
  const g = img.geometry;
  const rc = storedRefcounts(file, img);
  const refcountOf = (ci: number): number | undefined => {
    try {
      return rc.get(ci);
    } catch {
      return undefined; // unreadable: QEMU skips it silently (the comparison said so already)
    }
  };
  const l1 = img.readL1();
  const tables: ReferenceTable[] = [];
  let l1Dirty = false;
  const step = g.l2EntrySize;
  const fmt = { dataFile: img.hasDataFile, extendedL2: g.extendedL2 };
  for (let i = 0; i < l1.length; i++) {
    const e = l1[i]!;
    const l2 = e & C.L1E_OFFSET_MASK;
    if (l2 === 0n) continue;
    const rcL2 = refcountOf(Number(l2 >> BigInt(g.clusterBits)));
    if (rcL2 === undefined) continue;
    if ((rcL2 === 1) !== ((e & C.QCOW_OFLAG_COPIED) !== 0n)) {
      out.corruptions++;
      messages.push(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(e)} refcount=${rcL2}`);
      if (repair) {
        l1[i] = rcL2 === 1 ? e | C.QCOW_OFLAG_COPIED : e & ~C.QCOW_OFLAG_COPIED;
        l1Dirty = true;
        out.corruptions--;
        out.fixed++;
      }
    }
    const t = img.read(l2, g.clusterSize);
    const v = new DataView(t.buffer, t.byteOffset, t.byteLength);
    let dirty = 0;
    for (let j = 0; j < g.l2Entries; j++) {
      const hi = v.getUint32(j * step), lo = v.getUint32(j * step + 4);
      if (hi === 0 && lo === 0) continue; // unallocated
      const type = clusterTypeOf(hi, lo, fmt);
      if (type !== 'normal' && type !== 'zero-alloc') continue;
      const rcData = img.hasDataFile ? 1 : refcountOf(hostClusterOf(hi, lo, g.clusterBits));
      if (rcData === undefined) continue;
      const copied = (hi & L2_HI_COPIED) !== 0;
      if ((rcData === 1) !== copied) {
        out.corruptions++;
        messages.push(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex(entryOf(hi, lo))} refcount=${rcData}`);
        if (repair) {
          v.setUint32(j * step, copied ? hi & ~L2_HI_COPIED : hi | L2_HI_COPIED);
          dirty++;
        }
      }
    }
    if (dirty) {
      tables.push({ offset: safeOffset(l2), data: t, step });
      out.corruptions -= dirty;
      out.fixed += dirty;
    }
  }
  if (l1Dirty) {
    const b = Buffer.alloc(l1.length * 8);
    l1.forEach((e, i) => b.writeBigUInt64BE(e, i * 8));
    tables.push({ offset: safeOffset(img.header.l1TableOffset), data: b, step: 8 });
  }
  if (tables.length) writeOrdered(file, { tables });
  return out;
}

/**
 * Repair `file` as `qemu-img check -r MODE` does (qcow2_co_check_locked). The caller holds
 * QEMU's write lock; the file is changed step by step, each step crash-safe (see the top).
 */
export function repairImage(file: BlockFile, mode: RepairMode, opts: RepairOptions = {}): RepairResult {
  const fix = { leaks: true, errors: mode === 'all' };
  const messages: string[] = [];
  let img = Image.open(file, '', { check: true });
  // qcow2_check_read_snapshot_table: what cannot be read stops the repair; with -r all what is
  // broken beyond reading is discarded (entries dropped: the header's count first, as QEMU).
  const table = checkSnapshotTable(img, fix.errors);
  messages.push(...table.messages);
  if (table.failed) {
    const result: CheckResult = {
      messages, corruptions: 0, leaks: 0, checkErrors: 1, imageEndOffset: 0, totalClusters: 0, allocatedClusters: 0,
      fragmentedClusters: 0, compressedClusters: 0, failed: table.failed,
    };
    return { messages, result, leaksFixed: 0, corruptionsFixed: 0, failed: true };
  }
  let reducedFixed = 0;
  if (table.reduced) {
    const count = Buffer.alloc(4);
    count.writeUInt32BE(table.snaps.length);
    file.write(HEADER_V2.offsets.nbSnapshots!, count);
    file.flush();
    reducedFixed = table.reduced;
    img = Image.open(file, '', { check: true });
  }
  const snapCorruptions = table.corruptions;

  // qcow2_check_refcounts: count (repairing what counting repairs), compare without fixing.
  const first = checkWithFindings(img, file, { fixErrors: fix.errors, snapshotTable: table });
  const f = first.findings;
  messages.push(...first.result.messages.slice(0, f.compareEnd));
  if (f.growTo !== undefined && file.size() < f.growTo) {
    file.truncate(f.growTo);
    file.flush();
  }
  if (f.zeroEntries.length) zeroEntries(file, img, f.zeroEntries);

  let result: CheckResult = { ...first.result, messages };
  let leaksFixed = 0;
  let corruptionsFixed = f.calcFixed + reducedFixed;
  const res = { corruptions: first.result.corruptions - first.result.messages.slice(f.compareEnd).length, leaks: first.result.leaks, checkErrors: first.result.checkErrors };
  // (the OFLAG_COPIED findings of the read-only pass are redone below, against the repaired refcounts)
  let failed = false;
  if (f.rebuild && fix.errors) {
    messages.push('Rebuilding refcount structure');
    const old = { ...res };
    rebuildRefcounts(file, img, first.counts);
    img = Image.open(file);
    const again = checkWithFindings(img, file, { snapshotTable: table });
    messages.push(...again.result.messages.slice(0, again.findings.calcEnd));
    res.corruptions = again.findings.calcCorruptions;
    res.leaks = 0;
    res.checkErrors += again.result.checkErrors;
    let freshLeaks = 0;
    if (fix.leaks) {
      const p = comparePass(file, img, again.findings.mismatches, { leaks: true, errors: false }, messages, opts);
      if (p.rebuild) messages.push('ERROR rebuilt refcount structure is still broken');
      freshLeaks = p.leaks;
    }
    if (res.corruptions < old.corruptions) corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
    result = { ...again.result, messages };
  } else if (f.rebuild) {
    messages.push('ERROR need to rebuild refcount structures');
    res.checkErrors++;
    failed = true;
  } else if (res.leaks || res.corruptions) {
    // The comparison again, fixing: from the counts before it.
    const p = comparePass(file, img, f.mismatches, fix, messages, opts);
    res.corruptions = f.calcCorruptions + p.corruptions;
    res.leaks = p.leaks;
    leaksFixed += p.leaksFixed;
    corruptionsFixed += p.corruptionsFixed;
  }

  if (!failed) {
    img = Image.open(file);
    const repairCopied = fix.errors || (res.checkErrors === 0 && res.corruptions === 0 && res.leaks === 0);
    const c = oflagCopiedPass(file, img, repairCopied, messages);
    res.corruptions += c.corruptions;
    corruptionsFixed += c.fixed;
  }

  // qcow2_check_fix_snapshot_table, then the snapshot counters join the result.
  let snapRemaining = snapCorruptions;
  if (!failed && snapCorruptions && fix.errors) {
    rewriteSnapshotTable(file, Image.open(file), opts, table.snaps);
    corruptionsFixed += snapCorruptions;
    snapRemaining = 0;
  }
  res.corruptions += snapRemaining;

  if (!failed && res.checkErrors === 0 && res.corruptions === 0) markClean(file);

  return {
    messages,
    result: { ...result, corruptions: res.corruptions, leaks: res.leaks, checkErrors: res.checkErrors, messages },
    leaksFixed,
    corruptionsFixed,
    failed,
  };
}

/** fix_l2_entry_by_zero for each entry (extended L2: its allocated subclusters become zero). */
function zeroEntries(file: BlockFile, img: Image, entries: ReadonlyArray<{ l2Offset: number; index: number }>): void {
  const g = img.geometry;
  const tables = new Map<number, Buffer>();
  for (const { l2Offset, index } of entries) {
    let t = tables.get(l2Offset);
    if (!t) {
      t = img.read(l2Offset, g.clusterSize);
      tables.set(l2Offset, t);
    }
    if (g.extendedL2) {
      const at = index * 16;
      const bitmap = t.readBigUInt64BE(at + 8);
      t.writeBigUInt64BE(0n, at);
      t.writeBigUInt64BE(((bitmap | (bitmap << 32n)) & 0xffffffff00000000n), at + 8);
    } else {
      t.writeBigUInt64BE(C.QCOW_OFLAG_ZERO, index * 8);
    }
  }
  writeOrdered(file, { tables: [...tables].map(([offset, data]) => ({ offset, data, step: g.l2EntrySize })) });
}

/** qcow2_mark_clean and qcow2_mark_consistent: the dirty and corrupt bits cleared, last. */
function markClean(file: BlockFile): void {
  const img = Image.open(file);
  const h = img.header;
  const bits = C.QCOW2_INCOMPAT_DIRTY | C.QCOW2_INCOMPAT_CORRUPT;
  if ((h.incompatibleFeatures & bits) === 0n) return;
  writeOrdered(file, { header: encodeHeader({ ...h, incompatibleFeatures: h.incompatibleFeatures & ~bits }, img.geometry.clusterSize) });
}

/** QEMU's open-time repair of a dirty image failed. */
export function repairFailed(file: string): Qcow2Error {
  return new Qcow2Error('INVALID_IMAGE', 'Could not repair dirty image: Input/output error', { file });
}
