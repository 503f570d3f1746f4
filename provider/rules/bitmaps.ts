// Bitmap legality: every refusal `qemu-img bitmap` 7.2 makes (QEMU's block-dirty-bitmap-* checks
// and qcow2's can_store_new_dirty_bitmap), in its order and words, decided on a simulation of the
// actions before any of them is carried out; and what operations around bitmaps refuse (a resize
// or a copy of an inconsistent bitmap, a downgrade of an image that has bitmaps).

import {
  BitmapAction, MAX_BITMAP_DIRECTORY_SIZE, MAX_BITMAPS, bitmapConstraintError, defaultBitmapGranularity, dirEntrySize, nameBytes,
} from '../model/bitmaps';
import type { Compat } from '../model/options';
import type { Refusal } from './types';

export type { BitmapAction };

/** A bitmap as the rules see it (from the image's directory, or from QEMU over QMP). */
export interface BitmapState {
  name: string;
  granularity: number;
  /** Recording writes (the `auto` flag). */
  enabled: boolean;
  /** `in-use` in an image nobody holds: its writer died, its contents are unknown. */
  inconsistent: boolean;
}

/** The image whose bitmaps change. */
export interface BitmapSubject {
  compat: Compat;
  virtualSize: bigint;
  clusterSize: number;
  bitmaps: BitmapState[];
  /** How messages name the image (QEMU names its node, '#block123'; we name the file). */
  node: string;
}

/** The image a merge reads from (-b FILE): its bitmaps and its size. */
export interface MergeSource {
  bitmaps: BitmapState[];
  virtualSize: bigint;
}

const INCONSISTENT_HINT = 'Try block-dirty-bitmap-remove to delete this bitmap from disk';

/** bdrv_dirty_bitmap_check's refusal of an inconsistent bitmap. */
export function inconsistentMessage(name: string): string {
  return `Bitmap '${name}' is inconsistent and cannot be used\n${INCONSISTENT_HINT}`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/** Why `name` cannot be added (block_dirty_bitmap_add, persistent), or undefined. */
function addRefusal(img: BitmapSubject, bitmaps: BitmapState[], name: string, granularity: number): string | undefined {
  if (name === '') return 'Bitmap name cannot be empty';
  if (granularity < 512 || !isPowerOfTwo(granularity)) return 'Granularity must be power of 2 and at least 512';
  if (bitmaps.some((b) => b.name === name)) return `Bitmap already exists: ${name}`;
  const persistent = (why: string) => `Can't make bitmap '${name}' persistent in '${img.node}': ${why}`;
  if (img.compat === '0.10') return persistent('Cannot store dirty bitmaps in qcow2 v2 files');
  const c = bitmapConstraintError(img.virtualSize, Math.log2(granularity), img.clusterSize, name);
  if (c) return persistent(c);
  if (bitmaps.length + 1 > MAX_BITMAPS) return persistent('Maximum number of persistent bitmaps is already reached');
  const dir = bitmaps.reduce((n, b) => n + dirEntrySize(nameBytes(b.name)), 0) + dirEntrySize(nameBytes(name));
  if (dir > MAX_BITMAP_DIRECTORY_SIZE) return persistent('Not enough space in the bitmap directory');
  return undefined;
}

/**
 * Validate `qemu-img bitmap ACTIONS FILE NAME` as a whole: the first refusal, as qemu-img words
 * it (`Operation add on bitmap b failed: ...`), or undefined when every action succeeds. The
 * actions are simulated in order, so `--add --disable` and `--remove --add` are judged as qemu-img
 * carries them out.
 */
export function validateBitmapActions(img: BitmapSubject, name: string, actions: readonly BitmapAction[], source?: MergeSource): Refusal | undefined {
  const bitmaps = img.bitmaps.map((b) => ({ ...b }));
  const fail = (op: string, why: string): Refusal => ({ property: 'bitmaps', message: `Operation ${op} on bitmap ${name} failed: ${why}` });
  const lookup = (list: BitmapState[], n: string) => list.find((b) => b.name === n);
  for (const a of actions) {
    if (a.op === 'add') {
      const g = a.granularity ?? defaultBitmapGranularity(img.clusterSize);
      const why = addRefusal(img, bitmaps, name, g);
      if (why) return fail('add', why);
      bitmaps.push({ name, granularity: g, enabled: true, inconsistent: false });
      continue;
    }
    const target = lookup(bitmaps, name);
    if (target === undefined) return fail(a.op, `Dirty bitmap '${name}' not found`);
    if (a.op === 'remove') {
      bitmaps.splice(bitmaps.indexOf(target), 1);
      continue;
    }
    if (target.inconsistent) return fail(a.op, inconsistentMessage(name));
    if (a.op === 'enable' || a.op === 'disable') {
      target.enabled = a.op === 'enable';
      continue;
    }
    if (a.op === 'merge') {
      const src = lookup(a.external && source ? source.bitmaps : bitmaps, a.source);
      if (src === undefined) return fail('merge', `Dirty bitmap '${a.source}' not found`);
      if (src.inconsistent) return fail('merge', inconsistentMessage(a.source));
      const srcSize = a.external && source ? source.virtualSize : img.virtualSize;
      if (srcSize !== img.virtualSize) {
        return fail('merge', `Bitmaps are of different sizes (destination size is ${img.virtualSize}, source size is ${srcSize}) and can't be merged`);
      }
    }
  }
  return undefined;
}

/** qemu-img's -g: a size, cut to QEMU's 32-bit granularity (4G is 0, which is refused; 0 means the default). */
export function granularityArgument(bytes: bigint): number | undefined {
  const g = Number(bytes & 0xffffffffn);
  return g === 0 && bytes === 0n ? undefined : g;
}

/** A resize (qemu-img resize, amend -o size) resizes every bitmap: refused while one is inconsistent. */
export function validateResizeBitmaps(bitmaps: readonly BitmapState[]): Refusal | undefined {
  const bad = bitmaps.find((b) => b.inconsistent);
  return bad ? { property: 'size', message: inconsistentMessage(bad.name) } : undefined;
}

/** What convert --bitmaps copies from, and into. */
export interface CopyBitmapsRequest {
  sourceFormat: string;
  /** The source image's bitmaps (its top layer's: a backing file's are not copied). */
  bitmaps: BitmapState[];
  /** The new image's compat level. */
  targetCompat: Compat;
  /** --skip-broken-bitmaps: leave inconsistent bitmaps out instead of refusing. */
  skipBroken: boolean;
}

/** convert --bitmaps (qemu-img's convert_check_bitmaps, then what the new image can hold). */
export function validateCopyBitmaps(req: CopyBitmapsRequest): Refusal | undefined {
  if (req.sourceFormat !== 'qcow2') return { property: 'bitmaps', message: 'Source lacks bitmap support' };
  const bad = req.skipBroken ? undefined : req.bitmaps.find((b) => b.inconsistent);
  if (bad) {
    return {
      property: 'bitmaps',
      message: `Cannot copy inconsistent bitmap '${bad.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`,
    };
  }
  const copied = req.bitmaps.find((b) => !b.inconsistent);
  if (copied && req.targetCompat === '0.10') {
    return { property: 'compat', message: `Failed to populate bitmap ${copied.name}: Cannot store dirty bitmaps in qcow2 v2 files. Create the new image with compat 1.1` };
  }
  return undefined;
}
