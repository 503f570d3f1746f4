// The persistent dirty bitmap directory (bitmaps extension): read for `info`, which lists
// each bitmap's name, granularity and flags as qemu-img does.

import { invalidImage } from './errors';
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

/** Decode the bitmap directory (its size is bounded by the header validation: <= 64 MiB). */
export function decodeBitmapDirectory(dir: Uint8Array, nbBitmaps: number, dirOffset: number): BitmapInfo[] {
  const out: BitmapInfo[] = [];
  let p = 0;
  for (let i = 0; i < nbBitmaps; i++) {
    if (p + BITMAP_DIR_ENTRY.size > dir.length) throw invalidImage('Bitmap directory is truncated', dirOffset + p);
    const e = BITMAP_DIR_ENTRY.decode(dir, p);
    const nameStart = p + BITMAP_DIR_ENTRY.size + e.extraDataSize;
    if (nameStart + e.nameSize > dir.length) throw invalidImage('Bitmap directory is truncated', dirOffset + p);
    if (e.granularityBits > 63) throw invalidImage('Bitmap granularity is invalid', dirOffset + p + BITMAP_DIR_ENTRY.offsets.granularityBits!);
    const flags: BitmapInfo['flags'] = [];
    if (e.flags & BME_FLAG_IN_USE) flags.push('in-use');
    if (e.flags & BME_FLAG_AUTO) flags.push('auto');
    out.push({ name: Buffer.from(dir.subarray(nameStart, nameStart + e.nameSize)).toString('utf8'), granularity: 2 ** e.granularityBits, flags });
    p = Math.ceil((nameStart + e.nameSize) / 8) * 8;
  }
  return out;
}
