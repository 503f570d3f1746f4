// The persistent dirty bitmap directory (bitmaps extension): read for `info`, which lists
// each bitmap's name, granularity and flags as qemu-img does.

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

export interface BitmapInfo { name: string; granularity: number; flags: Array<'in-use' | 'auto'> }

/** A directory entry with where its table is (check needs the table; info needs the rest). */
export interface BitmapEntry extends BitmapInfo { tableOffset: bigint; tableSize: number }

const BME_MAX_TABLE_SIZE = 0x8000000;
const BME_MIN_GRANULARITY_BITS = 9;
const BME_MAX_GRANULARITY_BITS = 31;
const BME_MAX_NAME_SIZE = 1023;
const BME_RESERVED_FLAGS = ~(BME_FLAG_IN_USE | BME_FLAG_AUTO) >>> 0;
const BT_DIRTY_TRACKING_BITMAP = 1;

/**
 * Decode and validate the bitmap directory (its size is bounded by the header validation).
 * Every entry is checked as QEMU's check_dir_entry does before anything it points at is used,
 * so a forged entry cannot make a reader allocate or read without bound.
 */
export function decodeBitmapDirectory(dir: Uint8Array, nbBitmaps: number, dirOffset: number, clusterSize: number, virtualSize: bigint): BitmapEntry[] {
  const out: BitmapEntry[] = [];
  let p = 0;
  for (let i = 0; i < nbBitmaps; i++) {
    if (p + BITMAP_DIR_ENTRY.size > dir.length) throw invalidImage('Bitmap directory is truncated', dirOffset + p);
    const e = BITMAP_DIR_ENTRY.decode(dir, p);
    const nameStart = p + BITMAP_DIR_ENTRY.size + e.extraDataSize;
    if (nameStart + e.nameSize > dir.length) throw invalidImage('Bitmap directory is truncated', dirOffset + p);
    const name = Buffer.from(dir.subarray(nameStart, nameStart + Math.min(e.nameSize, BME_MAX_NAME_SIZE))).toString('utf8');
    const physBytes = BigInt(e.bitmapTableSize) * BigInt(clusterSize);
    const bitsNeeded = e.granularityBits < 64 ? (virtualSize + (1n << BigInt(e.granularityBits)) - 1n) >> BigInt(e.granularityBits) : 0n;
    const bytesNeeded = (bitsNeeded + 7n) / 8n;
    const fail = e.bitmapTableSize === 0 || e.bitmapTableOffset === 0n || e.bitmapTableOffset % BigInt(clusterSize) !== 0n ||
      e.bitmapTableSize > BME_MAX_TABLE_SIZE || e.granularityBits > BME_MAX_GRANULARITY_BITS ||
      e.granularityBits < BME_MIN_GRANULARITY_BITS || (e.flags & BME_RESERVED_FLAGS) !== 0 ||
      e.nameSize > BME_MAX_NAME_SIZE || e.type !== BT_DIRTY_TRACKING_BITMAP ||
      physBytes > ((bytesNeeded + BigInt(clusterSize) - 1n) / BigInt(clusterSize)) * BigInt(clusterSize) ||
      ((e.flags & BME_FLAG_IN_USE) === 0 && virtualSize > (physBytes * 8n) << BigInt(e.granularityBits));
    if (fail) throw invalidImage(`Bitmap '${name}' doesn't satisfy the constraints`, dirOffset + p);
    const flags: BitmapInfo['flags'] = [];
    if (e.flags & BME_FLAG_IN_USE) flags.push('in-use');
    if (e.flags & BME_FLAG_AUTO) flags.push('auto');
    out.push({ name, granularity: 2 ** e.granularityBits, flags, tableOffset: e.bitmapTableOffset, tableSize: e.bitmapTableSize });
    p = Math.ceil((nameStart + e.nameSize) / 8) * 8;
  }
  return out;
}
