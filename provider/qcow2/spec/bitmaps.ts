// Persistent dirty bitmaps (bitmaps extension, qcow2 spec "Bitmaps"): the directory entry and
// the bitmap table entry, decoded and validated as QEMU's qcow2-bitmap.c does (check_dir_entry,
// check_table_entry), encoded as QEMU's bitmap_list_store writes them, and the sizes QEMU
// derives (table size, bytes one bitmap cluster covers, entry size).

import {
  BME_MAX_GRANULARITY_BITS, BME_MAX_NAME_SIZE, BME_MAX_PHYS_SIZE, BME_MAX_TABLE_SIZE, BME_MIN_GRANULARITY_BITS, bitmapBits, dirEntrySize, nameBytes,
} from '../../model/bitmaps';
import { invalidImage } from '../../model/errors';
import { defineStruct } from './struct';

export const BITMAP_DIR_ENTRY = defineStruct([
  ['u64', 'bitmapTableOffset'],
  ['u32', 'bitmapTableSize'],
  ['u32', 'flags'],
  ['u8', 'type'],
  ['u8', 'granularityBits'],
  ['u16', 'nameSize'],
  ['u32', 'extraDataSize'],
] as const);

export const BME_FLAG_IN_USE = 1 << 0;
export const BME_FLAG_AUTO = 1 << 1;
const BME_RESERVED_FLAGS = ~(BME_FLAG_IN_USE | BME_FLAG_AUTO) >>> 0;

export const BT_DIRTY_TRACKING_BITMAP = 1;

/** Bitmap table entries: bits 9..55 a data cluster's offset; bit 0 "all ones" when no offset. */
export const BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001fen;
export const BME_TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00n;
export const BME_TABLE_ENTRY_FLAG_ALL_ONES = 1n;

export { bitmapBits, dirEntrySize };

export type BitmapFlag = 'in-use' | 'auto';

export interface BitmapInfo { name: string; granularity: number; flags: BitmapFlag[] }

/** A directory entry with where its table is (check and the bitmap operations need the table). */
export interface BitmapEntry extends BitmapInfo {
  tableOffset: bigint;
  tableSize: number;
  /** The stored flags word (in-use, auto). */
  rawFlags: number;
  granularityBits: number;
}

/**
 * Entries of a bitmap's table: one per cluster of bitmap data (QEMU: the serialization size in
 * 64-bit words, as bytes, rounded up to clusters).
 */
export function bitmapTableSize(size: bigint, granularityBits: number, clusterSize: number): number {
  const words = Math.ceil(bitmapBits(size, granularityBits) / 64);
  return Math.ceil((words * 8) / clusterSize);
}

/** check_table_entry: reserved bits clear, an offset cluster aligned and without the all-ones bit. */
export function tableEntryValid(entry: bigint, clusterSize: number): boolean {
  if ((entry & BME_TABLE_ENTRY_RESERVED_MASK) !== 0n) return false;
  const off = entry & BME_TABLE_ENTRY_OFFSET_MASK;
  if (off === 0n) return true;
  return (entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) === 0n && off % BigInt(clusterSize) === 0n;
}

function flagsOf(raw: number): BitmapFlag[] {
  const flags: BitmapFlag[] = [];
  if (raw & BME_FLAG_IN_USE) flags.push('in-use');
  if (raw & BME_FLAG_AUTO) flags.push('auto');
  return flags;
}

/** check_dir_entry (the virtual size is QEMU's bdrv_getlength). */
function entryValid(e: { bitmapTableOffset: bigint; bitmapTableSize: number; flags: number; type: number; granularityBits: number; nameSize: number },
  clusterSize: number, virtualSize: bigint): boolean {
  if (e.bitmapTableSize === 0 || e.bitmapTableOffset === 0n || e.bitmapTableOffset % BigInt(clusterSize) !== 0n ||
    e.bitmapTableSize > BME_MAX_TABLE_SIZE || e.granularityBits > BME_MAX_GRANULARITY_BITS ||
    e.granularityBits < BME_MIN_GRANULARITY_BITS || (e.flags & BME_RESERVED_FLAGS) !== 0 ||
    e.nameSize > BME_MAX_NAME_SIZE || e.type !== BT_DIRTY_TRACKING_BITMAP) return false;
  const phys = BigInt(e.bitmapTableSize) * BigInt(clusterSize);
  if (phys > BigInt(BME_MAX_PHYS_SIZE)) return false;
  // A bitmap that is not in use must cover the disk (an in-use one may be stale from a resize).
  return (e.flags & BME_FLAG_IN_USE) !== 0 || virtualSize <= (phys * 8n) << BigInt(e.granularityBits);
}

/**
 * Decode and validate the bitmap directory as QEMU's bitmap_list_load does (its size is bounded
 * by the header validation). Every entry is checked before anything it points at is used, so a
 * forged entry cannot make a reader allocate or read without bound. `strict` refuses extra data
 * as QEMU does when it loads bitmaps; info lists such entries.
 */
export function decodeBitmapDirectory(dir: Uint8Array, nbBitmaps: number, dirOffset: number, clusterSize: number, virtualSize: bigint,
  opts: { strict?: boolean } = {}): BitmapEntry[] {
  const out: BitmapEntry[] = [];
  let p = 0;
  const broken = () => invalidImage('Broken bitmap directory', dirOffset + p);
  while (p < dir.length) {
    if (p + BITMAP_DIR_ENTRY.size > dir.length) throw broken();
    if (out.length >= nbBitmaps) throw invalidImage('More bitmaps found than specified in header extension', dirOffset + p);
    const e = BITMAP_DIR_ENTRY.decode(dir, p);
    const next = p + dirEntrySize(e.nameSize, e.extraDataSize);
    if (next > dir.length) throw broken();
    if (opts.strict && e.extraDataSize !== 0) throw invalidImage('Bitmap extra data is not supported', dirOffset + p);
    const nameStart = p + BITMAP_DIR_ENTRY.size + e.extraDataSize;
    const name = Buffer.from(dir.subarray(nameStart, nameStart + e.nameSize)).toString('utf8');
    if (!entryValid(e, clusterSize, virtualSize)) throw invalidImage(`Bitmap '${name}' doesn't satisfy the constraints`, dirOffset + p);
    out.push({
      name, granularity: 2 ** e.granularityBits, flags: flagsOf(e.flags), tableOffset: e.bitmapTableOffset,
      tableSize: e.bitmapTableSize, rawFlags: e.flags, granularityBits: e.granularityBits,
    });
    p = next;
  }
  if (out.length !== nbBitmaps) throw invalidImage('Less bitmaps found than specified in header extension', dirOffset + p);
  return out;
}

/** What bitmap_list_store writes for one bitmap. */
export interface DirEntryFields {
  name: string;
  tableOffset: bigint;
  tableSize: number;
  rawFlags: number;
  granularityBits: number;
}

/** The directory bytes QEMU's bitmap_list_store writes (entries in order, no extra data). */
export function encodeBitmapDirectory(entries: readonly DirEntryFields[]): Uint8Array {
  const size = entries.reduce((n, e) => n + dirEntrySize(nameBytes(e.name)), 0);
  const dir = new Uint8Array(size);
  let p = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    BITMAP_DIR_ENTRY.encode({
      bitmapTableOffset: e.tableOffset, bitmapTableSize: e.tableSize, flags: e.rawFlags, type: BT_DIRTY_TRACKING_BITMAP,
      granularityBits: e.granularityBits, nameSize: name.length, extraDataSize: 0,
    }, dir, p);
    dir.set(name, p + BITMAP_DIR_ENTRY.size);
    p += dirEntrySize(name.length);
  }
  return dir;
}
