// The internal snapshot table: a run of variable-length entries at snapshots_offset, each
// starting at a multiple of 8. Read for `info` (listing) and `check` (snapshot L1 tables hold
// references too); written whole by the snapshot operations, as QEMU's qcow2_write_snapshots
// writes it: at least the three known extra data fields, unknown extra data kept.

import { invalidImage } from '../../model/errors';
import * as C from './constants';
import { defineStruct } from './struct';

export const SNAPSHOT_HEADER = defineStruct([
  ['u64', 'l1TableOffset'],
  ['u32', 'l1Size'],
  ['u16', 'idStrSize'],
  ['u16', 'nameSize'],
  ['u32', 'dateSec'],
  ['u32', 'dateNsec'],
  ['u64', 'vmClockNsec'],
  ['u32', 'vmStateSize'],
  ['u32', 'extraDataSize'],
] as const);

/** Extra data fields, each present only if extra_data_size covers it. */
export const SNAPSHOT_EXTRA = defineStruct([
  ['u64', 'vmStateSizeLarge'],
  ['u64', 'diskSize'],
  ['u64', 'icount'],
] as const);

export const QCOW_MAX_SNAPSHOTS = 65536;
/** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA */
export const QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** An unknown icount (QEMU: -1ULL). */
export const ICOUNT_UNKNOWN = 0xffffffffffffffffn;
/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE: the table (entries, extra data, names) is at most 64 MiB. */
export const QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS;
/** Extra data v3 requires: the 64-bit VM state size and the disk size. */
export const SNAPSHOT_EXTRA_V3 = 16;

export interface Snapshot {
  l1TableOffset: bigint;
  l1Size: number;
  /** The ID and name for display and lookups (decoded as UTF-8; the bytes below are what is stored). */
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  diskSize?: bigint;
  /** -1 (all ones) means unknown. */
  icount?: bigint;
  /** extra_data_size as stored. */
  extraDataSize: number;
  /** Extra data past the fields this engine knows (kept verbatim when the table is rewritten). */
  unknownExtra: Uint8Array;
  /** The ID and name as stored (C strings: up to the first NUL). */
  idBytes: Uint8Array;
  nameBytes: Uint8Array;
}

/**
 * What check -r all's reading of a damaged table discards (qcow2_do_read_snapshots with repair):
 * extra data past 1 KiB is cut to 1 KiB, and the entries from the one that takes the table past
 * 64 MiB on are dropped. The lines QEMU prints for them, in order.
 */
export interface SnapshotTableRepair {
  messages: string[];
  /** Entries whose extra data was cut. */
  extraDropped: number;
  /** Entries dropped from the end of the table. */
  reduced: number;
}

/**
 * Decode `count` entries from `read(offset, length)`; every length is bounded by the spec's
 * limits so a hostile table cannot make us allocate without bound. With `repair`, what QEMU's
 * check -r all discards is discarded and counted there instead of refused.
 */
export function readSnapshots(read: (offset: number, length: number) => Uint8Array, offset: number, count: number,
  repair?: SnapshotTableRepair): Snapshot[] & { tableSize?: number } {
  if (count > QCOW_MAX_SNAPSHOTS) throw invalidImage('Snapshot table too large', 60);
  const out: Snapshot[] & { tableSize?: number } = [];
  let p = offset, end = offset, tableLength = 0;
  for (let i = 0; i < count; i++) {
    const before = p;
    p = Math.ceil(p / 8) * 8;
    tableLength = Math.ceil(tableLength / 8) * 8;
    const h = SNAPSHOT_HEADER.decode(read(p, SNAPSHOT_HEADER.size));
    let kept = h.extraDataSize;
    if (h.extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
      if (!repair) throw invalidImage(`Too much extra metadata in snapshot table entry ${i}\nYou can force-remove this extra metadata with qemu-img check -r all`, p);
      repair.messages.push(`Discarding too much extra metadata in snapshot table entry ${i} (${h.extraDataSize} > ${QCOW_MAX_SNAPSHOT_EXTRA_DATA})`);
      repair.extraDropped++;
      kept = QCOW_MAX_SNAPSHOT_EXTRA_DATA;
    }
    p += SNAPSHOT_HEADER.size;
    const extra = read(p, kept);
    p += h.extraDataSize;
    const idName = read(p, h.idStrSize + h.nameSize);
    p += h.idStrSize + h.nameSize;
    // qcow2_read_snapshots: the entries (each started at 8, extra data as kept) may not pass 64 MiB.
    tableLength += SNAPSHOT_HEADER.size + kept + h.idStrSize + h.nameSize;
    if (tableLength > QCOW_MAX_SNAPSHOTS_SIZE || p - offset > 0x7fffffff) {
      if (!repair) throw invalidImage(`Snapshot table is too big\nYou can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`, 64);
      repair.messages.push(`Discarding ${count - i} overhanging snapshots (snapshot table is too big)`);
      repair.reduced += count - i;
      end = before;
      break;
    }
    end = p;
    const cstr = (b: Uint8Array) => { const nul = b.indexOf(0); return nul >= 0 ? b.subarray(0, nul) : b; };
    const idBytes = cstr(idName.subarray(0, h.idStrSize)).slice();
    const nameBytes = cstr(idName.subarray(h.idStrSize)).slice();
    const s: Snapshot = {
      l1TableOffset: h.l1TableOffset,
      l1Size: h.l1Size,
      // QEMU reads them as C strings: a NUL ends them.
      id: Buffer.from(idBytes).toString('utf8'),
      name: Buffer.from(nameBytes).toString('utf8'),
      dateSec: h.dateSec,
      dateNsec: h.dateNsec,
      vmClockNsec: h.vmClockNsec,
      vmStateSize: BigInt(h.vmStateSize),
      extraDataSize: kept,
      unknownExtra: extra.subarray(Math.min(extra.length, SNAPSHOT_EXTRA.size)).slice(),
      idBytes,
      nameBytes,
    };
    const padded = new Uint8Array(SNAPSHOT_EXTRA.size);
    padded.set(extra.subarray(0, Math.min(extra.length, SNAPSHOT_EXTRA.size)));
    const x = SNAPSHOT_EXTRA.decode(padded);
    if (kept >= 8) s.vmStateSize = x.vmStateSizeLarge;
    if (kept >= 16) s.diskSize = x.diskSize;
    if (kept >= 24) s.icount = x.icount;
    out.push(s);
  }
  // QEMU's snapshots_size: up to the end of the last entry's name (no padding after it).
  out.tableSize = end - offset;
  return out;
}

/** Bytes of one entry as written: the header, at least the known extra data, id, name. */
function entrySize(s: Snapshot): number {
  return SNAPSHOT_HEADER.size + SNAPSHOT_EXTRA.size + s.unknownExtra.length + s.idBytes.length + s.nameBytes.length;
}

/** qcow2_write_snapshots' size: every entry from a multiple of 8, no padding after the last. */
export function snapshotTableSize(list: readonly Snapshot[]): number {
  let size = 0;
  for (const s of list) size = Math.ceil(size / 8) * 8 + entrySize(s);
  return size;
}

/**
 * The table as QEMU's qcow2_write_snapshots writes it: every entry in the v3 form, with at
 * least the 24 bytes of known extra data (VM state size, disk size `virtualSize` when the entry
 * had none, icount -1 when unknown), unknown extra data kept after them; the 32-bit VM state
 * size 0 when the size does not fit (an old reader sees a disk-only snapshot, not a truncated state).
 */
export function encodeSnapshots(list: readonly Snapshot[], virtualSize: bigint): Uint8Array {
  const out = new Uint8Array(snapshotTableSize(list));
  let p = 0;
  for (const s of list) {
    p = Math.ceil(p / 8) * 8;
    // The id and name as stored: an untrusted or non-UTF-8 name survives a rewrite byte for byte.
    const id = s.idBytes, name = s.nameBytes, unknown = s.unknownExtra;
    if (id.length > 0xffff || name.length > 0xffff) throw invalidImage(`Snapshot name too long: '${s.name}'`, p);
    const extraSize = SNAPSHOT_EXTRA.size + unknown.length;
    SNAPSHOT_HEADER.encode({
      l1TableOffset: s.l1TableOffset,
      l1Size: s.l1Size,
      idStrSize: id.length,
      nameSize: name.length,
      dateSec: s.dateSec,
      dateNsec: s.dateNsec,
      vmClockNsec: s.vmClockNsec,
      vmStateSize: s.vmStateSize <= 0xffffffffn ? Number(s.vmStateSize) : 0,
      extraDataSize: extraSize,
    }, out, p);
    p += SNAPSHOT_HEADER.size;
    SNAPSHOT_EXTRA.encode({ vmStateSizeLarge: s.vmStateSize, diskSize: s.diskSize ?? virtualSize, icount: s.icount ?? ICOUNT_UNKNOWN }, out, p);
    p += SNAPSHOT_EXTRA.size;
    out.set(unknown, p);
    p += unknown.length;
    out.set(id, p);
    p += id.length;
    out.set(name, p);
    p += name.length;
  }
  return out;
}

/**
 * An internal snapshot to read (`convert -l`): by id or else name (`-l NAME`), or by id and/or
 * name, each given one having to match (`-l snapshot.id=ID,snapshot.name=NAME`).
 */
export type SnapshotSelector = { idOrName: string } | { id?: string; name?: string };

/**
 * QEMU's lookups: find_snapshot_by_id_or_name (the id first, then the name) and
 * find_snapshot_by_id_and_name. The index, or -1.
 */
export function findSnapshot(list: readonly Snapshot[], sel: SnapshotSelector): number {
  // QEMU compares C strings: the user's words, as bytes, against the bytes stored.
  const is = (stored: Uint8Array, asked: string) => Buffer.from(asked, 'utf8').equals(stored);
  if ('idOrName' in sel) {
    const byId = list.findIndex((s) => is(s.idBytes, sel.idOrName));
    return byId >= 0 ? byId : list.findIndex((s) => is(s.nameBytes, sel.idOrName));
  }
  const { id, name } = sel;
  if (id === undefined && name === undefined) return -1;
  return list.findIndex((s) => (id === undefined || is(s.idBytes, id)) && (name === undefined || is(s.nameBytes, name)));
}

/** qcow2_validate_table for a snapshot's L1 table (the messages qemu-img prints). */
export function validateSnapshotL1(sn: Snapshot, fileSize: number, clusterSize: number): string | undefined {
  if (BigInt(sn.l1Size) > BigInt(C.QCOW_MAX_L1_SIZE / 8)) return 'Snapshot L1 table too large';
  const size = BigInt(sn.l1Size) * 8n;
  if (sn.l1TableOffset > BigInt(Number.MAX_SAFE_INTEGER) - size || sn.l1TableOffset + size > BigInt(fileSize) ||
    sn.l1TableOffset % BigInt(clusterSize) !== 0n) {
    return 'Snapshot L1 table offset invalid';
  }
  return undefined;
}
