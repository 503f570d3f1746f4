// The native engine's operations: ask provider/rules, then drive provider/format. This is the
// glue layer: qcow2/ knows how, rules/ knows what is legal, and nothing below reaches up.

import { Qcow2Error } from '../../model/errors';
import type { ImageFacts } from '../../model/facts';
import { planCreate, probeBacking, writeNewImage, writeNewRawImage } from '../../qcow2/ops/create';
import { factsOfImage } from '../../qcow2/ops/info';
import type { CreateOptions, RawCreateOptions, ResolvedCreateOptions } from '../../model/options';
import { CreateBehaviour, resolveCreate, validateRawCreate } from '../../rules/create';
import { BlockFile, NodeBlockFile } from '../../qcow2/io/blockfile';
import { HostFs, localFs } from '../../qcow2/io/hostfs';
import { createFacts, sameFile } from '../local-facts';
import type { ImportSource } from '../engine';
import { AmendChanges, AmendPlan, applyAmend, firstRefcountAbove, planAmend } from '../../qcow2/ops/amend';
import * as C from '../../qcow2/spec/constants';
import { Image } from '../../qcow2/meta/image';
import type { ImageLock } from '../../qcow2/io/lock';
import { validateAmend, validateGrowOverBacking, validateRefcountWidth, validateRebase, validateResizeRequest, validateWritable } from '../../rules/amend';
import type { AmendRequest, Refusal } from '../../rules/types';
import { refused, throwIfRefused } from '../refusal';

/** Create refusals keep qemu-img's code for bad options. */
const createRefused = (r: Refusal) => refused(r, undefined, 'INVALID_OPTION');

/** Validate create options (rules) and derive the size from the backing file or adopted data file. */
function resolved(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}, host: HostFs = localFs): ResolvedCreateOptions {
  const r = resolveCreate(options, createFacts(imagePath, options, host), behaviour);
  if (!r.ok) throw createRefused(r.refusal);
  return r.options;
}

/** `qemu-img create -f raw`: validated by the rules, published like a qcow2 image. */
export function createRawImage(imagePath: string, options: RawCreateOptions, host: HostFs = localFs): void {
  const r = validateRawCreate(options);
  if (!r.ok) throw createRefused(r.refusal);
  writeNewRawImage(imagePath, r.options.size, r.options.preallocation, host);
}

/** What createImage would make (rules, backing size), touching nothing. */
export function resolveCreateOptions(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}, host: HostFs = localFs): ResolvedCreateOptions {
  return resolved(imagePath, options, behaviour, host);
}

/**
 * Create a qcow2 image. All validation happens before any file is touched; an existing image
 * or data file is never overwritten (a data file can be adopted, unchanged, on request).
 */
export function createImage(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}, host: HostFs = localFs): void {
  writeNewImage(imagePath, planCreate(resolved(imagePath, options, behaviour, host)), host);
}

// ---------------------------------------------------------------------------------------------
// amend, resize, rebase -u

/** What the rules need to know about an open image: its facts (model), compressed clusters when asked. */
export function imageStateOf(img: Image, scanCompressed = false): ImageFacts {
  const state = factsOfImage(img, 0);
  delete state.detail;
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
  /** The host the files are on (default: this machine). */
  host?: HostFs;
}

/** Open an image for a change: write lock first (QEMU's), then validation, nothing written. */
function withWritableImage<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => T): T {
  const host = behaviour.host ?? localFs;
  const nf = host.open(path, 'write').file;
  let lock: ImageLock | undefined;
  try {
    lock = host.lock(nf, path, 'write');
    const file = behaviour.wrapFile ? behaviour.wrapFile(nf) : nf;
    const img = Image.open(file, path);
    const w = validateWritable(imageStateOf(img));
    throwIfRefused(w, path);
    return fn(img, file);
  } finally {
    lock?.release();
    nf.close();
  }
}

function openDataFile(img: Image, path: string, host: HostFs): BlockFile | undefined {
  if (!img.hasDataFile) return undefined;
  const name = img.header.dataFile;
  if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: path });
  const df = host.open(name, 'write').file;
  try {
    host.lock(df, name, 'write'); // held until close
  } catch (e) {
    df.close();
    throw e;
  }
  return df;
}

function changesOf(state: ImageFacts, req: AmendRequest): AmendChanges {
  const ch: AmendChanges = {};
  if (req.compat !== undefined) ch.version = req.compat === '0.10' ? 2 : 3;
  if (req.lazyRefcounts !== undefined && req.lazyRefcounts !== state.lazyRefcounts) ch.lazyRefcounts = req.lazyRefcounts;
  if (req.refcountBits !== undefined) ch.refcountOrder = Math.log2(req.refcountBits);
  if (req.size !== undefined) ch.size = req.size;
  if (req.dataFile !== undefined) ch.dataFile = req.dataFile;
  if (req.dataFileRaw !== undefined) ch.dataFileRaw = req.dataFileRaw;
  return ch;
}

function runPlan(img: Image, file: BlockFile, path: string, ch: AmendChanges, host: HostFs): AmendPlan {
  const needsData = ch.size !== undefined && ch.size !== img.header.size && img.hasDataFile;
  const grows = ch.size !== undefined && ch.size > img.header.size;
  // Growing over a longer backing file must zero the new area: learn the backing file's length.
  const backingLength = grows && img.header.backingFile !== undefined
    ? probeBacking(path, img.header.backingFile, img.header.backingFormat, host).size
    : undefined;
  if (ch.size !== undefined) {
    const r = validateGrowOverBacking(imageStateOf(img), ch.size, backingLength);
    throwIfRefused(r, path);
  }
  const df = needsData ? openDataFile(img, path, host) : undefined;
  try {
    const plan = planAmend(img, file, ch, df?.size(), backingLength);
    // Giving freed clusters back is advisory (QEMU's discard may do nothing): only on a local
    // file that can have holes punched, never by writing zeros through a wrapper.
    const punch = file instanceof NodeBlockFile ? (offset: number, length: number) => localFs.punchHole(file, offset, length) : undefined;
    applyAmend(file, plan, df, punch);
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
    throwIfRefused(r, path);
    if (req.refcountBits !== undefined && req.refcountBits < state.refcountBits) {
      const over = firstRefcountAbove(img, file, (1n << BigInt(req.refcountBits)) - 1n);
      throwIfRefused(validateRefcountWidth(req.refcountBits, over), path);
    }
    return runPlan(img, file, path, changesOf(state, req), behaviour.host ?? localFs);
  });
}

/** `qemu-img resize [--shrink] FILE SIZE`: SIZE may be relative (+N / -N). */
export function resizeImage(path: string, size: bigint | { relative: bigint }, behaviour: AmendBehaviour = {}): AmendPlan {
  return withWritableImage(path, behaviour, (img, file) => {
    const state = imageStateOf(img);
    const target = typeof size === 'bigint' ? size : state.virtualSize + size.relative;
    const r = validateResizeRequest(state, target, behaviour.allowShrink ?? false);
    throwIfRefused(r, path);
    return runPlan(img, file, path, { size: target }, behaviour.host ?? localFs);
  });
}

/** `qemu-img rebase -u -b BACKING -F FMT FILE`: the header only; refused on data-file-raw images. */
export function rebaseUnsafe(path: string, backingFile: string, backingFormat: string | undefined, behaviour: AmendBehaviour = {}): AmendPlan {
  return withWritableImage(path, behaviour, (img, file) => {
    const r = validateRebase(imageStateOf(img), backingFile, backingFormat);
    throwIfRefused(r, path);
    const backing: { file: string; format?: string } = { file: backingFile };
    if (backingFormat !== undefined) backing.format = backingFormat;
    return runPlan(img, file, path, { backing }, behaviour.host ?? localFs);
  });
}

// ---------------------------------------------------------------------------------------------
// Data path: guest writes, import/convert, map, safe rebase (provider/qcow2/guest/ and
// friends do the work; provider/rules/data.ts decides what is allowed).

export type { CreateBehaviour };
import { writeImportedImage } from '../../qcow2/ops/convert';
import { Qcow2Image } from '../../qcow2/guest/qcow2';
import type { GuestSource, OpenOptions, ProgressFn } from '../../qcow2/guest/source';
import { openSource, probeFileFormat as probeFormat } from '../../qcow2/guest/sources/open';
import { validateChain } from '../../qcow2/guest/sources/preflight';
import { resolveBackingName } from '../../qcow2/spec/backing';
import { MapEntry, mapSource } from '../../qcow2/ops/map';
import { rebaseSafe } from '../../qcow2/ops/rebase';
import { validateImport, validateSafeRebase, validateWrite } from '../../rules/data';

/** Open an image to write guest data (QEMU's write locks on image and data file; rules first). */
export function openImageForWrite(path: string, opts: Omit<OpenOptions, 'writable' | 'beforeWrite'> = {}): Qcow2Image {
  return Qcow2Image.open(path, {
    ...opts,
    writable: true,
    beforeWrite: (img) => {
      const r = validateWrite(imageStateOf(img));
      throwIfRefused(r, path);
    },
  });
}

export interface ImportBehaviour {
  /** Called as the copy advances: bytes of the guest view done, of total. */
  progress?: ProgressFn;
  /** The host the image's files are on (default: this machine). */
  host?: HostFs;
  /** The host the source is on (default: the image's). */
  sourceHost?: HostFs;
}

/**
 * Create `dst` holding the guest view of `source` (qemu-img convert -O qcow2 -o ...). The source
 * is opened and validated (header, backing chain, every mapping inside its file) before anything
 * is created; `dst` and a data file are never overwritten, and a failure leaves nothing behind.
 */
export function importImage(dst: string, options: CreateOptions, source: Omit<ImportSource, 'host'>, behaviour: ImportBehaviour = {}): void {
  const host = behaviour.host ?? localFs;
  const sourceHost = behaviour.sourceHost ?? host;
  const early = source.format !== undefined ? validateImport({ sourceFormat: source.format, options: {}, sourceSize: 0n, sameFile: false }) : undefined;
  throwIfRefused(early);
  const format = source.format ?? probeFormat(source.path, sourceHost);
  const src: GuestSource = openSource(source.path, format, { host: sourceHost });
  try {
    validateChain(src);
    // Files on two hosts are never the same file.
    const same = (a: string) => sourceHost === host && sameFile(a, source.path, host);
    const r = validateImport({
      sourceFormat: format,
      options,
      sourceSize: BigInt(src.size),
      sameFile: same(dst) || (options.dataFile !== undefined && same(options.dataFile)),
    });
    throwIfRefused(r, dst);
    writeImportedImage(dst, planCreate(resolved(dst, { ...options, size: BigInt(src.size) }, {}, host)), src, behaviour.progress, host);
  } finally {
    src.close();
  }
}

/** `qemu-img map`: the extents of an image's guest view through its backing chain. */
export function mapImage(path: string, opts: { format?: string; forceShare?: boolean; host?: HostFs } = {}): MapEntry[] {
  const host = opts.host ?? localFs;
  const src = openSource(path, opts.format ?? probeFormat(path, host), { lock: !opts.forceShare, host });
  try {
    return mapSource(src);
  } finally {
    src.close();
  }
}

/**
 * `qemu-img rebase -b NEW -F FMT FILE` (safe): clusters whose content differs between the
 * old and the new backing chain are copied into the image first, so the guest view does not
 * change; then the backing reference is rewritten. Refused on data-file-raw images, and
 * without a format (provider/rules). NEW '' removes the backing file (its data is copied in).
 */
export function rebaseImage(path: string, backingFile: string, backingFormat: string | undefined, behaviour: ImportBehaviour = {}): { copiedBytes: number } {
  const host = behaviour.host ?? localFs;
  const img = Qcow2Image.open(path, {
    host,
    writable: true,
    beforeWrite: (image) => {
      const r = validateSafeRebase(imageStateOf(image), backingFile, backingFormat);
      throwIfRefused(r, path);
    },
  });
  let next: GuestSource | null = null;
  try {
    const fmt = backingFormat;
    if (backingFile !== '') {
      const full = resolveBackingName(path, backingFile);
      try {
        next = openSource(full, fmt, { host });
      } catch (e) {
        throw new Qcow2Error(Qcow2Error.isInstance(e) ? e.code : 'IO', `Could not open new backing file '${full}': ${(e as Error).message}`, { file: full, property: 'backing_file', cause: e });
      }
    }
    return rebaseSafe(img, next, backingFile, backingFile === '' ? undefined : fmt, behaviour.progress);
  } finally {
    next?.close();
    img.close();
  }
}
