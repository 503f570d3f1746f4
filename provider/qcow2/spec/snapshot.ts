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
    if (h.extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) throw invalidImage('Too much extra metadata in snapshot table entry', p);
    p += SNAPSHOT_HEADER.size;
    const extra = read(p, h.extraDataSize);
    p += h.extraDataSize;
    const idName = read(p, h.idStrSize + h.nameSize);
    p += h.idStrSize + h.nameSize;
    p = Math.ceil(p / 8) * 8;
    const s: Snapshot = {
      l1TableOffset: h.l1TableOffset,
      l1Size: h.l1Size,
      id: Buffer.from(idName.subarray(0, h.idStrSize)).toString('utf8'),
      name: Buffer.from(idName.subarray(h.idStrSize)).toString('utf8'),
      dateSec: h.dateSec,
      dateNsec: h.dateNsec,
      vmClockNsec: h.vmClockNsec,
      vmStateSize: BigInt(h.vmStateSize),
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
