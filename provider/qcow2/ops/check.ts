// `check`: QEMU's qcow2_check_refcounts, read-only. Recount every reference (header, L1/L2,
// snapshots, refcount structures, bitmaps) and compare with the stored refcounts, with QEMU's
// OFLAG_COPIED consistency check folded into the same pass over the active L2 tables (its
// messages still come after the refcount comparison's, as qemu-img prints them). Verdicts,
// counters, messages and exit codes as qemu-img check.
//
// Cost: one read of each L2 table into one reused buffer, entries read as u32 halves; the
// common entry (normal, COPIED, aligned, no reserved bits) takes a fast path.

import { BlockFile } from '../io/blockfile';
import { HostFs, localFs } from '../io/hostfs';
import * as C from '../spec/constants';
import { Qcow2Error } from '../../model/errors';
import type { ConsistencyFacts } from '../../rules/types';
import { Image, safeOffset } from '../meta/image';
import {
  L2_HI_COPIED, L2_HI_OFFSET, L2_LO_ZERO, clusterTypeOf, entryAllocBits, entryHi, entryLo, entryOf, entryZeroBits, hasReservedBits,
  hostClusterOf, hostOffsetOf, parseCompressedEntry, tableView,
} from '../spec/l2';
import { getRefcount, readRefcount, refcountMax } from '../spec/refcount';
import { decodeBitmapDirectory } from '../spec/bitmaps';
import { QCOW_MAX_SNAPSHOTS, SNAPSHOT_EXTRA_V3, Snapshot, SnapshotTableRepair } from '../spec/snapshot';
import { validateTable } from '../spec/header';

export interface CheckResult {
  /** Errors and leaks, one line each, as qemu-img prints them on stderr. */
  messages: string[];
  corruptions: number;
  leaks: number;
  checkErrors: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /**
   * Why the check could not run at all (the snapshot table cannot be read, as QEMU checks it
   * first): qemu-img reports it and "Check failed: <cause>", and prints no summary.
   */
  failed?: { message: string; cause: string };
}

const hex = (v: bigint | number) => v.toString(16);

/** Computed reference counts: dense for the file's clusters, sparse beyond (hostile offsets). */
class RefCounter {
  dense: Uint32Array;
  sparse = new Map<number, number>();
  constructor(readonly clusters: number) { this.dense = new Uint32Array(clusters); }
  get(ci: number): number { return ci < this.clusters ? this.dense[ci]! : this.sparse.get(ci) ?? 0; }
  set(ci: number, v: number): void { if (ci < this.clusters) this.dense[ci] = v; else this.sparse.set(ci, v); }
  /** Highest index QEMU's in-memory table would cover (it grows to the largest reference). */
  size(): number {
    let n = this.clusters;
    for (const k of this.sparse.keys()) n = Math.max(n, k + 1);
    return n;
  }
}

export function checkImage(file: BlockFile): CheckResult {
  const img = Image.open(file, '', { check: true });
  return new Checker(img, file).run();
}

/**
 * The refcount every cluster should have, counted from references (what `check -r` rebuilds
 * from). `beyondFile` lists clusters referenced past the end of the file (a corrupt image).
 */
export function countReferences(img: Image, file: BlockFile): { counts: Uint32Array; beyondFile: number[]; structuralCorruptions: number; result: CheckResult } {
  const c = new Checker(img, file);
  const result = c.run();
  return { counts: c.computed().dense, beyondFile: [...c.computed().sparse.keys()], structuralCorruptions: c.structural, result };
}

/**
 * What a change that moves metadata must know (provider/rules validateConsistent): check's
 * corruptions and unreadable refcounts, and the first error line. On an image with lazy
 * refcounts left dirty, stale refcounts are what the change's repair fixes: only corruptions
 * found before the refcount comparison (broken structure) count.
 */
export function consistencyOf(img: Image, file: BlockFile): ConsistencyFacts {
  const c = new Checker(img, file);
  const r = c.run();
  const out: ConsistencyFacts = {
    corruptions: img.dirty ? c.structural : r.corruptions, checkErrors: r.checkErrors,
  };
  const overflows = r.messages.filter((m) => m.startsWith('ERROR: overflow cluster')).length;
  if (overflows > 0) out.overflows = overflows;
  const first = r.messages.find((m) => !m.startsWith('Leaked'));
  if (first !== undefined && out.corruptions + out.checkErrors > 0) out.first = first.replace(/^ERROR:? /, '');
  return out;
}

// The hot loops are small module-level functions that take everything as parameters. On a first
// call V8 runs a function before it has a feedback vector, and compiles the loop while it runs
// (on-stack replacement): operations before the loop then have no feedback and deoptimize the
// compiled code on the next call, which may not be recompiled for a while. A loop whose code
// all runs inside it stays compiled (measured: a 16M-entry check otherwise varies 0.3-1.5 s).

/** What commonRun found besides the run's end: fragmentation. */
interface RunFacts { breaks: number }

/**
 * From entry `from` of a standard table, the end of the run of common entries: normal, aligned,
 * no reserved bits, COPIED set (or either, `copiedEither`: a run's COPIED flags are then checked
 * one by one against the refcounts) (`loClear`: the low-half bits that must be clear; offset 0
 * counts only with a data file). Counts in out.breaks the entries not at the host cluster
 * expected (the previous one's next; `expected` for the first: -1 when any will do, -2 when
 * none). `out` is kept current inside the loop: a store after it would lack feedback (see above).
 *
 * An entry equal to the one the previous entry predicts (same flags, the next host cluster) is
 * common and contiguous by construction, so it costs two compares and an add: that is every
 * entry of a data-file-raw image but the first of each table. Any other entry is decoded.
 */
function commonRun(v: DataView, from: number, n: number, step: number, loClear: number, copiedEither: boolean, dataFile: boolean, clusterBits: number, expected: number, out: RunFacts): number {
  const cs = 1 << clusterBits;
  const flagMask = copiedEither ? COPIED_BYTE : 0;
  // The halves the next entry has if it continues the run (`predicted`: there is a previous
  // one), and the host cluster contiguity wants next.
  let i = from, breaks = 0, nextHi = 0, nextLo = 0, predicted = false, want = expected;
  for (; i < n; i++) {
    const hi = entryHi(v, i * step);
    const lo = entryLo(v, i * step);
    if (predicted && hi === nextHi && lo === nextLo) {
      nextLo = (nextLo + cs) | 0;
      if (nextLo === 0) nextHi = (nextHi + 1) | 0; // the offset carries into the high half
      want++;
      continue;
    }
    const offsetBits = (hi & L2_HI_OFFSET) | lo;
    if (((hi >>> 24) | flagMask) !== COPIED_BYTE || (lo & loClear) !== 0 || (offsetBits === 0 && !dataFile)) break;
    const ci = hostClusterOf(hi, lo, clusterBits);
    if (want !== -1 && ci !== want) breaks++;
    want = ci + 1;
    nextLo = (lo + cs) | 0;
    nextHi = nextLo === 0 ? (hi + 1) | 0 : hi;
    predicted = true;
    out.breaks = breaks;
  }
  return i;
}

/** From entry `from`, the first entry that is not all zeros (unallocated, nothing to count). */
function unallocatedRun(v: DataView, from: number, n: number, step: number): number {
  let i = from;
  while (i < n && entryHi(v, i * step) === 0 && entryLo(v, i * step) === 0) i++;
  return i;
}

/** The high byte of a common entry: COPIED alone (not compressed, no reserved bits). */
const COPIED_BYTE = L2_HI_COPIED >>> 24;

/** A refcount block as check reads it: the block, none (refcount 0), or unreadable (unaligned). */
type StoredBlock = Uint8Array | undefined | null;

/** A cluster whose stored refcount differs from the references counted. */
export interface Mismatch { cluster: number; stored: bigint; computed: number }

/**
 * What a pass found beyond its result, for check -r (ops/repair.ts): where its messages end by
 * phase, the mismatches, whether the refcount structure must be rebuilt, and the repairs QEMU
 * makes while it counts (with fixErrors).
 */
export interface CheckFindings {
  /** messages[0, calcEnd) come from counting, [calcEnd, compareEnd) from the comparison, the rest from OFLAG_COPIED. */
  calcEnd: number;
  compareEnd: number;
  /** Corruptions counting found (before the comparison). */
  calcCorruptions: number;
  /** Of those, repaired while counting (preallocated clusters zeroed, refblocks past the end). */
  calcFixed: number;
  mismatches: Mismatch[];
  /** QEMU's `rebuild`: a refcount of 0 where there are references, or a broken refcount block. */
  rebuild: boolean;
  /** Preallocated clusters with an unaligned offset: L2 entries to make ZERO (fix_l2_entry_by_zero). */
  zeroEntries: Array<{ l2Offset: number; index: number }>;
  /** The file must grow to this size (a refcount block past its end, check -r all). */
  growTo?: number;
}

export interface CheckerOptions {
  /** check -r all (BDRV_FIX_ERRORS): the repairs made while counting, with QEMU's "Repairing" words. */
  fixErrors?: boolean;
  /**
   * The snapshot table as the repair read it (checkSnapshotTable with fixing): its entries are
   * what is counted, and its findings are the repair's to report. Without it the check reads the
   * table itself and reports what it finds.
   */
  snapshotTable?: SnapshotTableCheck;
}

/** What qcow2_check_read_snapshot_table found (the header's count rewrite is the repair's). */
export interface SnapshotTableCheck {
  /** The entries the refcount check counts (tableSize: the bytes the table takes). */
  snaps: Snapshot[] & { tableSize?: number };
  /** QEMU's lines, in order. */
  messages: string[];
  /** Corruptions: entries whose extra data was cut or that are incomplete (v3). */
  corruptions: number;
  /** Entries dropped (fixing only): the header's count must become snaps.length. */
  reduced: number;
  /** The table could not be read: the check stops with this. */
  failed?: { message: string; cause: string };
}

/**
 * qcow2_check_read_snapshot_table: the count and place of the table, then its entries; with
 * `fix` (check -r all) what is broken beyond reading is discarded instead (more than 65536
 * entries, extra data past 1 KiB, a table past 64 MiB), and v3 entries without a disk size
 * are reported to be completed.
 */
export function checkSnapshotTable(img: Image, fix: boolean): SnapshotTableCheck {
  const h = img.header;
  const repair: SnapshotTableRepair = { messages: [], extraDropped: 0, reduced: 0 };
  let count = h.nbSnapshots;
  if (count > QCOW_MAX_SNAPSHOTS && fix) {
    repair.messages.push(`Discarding ${count - QCOW_MAX_SNAPSHOTS} overhanging snapshots`);
    repair.reduced += count - QCOW_MAX_SNAPSHOTS;
    count = QCOW_MAX_SNAPSHOTS;
  }
  const none = Object.assign([] as Snapshot[], { tableSize: 0 });
  try {
    validateTable(img.geometry.clusterSize, h.snapshotsOffset, BigInt(count), 40, 40 * QCOW_MAX_SNAPSHOTS, 'snapshot table', 60, 64);
  } catch (e) {
    if (!Qcow2Error.isInstance(e) || e.code !== 'INVALID_IMAGE') throw e;
    const hint = count > QCOW_MAX_SNAPSHOTS ? `\nYou can force-remove all ${count - QCOW_MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all` : '';
    const cause = /too large/.test(e.message) ? 'File too large' : 'Invalid argument';
    return { snaps: none, messages: repair.messages, corruptions: 0, reduced: 0, failed: { message: `ERROR ${e.message}${hint}`, cause } };
  }
  let snaps: Snapshot[] & { tableSize?: number };
  try {
    snaps = img.readSnapshots({ count, repair: fix ? repair : undefined });
  } catch (e) {
    if (!Qcow2Error.isInstance(e) || e.code !== 'INVALID_IMAGE') throw e;
    return { snaps: none, messages: repair.messages, corruptions: 0, reduced: 0, failed: { message: `ERROR failed to read the snapshot table: ${e.message}`, cause: 'File too large' } };
  }
  let corruptions = repair.extraDropped;
  if (h.version >= 3) {
    snaps.forEach((sn, i) => {
      if (sn.extraDataSize < SNAPSHOT_EXTRA_V3) {
        corruptions++;
        repair.messages.push(`${fix ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      }
    });
  }
  return { snaps, messages: repair.messages, corruptions, reduced: repair.reduced };
}

/** Run the check and return what check -r needs besides the result. */
export function checkWithFindings(img: Image, file: BlockFile, options: CheckerOptions = {}): { result: CheckResult; findings: CheckFindings; counts: Uint32Array } {
  const c = new Checker(img, file, options);
  const result = c.run();
  // References past the end of the file (at most into the cluster after it: beyondEnd) count too.
  const refs = c.computed();
  let counts = refs.dense;
  if (refs.sparse.size) {
    counts = new Uint32Array(refs.size());
    counts.set(refs.dense);
    for (const [ci, v] of refs.sparse) counts[ci] = v;
  }
  return { result, findings: c.findings, counts };
}

class Checker {
  private readonly r: CheckResult = {
    messages: [], corruptions: 0, leaks: 0, checkErrors: 0, imageEndOffset: 0,
    totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
  };
  private readonly cs: number;
  private readonly bits: bigint;
  private readonly refs: RefCounter;
  /** Largest refcount the width holds (64-bit ones never overflow a count held in 32 bits). */
  private readonly max: number;
  private reftable: bigint[] = [];
  private readonly refblockCache = new Map<number, Uint8Array | undefined>();
  /** OFLAG_COPIED findings of the pass over the active tables, reported after the comparison. */
  private readonly copiedMessages: string[] = [];
  private copiedCorruptions = 0;
  private readonly table: Buffer;
  private readonly view: DataView;
  /** The image file's length (grown, for check -r all, by a refcount block placed past it). */
  private fileLen: number;

  readonly findings: CheckFindings = { calcEnd: 0, compareEnd: 0, calcCorruptions: 0, calcFixed: 0, mismatches: [], rebuild: false, zeroEntries: [] };

  constructor(private readonly img: Image, private readonly file: BlockFile, private readonly options: CheckerOptions = {}) {
    this.cs = img.geometry.clusterSize;
    this.bits = BigInt(img.geometry.clusterBits);
    this.fileLen = file.size();
    this.refs = new RefCounter(Math.ceil(this.fileLen / this.cs));
    this.max = img.geometry.refcountOrder === 6 ? Infinity : Number(refcountMax(img.geometry.refcountOrder));
    this.table = Buffer.allocUnsafe(this.cs);
    this.view = tableView(this.table);
  }

  private err(line: string): void { this.r.messages.push(line); }

  computed(): RefCounter { return this.refs; }

  /** Corruptions found before refcounts were compared: broken structure, not stale counts. */
  structural = 0;
  private signalled = false;

  run(): CheckResult {
    const { img, r } = this;
    const h = img.header;
    r.totalClusters = img.geometry.clustersFor(h.size);
    this.reftable = img.readReftable();

    // qcow2_check_read_snapshot_table comes first: a table QEMU cannot read stops the check.
    let table = this.options.snapshotTable;
    if (table === undefined) {
      table = checkSnapshotTable(img, false);
      for (const m of table.messages) this.err(m);
      r.corruptions += table.corruptions;
      if (table.failed) {
        r.checkErrors++;
        r.failed = table.failed;
        return r;
      }
    }
    const snaps = table.snaps;
    this.inc(0n, this.cs);
    this.checkL1(h.l1TableOffset, h.l1Size, true);
    if (img.hasDataFile && snaps.length) {
      this.err(`ERROR ${snaps.length} snapshots in image with data file`);
      r.corruptions++;
    }
    for (const sn of snaps) {
      if (sn.l1TableOffset % BigInt(this.cs) !== 0n) {
        this.err(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${hex(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
        r.corruptions++;
        continue;
      }
      if (sn.l1Size > C.QCOW_MAX_L1_SIZE / 8) {
        this.err(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=0x${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
        r.corruptions++;
        continue;
      }
      this.checkL1(sn.l1TableOffset, sn.l1Size, false);
    }
    if (snaps.length) this.inc(h.snapshotsOffset, snaps.tableSize ?? 0);
    this.inc(h.refcountTableOffset, this.reftable.length * 8);
    this.checkBitmaps();
    this.checkRefblocks();
    this.structural = this.r.corruptions;
    this.findings.calcEnd = r.messages.length;
    this.findings.calcCorruptions = r.corruptions;
    const highest = this.compare();
    this.findings.compareEnd = r.messages.length;
    // check_oflag_copied runs after the comparison in QEMU: its messages come last.
    r.messages.push(...this.copiedMessages);
    r.corruptions += this.copiedCorruptions;
    r.imageEndOffset = (highest + 1) * this.cs;
    return r;
  }

  /**
   * qcow2_inc_refcounts_imrt over the bytes [offset, offset+size). A region reaching a whole
   * cluster or more past the end of the file is a corruption and is not counted (QEMU 4.0+):
   * a hostile entry far past the end must not grow the count, nor the image end offset.
   */
  private inc(offset: bigint, size: number): void {
    if (size <= 0) return;
    if (this.beyondEnd(offset, size)) return;
    const first = offset >> this.bits;
    const last = (offset + BigInt(size) - 1n) >> this.bits;
    this.incClusters(Number(first), Number(last - first) + 1);
  }

  /**
   * qcow2_inc_refcounts_imrt's bound: the last cluster may be partly past the end of the file,
   * never a whole cluster or more. Such a reference is an error and is not counted.
   */
  private beyondEnd(offset: bigint | number, size: number): boolean {
    const o = BigInt(offset);
    if (o + BigInt(size) - BigInt(this.fileLen) < BigInt(this.cs)) return false;
    this.err(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(o)} size 0x${hex(size)}`);
    this.r.corruptions++;
    return true;
  }

  /** qcow2_inc_refcounts_imrt over `n` clusters from `first`. */
  private incClusters(first: number, n: number): void {
    for (let ci = first; ci < first + n; ci++) {
      const v = this.refs.get(ci);
      if (v === this.max) {
        this.err(`ERROR: overflow cluster offset=0x${hex(BigInt(ci) << this.bits)}`);
        this.err('Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing');
        this.r.corruptions++;
        continue;
      }
      this.refs.set(ci, v + 1);
    }
  }

  private readTable(offset: bigint, length: number): Buffer {
    return this.file.read(safeOffset(offset), length);
  }

  private checkL1(l1Offset: bigint, l1Size: number, active: boolean): void {
    if (l1Size === 0) return;
    this.inc(l1Offset, l1Size * 8);
    const buf = this.readTable(l1Offset, l1Size * 8);
    for (let i = 0; i < l1Size; i++) {
      const e = buf.readBigUInt64BE(i * 8);
      if (e === 0n) continue;
      if (e & C.L1E_RESERVED_MASK) {
        this.err(`ERROR found L1 entry with reserved bits set: ${hex(e)}`);
        this.r.corruptions++;
      }
      const l2 = e & C.L1E_OFFSET_MASK;
      this.inc(l2, this.cs);
      if (l2 % BigInt(this.cs) !== 0n) {
        this.err(`ERROR l2_offset=${hex(l2)}: Table is not cluster aligned; L1 entry corrupted`);
        this.r.corruptions++;
      }
      // check_oflag_copied, active L1 only: a table whose refcount cannot be read is skipped.
      let copied = false;
      if (active) {
        const rc = this.storedQuiet(Number(l2 >> this.bits));
        if (rc !== undefined) {
          copied = true;
          if ((rc === 1n) !== ((e & C.QCOW_OFLAG_COPIED) !== 0n)) {
            this.copiedCorruptions++;
            this.copiedMessages.push(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(e)} refcount=${rc}`);
          }
        }
      }
      this.checkL2(l2, active, copied);
    }
  }

  /** The L2 table being checked (where a repair would write). */
  private l2Offset = 0;

  /** check_refcounts_l2, and (`copied`) check_oflag_copied's data-cluster half, in one pass. */
  private checkL2(l2Offset: bigint, active: boolean, copied: boolean): void {
    const g = this.img.geometry;
    this.l2Offset = safeOffset(l2Offset);
    this.file.readInto(this.table, safeOffset(l2Offset));
    this.next[0] = 0;
    const n = g.l2Entries;
    for (let i = 0; i < n; i++) {
      // Standard tables: runs of unallocated and of common entries go fast; others one by one.
      while (!g.extendedL2 && i < n) {
        const j = this.scanCommon(unallocatedRun(this.view, i, n, C.L2E_SIZE_NORMAL), n, active, copied);
        if (j === i) break;
        i = j;
      }
      if (i >= n) break;
      this.checkEntry(i, active, copied);
    }
  }

  /**
   * Where the next contiguous data cluster would be (fragmentation), 0 before the first. A
   * Float64Array slot: offsets past 2 GiB would change a field's representation and deoptimize
   * the scan that reads it.
   */
  private readonly next = new Float64Array(1);
  private readonly runFacts: RunFacts = { breaks: 0 };

  /**
   * The common entries from index `from` (normal, COPIED, aligned, no reserved bits: every
   * entry of a data-file-raw image); returns the index of the first other one.
   */
  private scanCommon(from: number, n: number, active: boolean, copied: boolean): number {
    const v = this.view;
    const cs = this.cs;
    const step = C.L2E_SIZE_NORMAL;
    const bits = this.img.geometry.clusterBits;
    const dataFile = this.img.hasDataFile;
    // The cluster the run's first entry continues: any (no previous data cluster), or none
    // (the previous one ended unaligned, as only a corrupt entry does).
    const next = this.next[0]!;
    const expected = next === 0 ? -1 : next % cs === 0 ? next / cs : -2;
    // Low-half bits a common entry has clear: ZERO, reserved, and the offset's bits below the
    // cluster size (alignment).
    const facts = this.runFacts;
    const end = commonRun(v, from, n, step, (cs - 1) | L2_LO_ZERO, !dataFile, dataFile, bits, expected, facts);
    if (end === from) return from;
    if (active) {
      this.next[0] = (hostClusterOf(entryHi(v, (end - 1) * step), entryLo(v, (end - 1) * step), bits) + 1) * cs;
      this.r.allocatedClusters += end - from;
      this.r.fragmentedClusters += facts.breaks;
    }
    if (!dataFile) this.referenceRun(from, end, copied);
    return end;
  }

  /** The references of a run of common entries (and, `copied`, their COPIED flags). */
  private referenceRun(from: number, end: number, copied: boolean): void {
    const v = this.view;
    const step = C.L2E_SIZE_NORMAL;
    const bits = this.img.geometry.clusterBits;
    for (let i = from; i < end; i++) {
      const hi = entryHi(v, i * step), lo = entryLo(v, i * step);
      const ci = hostClusterOf(hi, lo, bits);
      if (ci * this.cs < this.fileLen || !this.beyondEnd(BigInt(ci) << this.bits, this.cs)) this.incClusters(ci, 1);
      if (copied) this.checkCopiedData(hi, lo, ci);
    }
  }

  /** One entry of any kind (check_refcounts_l2's switch). */
  private checkEntry(i: number, active: boolean, copied: boolean): void {
    const g = this.img.geometry;
    const ext = g.extendedL2;
    const fmt = { dataFile: this.img.hasDataFile, extendedL2: ext };
    const cs = this.cs;
    const v = this.view;
    const at = i * g.l2EntrySize;
    const hi = entryHi(v, at);
    const lo = entryLo(v, at);
    const allocBits = ext ? entryAllocBits(v, at) : 0;
    const zeroBits = ext ? entryZeroBits(v, at) : 0;
    const type = clusterTypeOf(hi, lo, fmt);
    if (type !== 'compressed' && hasReservedBits(hi, lo)) {
      this.err(`ERROR found l2 entry with reserved bits set: ${hex(entryOf(hi, lo))}`);
      this.r.corruptions++;
    }
    switch (type) {
      case 'compressed': {
        const raw = entryOf(hi, lo);
        const range = parseCompressedEntry(raw, g.clusterBits);
        let entry = raw;
        if (hi & L2_HI_COPIED) {
          this.err(`ERROR: coffset=0x${hex(range.offset)}: copied flag must never be set for compressed clusters`);
          entry &= ~C.QCOW_OFLAG_COPIED;
          this.r.corruptions++;
        }
        if (fmt.dataFile) {
          this.err(`ERROR compressed cluster ${i} with data file, entry=0x${hex(entry)}`);
          this.r.corruptions++;
          break;
        }
        if (allocBits || zeroBits) {
          this.err(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex(entry)}`);
          this.r.corruptions++;
          break;
        }
        this.inc(range.offset, range.size);
        if (active) {
          this.r.allocatedClusters++;
          this.r.compressedClusters++;
          this.r.fragmentedClusters++;
        }
        break;
      }
      case 'zero-alloc':
      case 'normal': {
        const offset = hostOffsetOf(hi, lo);
        if (zeroBits & allocBits) {
          this.r.corruptions++;
          this.err(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % cs !== 0) {
          this.r.corruptions++;
          const containsData = ext ? allocBits !== 0 : (lo & L2_LO_ZERO) === 0;
          if (containsData) {
            this.err(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          } else {
            const fix = this.options.fixErrors === true;
            this.err(`${fix ? 'Repairing' : 'ERROR'} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            if (fix) {
              // fix_l2_entry_by_zero: the entry becomes ZERO, and its cluster is no longer counted.
              this.findings.zeroEntries.push({ l2Offset: this.l2Offset, index: i });
              this.r.corruptions--;
              this.findings.calcFixed++;
              break;
            }
          }
        }
        if (active) {
          this.r.allocatedClusters++;
          if (this.next[0] !== 0 && offset !== this.next[0]) this.r.fragmentedClusters++;
          this.next[0] = offset + cs;
        }
        const ci = hostClusterOf(hi, lo, g.clusterBits);
        if (!fmt.dataFile) this.inc(BigInt(offset), cs); // an unaligned cluster spans two
        if (copied) {
          if (fmt.dataFile) {
            if ((hi & L2_HI_COPIED) === 0) this.copiedDataError(hi, lo, 1n);
          } else {
            this.checkCopiedData(hi, lo, ci);
          }
        }
        break;
      }
      case 'zero-plain':
        break;
      case 'unallocated':
        if (allocBits) {
          this.r.corruptions++;
          this.err('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }

  /** A data cluster's COPIED flag against its stored refcount (skipped when that cannot be read). */
  private checkCopiedData(hi: number, lo: number, ci: number): void {
    const rc = this.storedQuiet(ci);
    if (rc === undefined) return;
    if ((rc === 1n) !== ((hi & L2_HI_COPIED) !== 0)) this.copiedDataError(hi, lo, rc);
  }

  private copiedDataError(hi: number, lo: number, rc: bigint): void {
    this.copiedCorruptions++;
    this.copiedMessages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${hex(entryOf(hi, lo))} refcount=${rc}`);
  }

  private checkBitmaps(): void {
    const b = this.img.header.bitmaps;
    if (!b) return;
    this.inc(b.bitmapDirectoryOffset, Number(b.bitmapDirectorySize));
    let entries;
    try {
      const dir = this.readTable(b.bitmapDirectoryOffset, Number(b.bitmapDirectorySize));
      entries = decodeBitmapDirectory(dir, b.nbBitmaps, Number(b.bitmapDirectoryOffset), this.cs, this.img.header.size);
    } catch (e) {
      // qcow2_check_bitmaps_refcounts: an unloadable directory is one corruption.
      this.err(`ERROR ${(e as Error).message}`);
      this.r.corruptions++;
      return;
    }
    for (const e of entries) {
      // Sizes are bounded by the entry check: at most what the virtual size needs.
      this.inc(e.tableOffset, e.tableSize * 8);
      const t = this.readTable(e.tableOffset, e.tableSize * 8);
      for (let k = 0; k < e.tableSize; k++) {
        const entry = t.readBigUInt64BE(k * 8);
        const off = entry & 0x00fffffffffffe00n;
        if ((entry & 0x7f000000000001fen) || off % BigInt(this.cs) !== 0n || ((entry & 1n) && off)) { this.r.corruptions++; continue; }
        if (off) this.inc(off, this.cs);
      }
    }
  }

  private checkRefblocks(): void {
    const nb = this.refs.size();
    this.reftable.forEach((entry, i) => {
      const offset = entry & C.REFT_OFFSET_MASK;
      if (entry & C.REFT_RESERVED_MASK) {
        this.err(`ERROR refcount table entry ${i} has reserved bits set`);
        this.r.corruptions++;
        this.findings.rebuild = true;
        return;
      }
      if (offset % BigInt(this.cs) !== 0n) {
        this.err(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.r.corruptions++;
        this.findings.rebuild = true;
        return;
      }
      const cluster = offset >> this.bits;
      if (cluster >= BigInt(nb)) {
        this.r.corruptions++;
        const fix = this.options.fixErrors === true;
        this.err(`${fix ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
        if (fix) {
          // The file grows to hold the block (QEMU truncates it up), which then counts as used.
          this.findings.growTo = Math.max(this.findings.growTo ?? 0, safeOffset(offset) + this.cs);
          this.fileLen = Math.max(this.fileLen, this.findings.growTo);
          this.r.corruptions--;
          this.findings.calcFixed++;
          this.inc(offset, this.cs);
        }
        return;
      }
      if (offset !== 0n) {
        this.inc(offset, this.cs);
        const v = this.refs.get(Number(cluster));
        if (v !== 1) {
          this.err(`ERROR refcount block ${i} refcount=${v}`);
          this.r.corruptions++;
          this.findings.rebuild = true;
        }
      }
    });
  }

  /** The refcount block covering cluster `ci` (qcow2_get_refcount's lookup). */
  private storedBlock(ci: number, signal: boolean): StoredBlock {
    const g = this.img.geometry;
    const ti = Math.floor(ci / g.refblockEntries);
    // Blocks read, and refcount-table entries with none: an unaligned block is not kept (each
    // lookup decides whether to signal it).
    if (this.refblockCache.has(ti)) return this.refblockCache.get(ti);
    if (ti >= this.reftable.length) return undefined;
    const off = this.reftable[ti]! & C.REFT_OFFSET_MASK;
    if (off === 0n) {
      this.refblockCache.set(ti, undefined);
      return undefined;
    }
    if (off % BigInt(this.cs) !== 0n) {
      // qcow2_signal_corruption on a read-only image: said once, then suppressed.
      if (signal && !this.signalled) {
        this.signalled = true;
        this.err(`qcow2: Image is corrupt: Refblock offset 0x${hex(off)} unaligned (reftable index: ${ti === 0 ? '0' : `0x${hex(ti)}`}); further non-fatal corruption events will be suppressed`);
      }
      return null;
    }
    let block = this.refblockCache.get(ti);
    if (!block) {
      block = this.readTable(off, this.cs);
      this.refblockCache.set(ti, block);
    }
    return block;
  }

  /** Stored refcount of a cluster, exact (qcow2_get_refcount); undefined when it cannot be read. */
  private stored(ci: number, signal = true): bigint | undefined {
    const b = this.storedBlock(ci, signal);
    if (b === null) return undefined;
    return b === undefined ? 0n : getRefcount(b, this.img.geometry.refcountOrder, ci % this.img.geometry.refblockEntries);
  }

  /**
   * stored() without the corruption signal. The OFLAG_COPIED pass, which QEMU runs after the
   * comparison, uses it: the comparison has said whatever it would have said.
   */
  private storedQuiet(ci: number): bigint | undefined {
    return this.stored(ci, false);
  }

  private compare(): number {
    let highest = 0;
    const g = this.img.geometry;
    const n = this.refs.size();
    // Beyond the file, only clusters something references can differ (stored refcounts past
    // the end of the file are read as zero blocks), so visit those instead of the whole range.
    const visit = (ci: number) => {
      const b = this.storedBlock(ci, true);
      const computed = this.refs.get(ci);
      if (b === null) {
        this.err(`Can't get refcount for cluster ${ci}: Input/output error`);
        this.r.checkErrors++;
        return;
      }
      const stored = b === undefined ? 0 : readRefcount(b, g.refcountOrder, ci % g.refblockEntries);
      if (stored > 0 || computed > 0) highest = ci;
      if (stored !== computed) {
        const exact = this.stored(ci)!;
        this.findings.mismatches.push({ cluster: ci, stored: exact, computed });
        if (exact === 0n) this.findings.rebuild = true;
        this.err(`${exact < BigInt(computed) ? 'ERROR' : 'Leaked'} cluster ${ci} refcount=${exact} reference=${computed}`);
        if (exact < BigInt(computed)) this.r.corruptions++;
        else this.r.leaks++;
      }
    };
    for (let ci = 0; ci < this.refs.clusters; ci++) visit(ci);
    const beyond = [...this.storedNonZeroBeyond(n), ...this.refs.sparse.keys()].filter((k) => k >= this.refs.clusters && k < n);
    for (const ci of [...new Set(beyond)].sort((a, b) => a - b)) visit(ci);
    return highest;
  }

  /** Clusters past the end of the file whose stored refcount is non-zero (blocks inside the file only). */
  private storedNonZeroBeyond(limit: number): number[] {
    const g = this.img.geometry;
    const out: number[] = [];
    const fileSize = this.file.size();
    this.reftable.forEach((entry, ti) => {
      const off = entry & C.REFT_OFFSET_MASK;
      if (off === 0n || off % BigInt(this.cs) !== 0n || off >= BigInt(fileSize)) return;
      const base = ti * g.refblockEntries;
      if (base + g.refblockEntries <= this.refs.clusters || base >= limit) return;
      const block = this.storedBlock(base, true);
      if (!block) return;
      for (let ci = Math.max(base, this.refs.clusters); ci < Math.min(limit, base + g.refblockEntries); ci++) {
        if (readRefcount(block, g.refcountOrder, ci - base) !== 0) out.push(ci);
      }
    });
    return out;
  }
}

/**
 * Check an image file. Like qemu-img, fails when the external data file cannot be opened, and
 * takes QEMU's read lock (refusing an image a VM is writing) unless `forceShare` (qemu-img -U).
 */
export function checkImageFile(path: string, options: { forceShare?: boolean; host?: HostFs } = {}): CheckResult {
  const host = options.host ?? localFs;
  const { file } = host.open(path, 'read');
  try {
    if (!options.forceShare) host.lock(file, path, 'read');
    const img = Image.open(file, path, { check: true });
    if (img.hasDataFile) {
      const name = img.header.dataFile;
      if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image");
      if (host.stat(name) === undefined) {
        throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name, property: 'data_file' });
      }
    }
    return new Checker(img, file).run();
  } finally {
    file.close(); // closing the file drops its lock
  }
}
