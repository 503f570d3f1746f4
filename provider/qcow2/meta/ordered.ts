// Writing a metadata change so that a crash at any point leaves a consistent image (at worst
// with leaked clusters): the executor for operations that change references and refcounts
// together (internal snapshots, check -r, commit's emptying). The planner computes the final
// state in memory, with QEMU's allocator and immediate frees (so the bytes match QEMU's); this
// writes it in phases, with a flush (barrier) between phases that have anything to write:
//
//   1. fresh clusters: content nothing references yet (a snapshot's L1 copy, a new snapshot
//      table, new L2 tables);
//   2. refcount blocks raised: each entry at max(old, final), so that every reference, old or
//      new, is counted; new blocks as they end; then the refcount table entries that point at
//      new blocks (a moved table is written whole and published by its header fields);
//   3. the reference holders as they end (L1 and L2 tables, header fields), except that an
//      entry gaining OFLAG_COPIED gets it only in phase 5: COPIED promises refcount 1;
//   4. refcount blocks as they end (the decrements, now that the references are gone); then
//      clusters freed with a discard are punched (QEMU discards freed snapshot clusters and
//      repaired leaks), now that nothing on disk counts them;
//   5. the COPIED flags withheld in phase 3;
//   6. the whole header, when it changes (dirty and corrupt bits cleared last).
//
// Tables whose cluster ends with refcount 0 are not written (QEMU drops them from its cache).
//
// A crash between phases can leave OFLAG_COPIED out of step with a refcount, as QEMU's own
// order (refcount blocks before L2 tables) does: the flag on a cluster whose extra reference is
// not yet published (between 2 and 3: writing in place is still right), or the flag missing on a
// cluster back at refcount 1 (between 4 and 5: the next write copies needlessly). qemu-img check
// counts these as corruptions; `check -r all` sets the flags right. Data is never at risk.

import { BlockFile } from '../io/blockfile';
import * as C from '../spec/constants';
import { HEADER_V2 } from '../spec/header';
import { readRefcount, writeRefcount } from '../spec/refcount';
import { TableRefcounts } from './refcount';

/** A table of u64 entries whose bit 63 is OFLAG_COPIED (L1, L2; extended L2: `step` 16). */
export interface ReferenceTable {
  offset: number;
  data: Uint8Array;
  /** Bytes per entry: 8, or 16 for extended L2 tables (COPIED in the first u64). */
  step: number;
}

export interface OrderedChange {
  /**
   * Clusters nothing references before this change (their old bytes are not looked at). Their
   * stored refcounts must be 0 (checked before anything is written), unless `freshByReferences`.
   */
  fresh?: Array<{ offset: number; data: Uint8Array }>;
  /**
   * The fresh clusters are free by the references counted, not by the stored refcounts (a
   * rebuild of the refcount structure, which writes where leaked clusters are).
   */
  freshByReferences?: boolean;
  /** The refcounts as they end: dirty blocks in its cache, its table. */
  refcounts?: TableRefcounts;
  /** L1 and L2 tables as they end, written in place. */
  tables?: ReferenceTable[];
  /** Header fields as they end (byte offset in cluster 0, bytes). */
  headerFields?: Array<{ offset: number; data: Uint8Array }>;
  /** Cluster 0 as it ends, written last. */
  header?: Uint8Array;
  /** Grow the file to at least this size first (a refcount block placed past its end). */
  minFileSize?: number;
  /**
   * Punch these clusters (their indexes) once their refcount 0 is on disk; clusters that end
   * with a refcount again are left alone.
   */
  discard?: { clusters: readonly number[]; punch(offset: number, length: number): void };
}

const COPIED_BYTE = 0x80;

/** Refblock offsets the on-disk refcount table points at (read from the header on disk). */
function refblocksOnDisk(file: BlockFile, clusterSize: number): Set<number> {
  const h = file.read(0, HEADER_V2.size);
  const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const off = Number(dv.getBigUint64(HEADER_V2.offsets.refcountTableOffset!));
  const clusters = dv.getUint32(HEADER_V2.offsets.refcountTableClusters!);
  const t = file.read(off, clusters * clusterSize);
  const tv = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const out = new Set<number>();
  for (let i = 0; i < t.length; i += 8) {
    const e = tv.getBigUint64(i) & C.REFT_OFFSET_MASK;
    if (e !== 0n) out.add(Number(e));
  }
  return out;
}

/** The refcount of a cluster as the file holds it now (the blocks the on-disk table points at). */
function storedRefcountsOnDisk(file: BlockFile, rc: TableRefcounts): (ci: number) => number {
  const h = file.read(0, HEADER_V2.size);
  const dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const off = Number(dv.getBigUint64(HEADER_V2.offsets.refcountTableOffset!));
  const entries = (dv.getUint32(HEADER_V2.offsets.refcountTableClusters!) * rc.cs) / 8;
  const E = rc.g.refblockEntries;
  return (ci) => {
    const ti = Math.floor(ci / E);
    if (ti >= entries) return 0;
    const e = file.read(off + ti * 8, 8).readBigUInt64BE(0) & C.REFT_OFFSET_MASK;
    if (e === 0n) return 0;
    return readRefcount(file.read(Number(e), rc.cs), rc.g.refcountOrder, ci % E);
  };
}

/** Write `change` in the order stated at the top of this file. */
export function writeOrdered(file: BlockFile, change: OrderedChange): void {
  let pending = false;
  const write = (offset: number, data: Uint8Array) => {
    file.write(offset, data);
    pending = true;
  };
  const barrier = () => {
    if (pending) file.flush();
    pending = false;
  };
  const rc = change.refcounts;
  // Decided before anything is written: the refcounts read from here on are the final ones.
  const tables = (change.tables ?? []).filter((t) => rc === undefined || rc.get(Math.floor(t.offset / rc.cs)) !== 0);
  const discardable = rc === undefined ? [] : (change.discard?.clusters ?? []).filter((ci) => rc.get(ci) === 0);
  if (rc && !change.freshByReferences) {
    // A cluster freed and reallocated within one change would be overwritten while the old
    // tables on disk still point at it: planners defer frees where they allocate after them.
    const onDisk = storedRefcountsOnDisk(file, rc);
    for (const f of change.fresh ?? []) {
      for (let ci = Math.floor(f.offset / rc.cs); ci * rc.cs < f.offset + f.data.length; ci++) {
        if (onDisk(ci) !== 0) throw new Error(`internal: cluster ${ci} is written as new but is still in use on disk`);
      }
    }
  }
  if (change.minFileSize !== undefined && file.size() < change.minFileSize) {
    file.truncate(change.minFileSize);
    pending = true;
  }
  // 1. fresh clusters
  for (const f of change.fresh ?? []) write(f.offset, f.data);
  barrier();

  // 2. refcounts raised
  const finalBlocks: Array<{ offset: number; data: Uint8Array; raised: Uint8Array }> = [];
  if (rc) {
    const cs = rc.cs;
    const order = rc.g.refcountOrder;
    const onDisk = refblocksOnDisk(file, cs);
    for (const off of rc.blocks.dirtyOffsets()) {
      const data = Buffer.from(rc.blocks.get(off).buf);
      if (!onDisk.has(off)) {
        write(off, data); // a new block: nothing reads it before the table points at it
        continue;
      }
      const old = file.read(off, cs);
      const raised = Buffer.from(data);
      for (let k = 0; k < rc.g.refblockEntries; k++) {
        const o = readRefcount(old, order, k);
        if (o > readRefcount(data, order, k)) writeRefcount(raised, order, k, o);
      }
      if (!raised.equals(old)) write(off, raised);
      finalBlocks.push({ offset: off, data, raised });
    }
    rc.blocks.writeBack(() => undefined); // the cache is clean: what it holds is written here
    barrier();
    if (rc.reftableMoved) {
      write(rc.reftableOffset, rc.reftableBytes());
      barrier();
      const f = new Uint8Array(12);
      const dv = new DataView(f.buffer);
      dv.setBigUint64(0, BigInt(rc.reftableOffset));
      dv.setUint32(8, Math.ceil((rc.reftable.length * 8) / cs));
      write(HEADER_V2.offsets.refcountTableOffset!, f);
    } else {
      for (const ti of [...rc.reftableDirty].sort((a, b) => a - b)) {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(rc.reftable[ti]!);
        write(rc.reftableOffset + ti * 8, b);
      }
    }
    rc.markWritten();
    barrier();
  }

  // 3. references, COPIED additions withheld
  const withheld: ReferenceTable[] = [];
  for (const t of tables) {
    const old = file.read(t.offset, t.data.length);
    const first = Buffer.from(t.data);
    const ov = new DataView(old.buffer, old.byteOffset, old.byteLength);
    const fv = new DataView(first.buffer, first.byteOffset, first.byteLength);
    let held = false;
    for (let i = 0; i < first.length; i += t.step) {
      if ((first[i]! & COPIED_BYTE) === 0) continue;
      if (ov.getInt32(i) === fv.getInt32(i) && ov.getInt32(i + 4) === fv.getInt32(i + 4)) continue;
      first[i] = first[i]! & ~COPIED_BYTE;
      held = true;
    }
    if (!first.equals(old)) write(t.offset, first);
    if (held) withheld.push(t);
  }
  for (const f of change.headerFields ?? []) write(f.offset, f.data);
  barrier();

  // 4. refcounts as they end, then the discards
  for (const b of finalBlocks) if (!Buffer.from(b.data).equals(b.raised)) write(b.offset, b.data);
  barrier();
  if (change.discard && rc) {
    const cs = rc.cs;
    const runs = [...new Set(discardable)].sort((a, b) => a - b);
    for (let i = 0; i < runs.length;) {
      let j = i + 1;
      while (j < runs.length && runs[j] === runs[j - 1]! + 1) j++;
      change.discard.punch(runs[i]! * cs, (j - i) * cs);
      pending = true;
      i = j;
    }
    barrier();
  }

  // 5. COPIED flags
  for (const t of withheld) write(t.offset, t.data);
  barrier();

  // 6. header
  if (change.header) {
    write(0, change.header);
    barrier();
  }
}
