// The native engine's operations: ask provider/rules, then drive provider/format. This is the
// glue layer: format/ knows how, rules/ knows what is legal, and nothing below reaches up.

import * as fs from 'fs';
import { Qcow2Error } from '../format/errors';
import { planCreate, probeBacking, writeNewImage } from '../format/create';
import type { CreateOptions, ResolvedCreateOptions } from '../format/options';
import { validateAdoption, validateCreate } from '../rules/create';
import { BlockFile, NodeBlockFile, ioError } from '../format/blockfile';
import { AmendChanges, AmendPlan, applyAmend, planAmend } from '../format/amend';
import * as C from '../format/constants';
import { Image } from '../format/image';
import { ImageLock, lockImage } from '../format/lock';
import { validateAmend, validateRebase, validateResize } from '../rules/amend';
import type { AmendRequest, ImageState } from '../rules/types';

/** How create treats the world outside the new image. */
export interface CreateBehaviour {
  /** qemu-img's -u: do not open the backing file (then a size is required). */
  unsafeBacking?: boolean;
}

function refused(r: { property: string; message: string }): Qcow2Error {
  return new Qcow2Error('INVALID_OPTION', r.message, { property: r.property });
}

/** Validate create options (rules) and derive the size from the backing file or adopted data file. */
export function resolveCreate(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): ResolvedCreateOptions {
  const first = validateCreate(options);
  if (!first.ok) throw refused(first.refusal);
  let resolved = first.options;
  if (options.size === undefined) {
    let size: bigint | undefined;
    if (options.backingFile !== undefined && !behaviour.unsafeBacking) {
      const probe = probeBacking(imagePath, options.backingFile, options.backingFormat);
      if (options.backingFormat === undefined) {
        throw new Qcow2Error('INVALID_OPTION', `Backing file specified without backing format\nDetected format of ${probe.detectedFormat}.`, { property: 'backing_fmt' });
      }
      size = probe.size;
    } else if (options.adoptDataFile && options.dataFile !== undefined) {
      size = BigInt(statFile(options.dataFile).size);
    }
    if (size === undefined) throw new Qcow2Error('INVALID_OPTION', 'Image creation needs a size parameter', { property: 'size' });
    const again = validateCreate({ ...options, size });
    if (!again.ok) throw refused(again.refusal);
    resolved = again.options;
  } else if (options.backingFile !== undefined && !behaviour.unsafeBacking) {
    // Like qemu-img, open the backing file even when the size is given.
    probeBacking(imagePath, options.backingFile, options.backingFormat);
    if (options.backingFormat === undefined) {
      const probe = probeBacking(imagePath, options.backingFile, undefined);
      throw new Qcow2Error('INVALID_OPTION', `Backing file specified without backing format\nDetected format of ${probe.detectedFormat}.`, { property: 'backing_fmt' });
    }
  }
  if (resolved.adoptDataFile && resolved.dataFile !== undefined && fs.existsSync(resolved.dataFile)) {
    const r = validateAdoption(resolved.dataFile, BigInt(statFile(resolved.dataFile).size), resolved.size);
    if (r) throw refused(r);
  }
  return resolved;
}

function statFile(name: string): fs.Stats {
  let st: fs.Stats;
  try {
    st = fs.statSync(name);
  } catch (e) {
    throw ioError(e, name, 'open');
  }
  if (!st.isFile()) throw new Qcow2Error('INVALID_OPTION', `Data file '${name}' is not a regular file`, { property: 'data_file', file: name });
  return st;
}

/**
 * Create a qcow2 image. All validation happens before any file is touched; an existing image
 * or data file is never overwritten (a data file can be adopted, unchanged, on request).
 */
export function createImage(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): void {
  writeNewImage(imagePath, planCreate(resolveCreate(imagePath, options, behaviour)));
}

// ---------------------------------------------------------------------------------------------
// amend, resize, rebase -u

/** What the rules need to know about an open image. */
export function imageStateOf(img: Image, scanCompressed = false): ImageState {
  const h = img.header;
  const state: ImageState = {
    virtualSize: h.size,
    clusterSize: img.geometry.clusterSize,
    compat: h.version === 2 ? '0.10' : '1.1',
    refcountBits: img.geometry.refcountBits,
    lazyRefcounts: (h.compatibleFeatures & C.QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n,
    extendedL2: img.extendedL2,
    compressionType: h.compressionType === C.QCOW2_COMPRESSION_TYPE_ZSTD ? 'zstd' : 'zlib',
    hasDataFile: img.hasDataFile,
    dataFileRaw: img.dataFileRaw,
    dirty: img.dirty,
    corrupt: img.corrupt,
    snapshots: h.nbSnapshots,
    bitmaps: h.bitmaps?.nbBitmaps ?? 0,
  };
  if (h.dataFile !== undefined) state.dataFile = h.dataFile;
  if (h.backingFile !== undefined) state.backingFile = h.backingFile;
  if (h.backingFormat !== undefined) state.backingFormat = h.backingFormat;
  if (scanCompressed) state.hasCompressedClusters = hasCompressedClusters(img);
  return state;
}

/** Any compressed L2 entry in the active L1 (only a zstd downgrade needs to know). */
function hasCompressedClusters(img: Image): boolean {
  const g = img.geometry;
  for (const e of img.readL1()) {
    const l2 = e & C.L1E_OFFSET_MASK;
    if (l2 === 0n) continue;
    const t = img.readCluster(l2);
    for (let k = 0; k < g.l2Entries; k++) if (t.readBigUInt64BE(k * g.l2EntrySize) & C.QCOW_OFLAG_COMPRESSED) return true;
  }
  return false;
}

export interface AmendBehaviour {
  /** Allow the size to shrink (amend does, as qemu-img amend does; resize needs --shrink). */
  allowShrink?: boolean;
  /** Wrap the image file (tests inject faults here). */
  wrapFile?: (f: BlockFile) => BlockFile;
}

/** Open an image for a change: write lock first (QEMU's), then validation, nothing written. */
function withWritableImage<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => T): T {
  const nf = NodeBlockFile.open(path, true);
  let lock: ImageLock | undefined;
  try {
    lock = lockImage(nf.fd, path, 'write');
    const file = behaviour.wrapFile ? behaviour.wrapFile(nf) : nf;
    const img = Image.open(file, path);
    if (img.corrupt) {
      throw new Qcow2Error('REFUSED', 'qcow2: Image is corrupt; cannot be opened read/write. Repair it with qemu-img check -r all first', { file: path });
    }
    return fn(img, file);
  } finally {
    lock?.release();
    nf.close();
  }
}

function openDataFile(img: Image, path: string): NodeBlockFile | undefined {
  if (!img.hasDataFile) return undefined;
  const name = img.header.dataFile;
  if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: path });
  const df = NodeBlockFile.open(name, true);
  try {
    lockImage(df.fd, name, 'write');
  } catch (e) {
    df.close();
    throw e;
  }
  return df;
}

function changesOf(state: ImageState, req: AmendRequest): AmendChanges {
  const ch: AmendChanges = {};
  if (req.compat !== undefined) ch.version = req.compat === '0.10' ? 2 : 3;
  if (req.lazyRefcounts !== undefined && req.lazyRefcounts !== state.lazyRefcounts) ch.lazyRefcounts = req.lazyRefcounts;
  if (req.refcountBits !== undefined) ch.refcountOrder = Math.log2(req.refcountBits);
  if (req.size !== undefined) ch.size = req.size;
  if (req.dataFile !== undefined) ch.dataFile = req.dataFile;
  if (req.dataFileRaw !== undefined) ch.dataFileRaw = req.dataFileRaw;
  return ch;
}

function runPlan(img: Image, file: BlockFile, path: string, ch: AmendChanges): AmendPlan {
  const needsData = ch.size !== undefined && ch.size !== img.header.size && img.hasDataFile;
  const df = needsData ? openDataFile(img, path) : undefined;
  try {
    const plan = planAmend(img, file, ch, df?.size());
    applyAmend(file, plan, df);
    return plan;
  } finally {
    df?.close();
  }
}

/**
 * `qemu-img amend -o ...`, all or nothing: every option is validated (provider/rules) before
 * anything is written, and the change is committed by a single header write.
 */
export function amendImage(path: string, req: AmendRequest, behaviour: AmendBehaviour = {}): AmendPlan {
  return withWritableImage(path, behaviour, (img, file) => {
    const downgradeZstd = req.compat === '0.10' && img.header.version === 3 && img.header.compressionType === C.QCOW2_COMPRESSION_TYPE_ZSTD;
    const state = imageStateOf(img, downgradeZstd);
    const r = validateAmend(state, req, behaviour.allowShrink ?? true);
    if (r) throw new Qcow2Error('REFUSED', r.message, { property: r.property, file: path });
    return runPlan(img, file, path, changesOf(state, req));
  });
}

/** `qemu-img resize [--shrink] FILE SIZE`: SIZE may be relative (+N / -N). */
export function resizeImage(path: string, size: bigint | { relative: bigint }, behaviour: AmendBehaviour = {}): AmendPlan {
  return withWritableImage(path, behaviour, (img, file) => {
    const state = imageStateOf(img);
    const target = typeof size === 'bigint' ? size : state.virtualSize + size.relative;
    if (target < 0n) throw new Qcow2Error('REFUSED', 'New image size must be positive', { property: 'size' });
    if (target < state.virtualSize && !behaviour.allowShrink) {
      throw new Qcow2Error('REFUSED', 'Use the --shrink option to perform a shrink operation.', { property: 'size', file: path });
    }
    const r = validateResize(state, target, behaviour.allowShrink ?? false);
    if (r) throw new Qcow2Error('REFUSED', r.message, { property: r.property, file: path });
    return runPlan(img, file, path, { size: target });
  });
}

/** `qemu-img rebase -u -b BACKING -F FMT FILE`: the header only; refused on data-file-raw images. */
export function rebaseUnsafe(path: string, backingFile: string, backingFormat: string | undefined, behaviour: AmendBehaviour = {}): AmendPlan {
  return withWritableImage(path, behaviour, (img, file) => {
    const r = validateRebase(imageStateOf(img), backingFile);
    if (r) throw new Qcow2Error('REFUSED', r.message, { property: r.property, file: path });
    const backing: { file: string; format?: string } = { file: backingFile };
    if (backingFormat !== undefined) backing.format = backingFormat;
    return runPlan(img, file, path, { backing });
  });
}
