// The internal snapshot table: a run of variable-length entries at snapshots_offset.
// Read for `info` (listing) and `check` (snapshot L1 tables hold references too).

import { invalidImage } from '../../model/errors';
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
/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE: the table (entries, extra data, names) is at most 64 MiB. */
export const QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS;
/** Extra data v3 requires: the 64-bit VM state size and the disk size. */
export const SNAPSHOT_EXTRA_V3 = 16;

export interface Snapshot {
  l1TableOffset: bigint;
  l1Size: number;
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
 * Decode `count` entries from `read(offset, length)`; every length is bounded by the spec's
 * limits so a hostile table cannot make us allocate without bound.
 */
export function readSnapshots(read: (offset: number, length: number) => Uint8Array, offset: number, count: number): Snapshot[] & { tableSize?: number } {
  if (count > QCOW_MAX_SNAPSHOTS) throw invalidImage('Snapshot table too large', 60);
  const out: Snapshot[] & { tableSize?: number } = [];
  let p = offset;
  for (let i = 0; i < count; i++) {
    const h = SNAPSHOT_HEADER.decode(read(p, SNAPSHOT_HEADER.size));
    if (h.extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
      throw invalidImage(`Too much extra metadata in snapshot table entry ${i}\nYou can force-remove this extra metadata with qemu-img check -r all`, p);
    }
    p += SNAPSHOT_HEADER.size;
    const extra = read(p, h.extraDataSize);
    p += h.extraDataSize;
    const idName = read(p, h.idStrSize + h.nameSize);
    p += h.idStrSize + h.nameSize;
    // qcow2_read_snapshots: the entries (unpadded, each started at 8) may not pass 64 MiB.
    if (p - offset > QCOW_MAX_SNAPSHOTS_SIZE) {
      throw invalidImage(`Snapshot table is too big\nYou can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`, 64);
    }
    p = Math.ceil(p / 8) * 8;
    const cstr = (b: Uint8Array) => { const nul = b.indexOf(0); return nul >= 0 ? b.subarray(0, nul) : b; };
    const idBytes = cstr(idName.subarray(0, h.idStrSize)).slice();
    const nameBytes = cstr(idName.subarray(h.idStrSize)).slice();
    const s: Snapshot = {
      l1TableOffset: h.l1TableOffset,
      l1Size: h.l1Size,
      id: Buffer.from(idName.subarray(0, h.idStrSize)).toString('utf8'),
      name: Buffer.from(idName.subarray(h.idStrSize)).toString('utf8'),
      dateSec: h.dateSec,
      dateNsec: h.dateNsec,
      vmClockNsec: h.vmClockNsec,
      vmStateSize: BigInt(h.vmStateSize),
      extraDataSize: h.extraDataSize,
      unknownExtra: extra.subarray(Math.min(extra.length, SNAPSHOT_EXTRA.size)).slice(),
      idBytes,
      nameBytes,
    };
    const padded = new Uint8Array(SNAPSHOT_EXTRA.size);
    padded.set(extra.subarray(0, Math.min(extra.length, SNAPSHOT_EXTRA.size)));
    const x = SNAPSHOT_EXTRA.decode(padded);
    if (h.extraDataSize >= 8) s.vmStateSize = x.vmStateSizeLarge;
    if (h.extraDataSize >= 16) s.diskSize = x.diskSize;
    if (h.extraDataSize >= 24) s.icount = x.icount;
    out.push(s);
  }
  out.tableSize = p - offset;
  return out;
}

/**
 * The table as QEMU's qcow2_write_snapshots writes it: every entry in the v3 form, with at
 * least the 24 bytes of known extra data (VM state size, disk size `diskSize` when the entry
 * had none, icount -1 when unknown), unknown extra data kept after them.
 */
export function encodeSnapshots(snaps: readonly Snapshot[], diskSize: bigint): Uint8Array {
  let size = 0;
  for (const s of snaps) {
    size = Math.ceil(size / 8) * 8;
    size += SNAPSHOT_HEADER.size + SNAPSHOT_EXTRA.size + s.unknownExtra.length + s.idBytes.length + s.nameBytes.length;
  }
  const out = new Uint8Array(size);
  let p = 0;
  for (const s of snaps) {
    p = Math.ceil(p / 8) * 8;
    const extraSize = SNAPSHOT_EXTRA.size + s.unknownExtra.length;
    SNAPSHOT_HEADER.encode({
      l1TableOffset: s.l1TableOffset, l1Size: s.l1Size, idStrSize: s.idBytes.length, nameSize: s.nameBytes.length,
      dateSec: s.dateSec, dateNsec: s.dateNsec, vmClockNsec: s.vmClockNsec,
      // Past 32 bits an old reader should see a disk-only snapshot, not a truncated state.
      vmStateSize: s.vmStateSize <= 0xffffffffn ? Number(s.vmStateSize) : 0, extraDataSize: extraSize,
    }, out, p);
    p += SNAPSHOT_HEADER.size;
    SNAPSHOT_EXTRA.encode({ vmStateSizeLarge: s.vmStateSize, diskSize: s.diskSize ?? diskSize, icount: s.icount ?? (1n << 64n) - 1n }, out, p);
    p += SNAPSHOT_EXTRA.size;
    out.set(s.unknownExtra, p);
    p += s.unknownExtra.length;
    out.set(s.idBytes, p);
    p += s.idBytes.length;
    out.set(s.nameBytes, p);
    p += s.nameBytes.length;
  }
  return out;
}
