// Amend legality: every refusal qemu-img 7.2 makes for `amend` (and `resize`, `rebase -u`),
// in its order and words, but decided before anything is written: qemu-img applies an
// upgrade or a refcount change and only then fails on a later option; we refuse the whole.

import { isCreateOnly } from '../model/names';
import type { ImageFacts } from '../model/facts';
import { inconsistentMessage } from './bitmaps';
import { v2Refusal } from './compat';
import type { AmendRequest, ConsistencyFacts, Refusal } from './types';
import { BDRV_MAX_LENGTH, validateSizeValue, validateVirtualSize } from './size';

/** `Invalid parameter 'X'` for options that only create understands (model/names.ts). */
export function createOnlyRefusal(option: string): Refusal | undefined {
  if (!isCreateOnly(option)) return undefined;
  return { property: option, message: `Invalid parameter '${option}'\nThis option is only supported for image creation` };
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Refusals that apply to any size change (shared by amend -o size and resize), in qemu-img's order. */
export function validateResize(state: ImageFacts, size: bigint, allowShrink: boolean): Refusal | undefined {
  const bad = validateSizeValue(size);
  if (bad) return bad;
  if (size > BDRV_MAX_LENGTH) return validateVirtualSize(size, state.clusterSize, state.extendedL2);
  if (size % 512n !== 0n) return { property: 'size', message: 'The new size must be a multiple of 512' };
  if (state.compat === '0.10' && state.snapshots > 0) return { property: 'size', message: "Can't resize a v2 image which has snapshots" };
  if (size < state.virtualSize && !allowShrink) {
    return {
      property: 'size',
      message: `Shrinking from ${state.virtualSize} to ${size} bytes deletes all data beyond the new end; ` +
        'it needs an explicit opt-in (qcow2 resize --shrink, resource input allowShrink: true)',
    };
  }
  if (size !== state.virtualSize) {
    // The bitmaps are resized with the image (as qemu-img 7.2 does); an inconsistent one cannot be.
    const bad = state.detail?.bitmaps.find((b) => b.inconsistent);
    if (bad) return { property: 'size', message: inconsistentMessage(bad.name) };
  }
  return size > state.virtualSize ? validateVirtualSize(size, state.clusterSize, state.extendedL2) : undefined;
}

/**
 * Validate an amend as a whole. Returns the first refusal in qemu-img's order (so the message
 * is the one qemu-img would print for the same request), or undefined when all of it is legal.
 * `allowShrink` is true for amend (qemu-img amend shrinks without asking) and resize --shrink.
 */
export function validateAmend(state: ImageFacts, req: AmendRequest, allowShrink = true): Refusal | undefined {
  const oldVersion = state.compat === '0.10' ? 2 : 3;
  const newVersion = req.compat === undefined ? oldVersion : req.compat === '0.10' ? 2 : 3;
  // Per-option checks, in the order of qemu's option list.
  if (req.dataFile !== undefined && !state.hasDataFile) {
    return { property: 'data_file', message: 'data-file can only be set for images that use an external data file' };
  }
  if (req.dataFileRaw === true && !state.dataFileRaw) {
    return {
      property: 'data_file_raw',
      message: 'data-file-raw cannot be set on existing images: the data file was not kept a valid raw image until now, ' +
        'so the flag would promise what is not true. Create a new image with data_file_raw=on and the data file, ' +
        'or wrap the raw data file in a new image (create --adopt-data-file)',
    };
  }
  if (req.refcountBits !== undefined && (req.refcountBits > 64 || !isPowerOfTwo(req.refcountBits))) {
    return { property: 'refcount_bits', message: 'Refcount width must be a power of two and may not exceed 64 bits' };
  }
  // Then in the order qemu-img applies them: refcount width, backing file, lazy refcounts.
  const refcountBits = req.refcountBits ?? state.refcountBits;
  // What compat 0.10 cannot have: rules/compat.ts, in qemu-img's amend order.
  const lazy = req.lazyRefcounts ?? state.lazyRefcounts;
  const after = { ...state, refcountBits, lazyRefcounts: lazy };
  if (refcountBits !== state.refcountBits && newVersion < 3) {
    const r = v2Refusal('refcount_bits', 'amend', after);
    if (r) return r;
  }
  // qemu-img compares both names with the stored ones, an option left out counting as unset.
  if ((req.backingFile !== undefined || req.backingFormat !== undefined) &&
    (req.backingFile !== state.backingFile || req.backingFormat !== state.backingFormat)) {
    return { property: 'backing_file', message: "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead." };
  }
  if (!state.lazyRefcounts && newVersion < 3) {
    const r = v2Refusal('lazy_refcounts', 'amend', after);
    if (r) return r;
  }
  if (req.size !== undefined && req.size !== state.virtualSize) {
    // qcow2_amend_options upgrades first, then resizes (then downgrades): a v2 image with
    // snapshots can be resized in the amend that makes it v3.
    const r = validateResize(newVersion > oldVersion ? { ...state, compat: '1.1' } : state, req.size, allowShrink);
    if (r) return r;
  }
  if (newVersion < oldVersion) {
    const down = (option: 'refcount_bits' | 'data_file' | 'extended_l2' | 'compression_type') => v2Refusal(option, 'downgrade', after);
    const r = down('refcount_bits') ?? down('data_file');
    if (r) return r;
    const snap = snapshotsPreventDowngrade(state, req.size ?? state.virtualSize);
    if (snap) return snap;
    const ext = down('extended_l2');
    if (ext) return ext;
    if (state.bitmaps.length > 0) {
      // qemu-img 7.2 downgrades anyway: the v2 header cannot vouch for the bitmaps (no autoclear
      // bits), so QEMU then treats them as inconsistent and their clusters as leaked.
      return {
        property: 'compat',
        message: `Cannot downgrade an image with persistent dirty bitmaps (${state.bitmaps.join(', ')}): Cannot store dirty bitmaps in qcow2 v2 files. ` +
          'Remove the bitmaps first (qcow2 bitmap --remove), or keep compat 1.1',
      };
    }
    if (state.corrupt) return { property: 'compat', message: 'Cannot downgrade an image with incompatible features 0x2 set' };
    const zstd = down('compression_type');
    if (zstd) return zstd;
  }
  return undefined;
}

/**
 * qcow2_downgrade: v2 snapshots have no disk size and a 32-bit VM state size, so a snapshot whose
 * disk size is not the image's (after a size change in the same amend: qemu-img resizes first)
 * or whose VM state exceeds 32 bits prevents the downgrade. Snapshots whose disk size the facts
 * do not carry (qemu-img info does not report it) are left to the engine, which reads them.
 */
export function snapshotsPreventDowngrade(state: ImageFacts, size: bigint): Refusal | undefined {
  if (state.snapshots === 0) return undefined;
  const bad = (state.detail?.snapshots ?? []).find((s) => s.vmStateSize > 0xffffffffn || (s.diskSize !== undefined && s.diskSize !== size));
  if (!bad) return undefined;
  return { property: 'compat', message: 'Internal snapshots prevent downgrade of image' };
}

/**
 * A zero cluster whose host cluster another table (a snapshot's) reads as data: qemu-img's
 * downgrade writes zeros into it in place, which changes what that snapshot reads. `shared` is
 * the fact the engine read (qcow2/ops/downgrade.ts firstSharedZeroCluster).
 */
export function validateDowngradeZeroClusters(shared: { hostOffset: number } | undefined): Refusal | undefined {
  if (!shared) return undefined;
  return {
    property: 'compat',
    message: `Cannot downgrade this image: the zero cluster at host offset 0x${shared.hostOffset.toString(16)} shares its data cluster with an internal snapshot, ` +
      'and compat 0.10 has no zero clusters: expanding it in place (as qemu-img does) would overwrite data the snapshot reads. ' +
      'Write the zeros again without keeping the allocation (qemu-io -c "write -z -u"), delete the snapshot (qemu-img snapshot -d), or keep compat 1.1',
  };
}

/**
 * Growing over a longer backing file from an old end inside a cluster: QEMU zeroes the rest of
 * that cluster. With subclusters it marks them zero, which a compressed cluster cannot hold
 * (qemu-img refuses too); otherwise it writes zeros by copy-on-write when the image does not own
 * the cluster alone, which the native engine does not do in place. `end`: the old end's cluster,
 * as the resize planners find it in the tables.
 */
export function validateGrowOverBackingEnd(end: { compressedSubclusters?: boolean; owned?: boolean }): Refusal | undefined {
  if (end.compressedSubclusters) {
    return { property: 'size', message: 'Cannot grow this image over a longer backing file: its old end is inside a compressed cluster, which cannot hold zero subclusters (qemu-img refuses too)' };
  }
  if (end.owned === false) {
    return {
      property: 'size',
      message: 'Cannot grow this image over a longer backing file with the native engine: its old end is inside a cluster the image does not own (unallocated, shared with a snapshot, compressed or zero), ' +
        'whose rest qemu-img fills by copy-on-write. Use the qemu-img engine, or resize to a multiple of the cluster size first',
    };
  }
  return undefined;
}

/**
 * A change that moves metadata (a size change, a refcount width, a downgrade, a safe rebase)
 * on an image check calls corrupt would build on broken tables and spread the damage (one
 * overlapping L2 entry became thousands of refcount errors). Refused, the image unchanged;
 * leaks alone do not block. Header-only changes do not ask.
 */
export function validateConsistent(f: ConsistencyFacts, change: { widensRefcountsOnly?: boolean } = {}): Refusal | undefined {
  const n = f.corruptions + f.checkErrors;
  if (n === 0) return undefined;
  // Refcounts that overflowed their width: check tells the user to amend to a wider width, and
  // a change that only widens copies every refcount as stored, which check -r all then repairs.
  if (change.widensRefcountsOnly && f.checkErrors === 0 && f.corruptions === (f.overflows ?? 0)) return undefined;
  return {
    property: 'path',
    message: `Image is corrupt: check finds ${n === 1 ? '1 error' : `${n} errors`}` +
      `${f.first ? ` (${f.first})` : ''}; changing it now could spread the damage, so nothing was changed. ` +
      'Run qemu-img check -r all first',
  };
}

/** Any change at all: QEMU will not open a corrupt image read/write. */
export function validateWritable(state: ImageFacts): Refusal | undefined {
  if (!state.corrupt) return undefined;
  return { property: 'path', message: 'qcow2: Image is corrupt; cannot be opened read/write. Repair it with qemu-img check -r all first' };
}

/** `resize FILE SIZE` (qemu-img's words): positive, shrinking only with --shrink, then validateResize. */
export function validateResizeRequest(state: ImageFacts, size: bigint, allowShrink: boolean, preallocation: string = 'off'): Refusal | undefined {
  if (typeof size !== 'bigint') return validateSizeValue(size);
  if (size <= 0n) return { property: 'size', message: 'New image size must be positive' };
  // qemu-img's order: preallocation is for growing only, before the --shrink check.
  if (size <= state.virtualSize && preallocation !== 'off') return { property: 'preallocation', message: 'Preallocation can only be used for growing images' };
  if (size < state.virtualSize && !allowShrink) return { property: 'size', message: 'Use the --shrink option to perform a shrink operation.' };
  return validateResize(state, size, allowShrink);
}

/** `rebase -u` legality: a data-file-raw image can never get a backing file; a backing file needs its format. */
export function validateRebase(state: ImageFacts, backingFile: string | undefined, backingFormat?: string): Refusal | undefined {
  if (backingFile !== undefined && backingFile !== '' && state.dataFileRaw) {
    return {
      property: 'backing_file',
      message: `Could not change the backing file to '${backingFile}': Backing file and data-file-raw cannot be used at the same time. ` +
        'A data-file-raw image keeps its data file a complete raw image, which a backing chain would contradict. ' +
        'Clear data-file-raw first (amend -o data_file_raw=off), or create an overlay image elsewhere',
    };
  }
  if (backingFile !== undefined && backingFile !== '' && backingFormat === undefined) {
    return { property: 'backing_fmt', message: `Could not change the backing file to '${backingFile}': backing format must be specified` };
  }
  return undefined;
}

/**
 * Growing over a longer backing file: the new area must read as zeros (QEMU writes zero
 * clusters there), which compat 0.10 cannot express. `backingLength` is a fact the engine read.
 */
export function validateGrowOverBacking(state: ImageFacts, newSize: bigint, backingLength: bigint | undefined): Refusal | undefined {
  if (backingLength === undefined || newSize <= state.virtualSize || backingLength <= state.virtualSize) return undefined;
  if (state.compat === '0.10') {
    return {
      property: 'size',
      message: "Cannot grow a compat 0.10 image over a longer backing file: the new area would show the backing file's data and compat 0.10 has no zero clusters. Upgrade to compat 1.1 first",
    };
  }
  return undefined;
}

/**
 * A narrower refcount width must hold every refcount the image has. `over` is the first cluster
 * whose refcount exceeds the new width's maximum, a fact the engine read from the refcount blocks.
 */
export function validateRefcountWidth(refcountBits: number, over: { offset: bigint; refcount: bigint } | undefined): Refusal | undefined {
  if (!over) return undefined;
  return {
    property: 'refcount_bits',
    message: `Cannot decrease refcount entry width to ${refcountBits} bits: Cluster at offset 0x${over.offset.toString(16)} has a refcount of ${over.refcount}`,
  };
}
