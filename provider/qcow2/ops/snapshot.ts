// Internal snapshots, as QEMU's qcow2-snapshot.c makes them: create (copy the active L1 table,
// add a reference to everything it reaches, append an entry to a rewritten snapshot table),
// delete (the reverse), apply (qcow2_snapshot_goto: the active L1 becomes a copy of the
// snapshot's) and list. The change is computed in memory with QEMU's allocator and immediate
// frees, so the bytes written are the ones qemu-img writes, then written by meta/ordered.ts in
// an order that leaves a consistent image (at worst with leaked clusters) after a crash.
//
// Legality (data files, bitmaps, names) is provider/rules/snapshot.ts's; this module assumes
// the request was validated, and checks only what the image's own tables can break.

import { BlockFile } from '../io/blockfile';
import * as C from '../spec/constants';
import { Qcow2Error, invalidImage } from '../../model/errors';
import { HEADER_V2 } from '../spec/header';
import { L2_HI_COPIED, clusterTypeOf, hostClusterOf, hostOffsetOf, parseCompressedEntry, entryOf } from '../spec/l2';
import { Snapshot, encodeSnapshots, findSnapshot, snapshotTableSize, validateSnapshotL1 } from '../spec/snapshot';
import { Image, safeOffset } from '../meta/image';
import { TableRefcounts } from '../meta/refcount';
import { TableCache } from '../meta/tables';
import { OrderedChange, ReferenceTable, writeOrdered } from '../meta/ordered';

/** When a snapshot is taken (qemu-img uses the wall clock; tests pass a fixed time). */
export interface SnapshotTime { sec: number; nsec: number }

export function wallClock(): SnapshotTime {
  const ms = Date.now();
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1_000_000 };
}

export interface SnapshotOptions {
  /**
   * Make a byte range of the image file read as zeros (a hole): QEMU discards the clusters a
   * snapshot operation frees. Without it they keep their old bytes.
   */
  punch?: (offset: number, length: number) => void;
}

/** strtoul(id, NULL, 10) as find_new_snapshot_id reads an id: leading digits, else 0. */
function idNumber(id: string): bigint {
  const m = /^\s*\+?(\d+)/.exec(id);
  return m ? BigInt(m[1]!) : 0n;
}

/** find_snapshot_by_id_or_name: the id first, then the name. */
export function findByIdOrName(list: readonly Snapshot[], idOrName: string): number {
  return findSnapshot(list, { idOrName });
}

/** bdrv_snapshot_find: by name only (what `qemu-img snapshot -d` looks up). */
export function findByName(list: readonly Snapshot[], name: string): number {
  return findSnapshot(list, { name });
}


/**
 * The working state of one snapshot operation: the image's refcounts (QEMU's allocator,
 * immediate frees), its L2 tables as they change, the active L1 and the snapshot list.
 */
class SnapshotChange {
  readonly cs: number;
  readonly rc: TableRefcounts;
  readonly l2: TableCache;
  readonly l1: BigUint64Array;
  readonly l1Offset: number;
  readonly list: Snapshot[];
  private readonly step: number;
  private readonly fmt: { dataFile: boolean; extendedL2: boolean };
  private readonly fresh: Array<{ offset: number; data: Uint8Array }> = [];
  private readonly tables: ReferenceTable[] = [];
  private readonly headerFields: Array<{ offset: number; data: Uint8Array }> = [];
  private activeL1Changed = false;
  /** Bytes the table on disk takes (freed when it is rewritten). */
  private readonly oldTableSize: number;

  /** `table`: the entries as already read (check -r all's repairing read), instead of reading them. */
  constructor(readonly file: BlockFile, readonly img: Image, private readonly opts: SnapshotOptions, table?: Snapshot[] & { tableSize?: number }) {
    const g = img.geometry;
    this.cs = g.clusterSize;
    this.step = g.l2EntrySize;
    this.fmt = { dataFile: img.hasDataFile, extendedL2: g.extendedL2 };
    this.rc = new TableRefcounts(g, 'immediate', new TableCache(file, this.cs), BigUint64Array.from(img.readReftable()),
      safeOffset(img.header.refcountTableOffset));
    this.rc.zeroed = [];
    // Tables this operation changes stay in memory until written (the cache never evicts dirty ones).
    this.l2 = new TableCache(file, this.cs);
    this.l1 = BigUint64Array.from(img.readL1());
    this.l1Offset = safeOffset(img.header.l1TableOffset);
    const list = table ?? img.readSnapshots();
    this.list = [...list];
    this.oldTableSize = list.tableSize ?? 0;
  }

  /** Allocate clusters for `bytes` (qcow2_alloc_clusters); the byte offset. */
  alloc(bytes: number): number {
    return this.rc.alloc(Math.ceil(bytes / this.cs)) * this.cs;
  }

  /** qcow2_free_clusters over the bytes [offset, offset + bytes). */
  freeBytes(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const first = Math.floor(offset / this.cs);
    this.rc.free(first, Math.floor((offset + bytes - 1) / this.cs) - first + 1);
  }

  private adjust(first: number, n: number, addend: number): void {
    if (addend > 0) this.rc.increment(first, n);
    else if (addend < 0) this.rc.free(first, n);
  }

  /**
   * qcow2_update_snapshot_refcount: add `addend` (-1, 0, +1) to every cluster `l1` reaches
   * (its L2 tables and their data clusters), and set OFLAG_COPIED where the refcount ends at 1,
   * in the L2 tables and in `l1` itself. True when `l1` changed.
   */
  updateRefcounts(l1: BigUint64Array, addend: number): boolean {
    const g = this.img.geometry;
    const bits = g.clusterBits;
    let l1Changed = false;
    for (let i = 0; i < l1.length; i++) {
      const old = l1[i]!;
      if (old === 0n) continue;
      const l2off = old & C.L1E_OFFSET_MASK;
      if (l2off % BigInt(this.cs) !== 0n) {
        throw invalidImage(`L2 table offset 0x${l2off.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`, l2off);
      }
      const l2 = safeOffset(l2off);
      const t = this.l2.get(l2);
      const v = t.view;
      let dirty = false;
      for (let j = 0; j < g.l2Entries; j++) {
        const at = j * this.step;
        const hi0 = v.getUint32(at), lo = v.getUint32(at + 4);
        let hi = hi0 & ~L2_HI_COPIED;
        let refcount: number;
        switch (clusterTypeOf(hi0, lo, this.fmt)) {
          case 'compressed': {
            if (addend !== 0) {
              const r = parseCompressedEntry(entryOf(hi, lo), bits);
              this.adjust(r.firstCluster, r.clusters, addend);
            }
            refcount = 2; // compressed clusters are never written in place
            break;
          }
          case 'normal':
          case 'zero-alloc': {
            const off = hostOffsetOf(hi0, lo);
            if (off % this.cs !== 0) {
              throw invalidImage(`Cluster allocation offset 0x${off.toString(16)} unaligned (L2 offset: 0x${l2.toString(16)}, L2 index: 0x${j.toString(16)})`, off);
            }
            const ci = hostClusterOf(hi0, lo, bits);
            this.adjust(ci, 1, addend);
            refcount = this.rc.get(ci);
            break;
          }
          default:
            refcount = 0;
        }
        if (refcount === 1) hi |= L2_HI_COPIED;
        if ((hi >>> 0) !== hi0) {
          v.setUint32(at, hi >>> 0);
          dirty = true;
        }
      }
      if (dirty) this.l2.markDirty(l2);
      const l2c = l2 / this.cs;
      this.adjust(l2c, 1, addend);
      const next = this.rc.get(l2c) === 1 ? l2off | C.QCOW_OFLAG_COPIED : l2off;
      if (next !== old) {
        l1[i] = next;
        l1Changed = true;
      }
    }
    return l1Changed;
  }

  /**
   * Where adding a reference to everything `l1` reaches fails in qcow2_update_snapshot_refcount,
   * cluster by cluster in its order (each L2 table's data clusters, then the table): 'efbig' for
   * a cluster the refcount table could not grow to describe, 'eagain' for one without a refcount
   * block (QEMU adds the block and returns EAGAIN, which the snapshot reports), 'overflow' for a
   * refcount past its width's maximum (EINVAL). Undefined when every reference can be added.
   */
  incrementFailure(l1: BigUint64Array): SnapshotRefcountFailure | undefined {
    const g = this.img.geometry;
    const reftable = this.rc.reftable;
    const added = new Map<number, number>();
    const add = (first: number, n = 1): SnapshotRefcountFailure | undefined => {
      for (let c = first; c < first + n; c++) {
        const ti = Math.floor(c / g.refblockEntries);
        if (ti >= reftable.length) return Math.ceil(c / g.refblockEntries) > C.QCOW_MAX_REFTABLE_SIZE / 8 ? 'efbig' : 'eagain';
        if ((reftable[ti]! & C.REFT_OFFSET_MASK) === 0n) return 'eagain';
        const k = (added.get(c) ?? 0) + 1;
        if (this.rc.get(c) + k > this.rc.max) return 'overflow';
        added.set(c, k);
      }
      return undefined;
    };
    for (const e of l1) {
      const l2off = e & C.L1E_OFFSET_MASK;
      if (l2off === 0n || l2off % BigInt(this.cs) !== 0n) continue;
      const v = this.l2.get(safeOffset(l2off)).view;
      for (let j = 0; j < g.l2Entries; j++) {
        const hi = v.getUint32(j * this.step), lo = v.getUint32(j * this.step + 4);
        const t = clusterTypeOf(hi, lo, this.fmt);
        let f: SnapshotRefcountFailure | undefined;
        if (t === 'compressed') {
          const r = parseCompressedEntry(entryOf(hi, lo), g.clusterBits);
          f = add(r.firstCluster, r.clusters);
        } else if (t === 'normal' || t === 'zero-alloc') {
          f = add(hostClusterOf(hi, lo, g.clusterBits));
        }
        if (f) return f;
      }
      const f = add(safeOffset(l2off) / this.cs);
      if (f) return f;
    }
    return undefined;
  }

  /** The active L1 table changed in memory (written with the other tables). */
  activeL1Dirty(): void {
    this.activeL1Changed = true;
  }

  /**
   * qcow2_write_snapshots: the list at newly allocated clusters, the header pointed at it,
   * the old table freed.
   */
  writeSnapshotTable(list: Snapshot[]): void {
    const size = snapshotTableSize(list);
    const offset = this.alloc(size); // size 0 allocates nothing and still names an offset, as QEMU's does
    if (size > 0) this.fresh.push({ offset, data: encodeSnapshots(list, this.img.header.size) });
    const f = new Uint8Array(12);
    const dv = new DataView(f.buffer);
    dv.setUint32(0, list.length);
    dv.setBigUint64(4, BigInt(offset));
    this.headerFields.push({ offset: HEADER_V2.offsets.nbSnapshots!, data: f });
    if (this.img.header.nbSnapshots > 0) this.freeBytes(safeOffset(this.img.header.snapshotsOffset), this.oldTableSize);
  }

  addFresh(offset: number, data: Uint8Array): void {
    this.fresh.push({ offset, data });
  }

  /** A table of L1 entries to write in place (a snapshot's L1 that changed). */
  addL1(offset: number, l1: BigUint64Array): void {
    this.tables.push({ offset, data: l1Bytes(l1), step: 8 });
  }

  /** Write everything (meta/ordered.ts's order). */
  commit(): void {
    const change: OrderedChange = { fresh: this.fresh, refcounts: this.rc, headerFields: this.headerFields };
    const tables: ReferenceTable[] = this.l2.dirtyOffsets().map((off) => ({ offset: off, data: Buffer.from(this.l2.get(off).buf), step: this.step }));
    if (this.activeL1Changed && this.l1.length) tables.push({ offset: this.l1Offset, data: l1Bytes(this.l1), step: 8 });
    change.tables = [...tables, ...this.tables];
    if (this.opts.punch) change.discard = { clusters: this.rc.zeroed!, punch: this.opts.punch };
    writeOrdered(this.file, change);
  }
}

function l1Bytes(l1: BigUint64Array): Buffer {
  const b = Buffer.alloc(l1.length * 8);
  for (let i = 0; i < l1.length; i++) b.writeBigUInt64BE(l1[i]!, i * 8);
  return b;
}

function readL1Of(img: Image, sn: Snapshot): BigUint64Array {
  if (sn.l1Size === 0) return new BigUint64Array(0);
  const b = img.read(sn.l1TableOffset, sn.l1Size * 8);
  const out = new BigUint64Array(sn.l1Size);
  for (let i = 0; i < sn.l1Size; i++) out[i] = b.readBigUInt64BE(i * 8);
  return out;
}

/** How qcow2_update_snapshot_refcount fails to add a snapshot's references (see incrementFailure). */
export type SnapshotRefcountFailure = 'overflow' | 'efbig' | 'eagain';

/**
 * qcow2_snapshot_create (from qemu-img: no VM state, icount 0). Returns the new entry, or where
 * adding the snapshot's references fails (incrementFailure): then, as QEMU does, the L1 table
 * copy it had already allocated is written (a leaked cluster), and nothing else changes (QEMU
 * may have added some references, or a refcount block, before failing).
 */
export function createSnapshot(file: BlockFile, img: Image, name: string, time: SnapshotTime = wallClock(), opts: SnapshotOptions = {}): Snapshot | SnapshotRefcountFailure {
  const w = new SnapshotChange(file, img, opts);
  let idMax = 0n;
  for (const s of w.list) if (idNumber(s.id) > idMax) idMax = idNumber(s.id);
  const overflow = w.incrementFailure(w.l1);
  // The L1 copy holds the active entries as they are now (with their COPIED flags), as QEMU's does.
  const l1Offset = w.alloc(w.l1.length * 8);
  if (w.l1.length) w.addFresh(l1Offset, l1Bytes(w.l1));
  if (overflow) {
    w.commit();
    return overflow;
  }
  if (w.updateRefcounts(w.l1, 1)) w.activeL1Dirty();
  const id = String(idMax + 1n);
  const sn: Snapshot = {
    l1TableOffset: BigInt(l1Offset), l1Size: w.l1.length, id, name,
    dateSec: time.sec, dateNsec: time.nsec, vmClockNsec: 0n, vmStateSize: 0n, diskSize: img.header.size, icount: 0n,
    extraDataSize: 24, unknownExtra: new Uint8Array(0), idBytes: Buffer.from(id, 'utf8'), nameBytes: Buffer.from(name, 'utf8'),
  };
  w.writeSnapshotTable([...w.list, sn]);
  w.commit();
  return sn;
}

/** qcow2_snapshot_delete of the entry at `index`. */
export function deleteSnapshot(file: BlockFile, img: Image, index: number, opts: SnapshotOptions = {}): void {
  const w = new SnapshotChange(file, img, opts);
  const sn = w.list[index]!;
  const bad = validateSnapshotL1(sn, file.size(), w.cs);
  // qcow2_snapshot_delete's words: the snapshot's table is broken, nothing is changed.
  if (bad) throw new Qcow2Error('REFUSED', `Could not delete snapshot '${sn.name}': ${bad}`, { property: 'snapshot', offset: sn.l1TableOffset });
  w.writeSnapshotTable(w.list.filter((_, i) => i !== index));
  // Its references go, then its L1 table; the active tables' COPIED flags follow the new counts.
  w.updateRefcounts(readL1Of(img, sn), -1);
  w.freeBytes(safeOffset(sn.l1TableOffset), sn.l1Size * 8);
  if (w.updateRefcounts(w.l1, 0)) w.activeL1Dirty();
  w.commit();
}

/**
 * qcow2_snapshot_goto of the entry at `index`, once the virtual size is the snapshot's (the
 * caller resizes first, as QEMU does). The active L1 becomes the snapshot's, padded with zeros.
 */
export function applySnapshot(file: BlockFile, img: Image, index: number, opts: SnapshotOptions = {}): void {
  const w = new SnapshotChange(file, img, opts);
  const sn = w.list[index]!;
  const bad = validateSnapshotL1(sn, file.size(), w.cs);
  if (bad) {
    // qcow2_snapshot_goto reports the table's fault, then qemu-img the failure with its errno
    // (qcow2_validate_table: EFBIG for a table too large, EINVAL otherwise); nothing is changed.
    const errno = bad === 'Snapshot L1 table too large' ? 'File too large' : 'Invalid argument';
    throw new Qcow2Error('REFUSED', `${bad}\nCould not apply snapshot '${sn.name}': Failed to load snapshot: ${errno}`, { property: 'snapshot', offset: sn.l1TableOffset });
  }
  if (sn.l1Size > w.l1.length) {
    throw invalidImage(`The L1 table of snapshot '${sn.name}' (${sn.l1Size} entries) is larger than the image's (${w.l1.length}); ` +
      'resize the image to the snapshot\'s size first', sn.l1TableOffset);
  }
  const snL1 = readL1Of(img, sn);
  const next = new BigUint64Array(w.l1.length);
  next.set(snL1);
  // Everything the snapshot reaches gains a reference (and the snapshot's L1 loses COPIED flags).
  const snCopy = BigUint64Array.from(snL1);
  if (w.updateRefcounts(snCopy, 1)) w.addL1(safeOffset(sn.l1TableOffset), snCopy);
  // The old active tree loses one.
  w.updateRefcounts(w.l1, -1);
  w.l1.set(next);
  w.updateRefcounts(w.l1, 0);
  w.activeL1Dirty();
  w.commit();
}

/**
 * qcow2_write_snapshots of the table as it is (check -r all completing incomplete entries, or
 * writing `table`, the entries its repairing read kept).
 */
export function rewriteSnapshotTable(file: BlockFile, img: Image, opts: SnapshotOptions = {}, table?: Snapshot[] & { tableSize?: number }): void {
  const w = new SnapshotChange(file, img, opts, table);
  w.writeSnapshotTable(w.list);
  w.commit();
}
