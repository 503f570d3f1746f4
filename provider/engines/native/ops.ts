// The native engine's operations: ask provider/rules, then drive provider/format. This is the
// glue layer: qcow2/ knows how, rules/ knows what is legal, and nothing below reaches up.

import { Qcow2Error } from '../../model/errors';
import type { ImageFacts } from '../../model/facts';
import { CreatePlan, planCreate, probeBacking, writeNewImage, writeNewRawImage } from '../../qcow2/ops/create';
import { factsOfImage } from '../../qcow2/ops/info';
import type { CreateOptions, RawCreateOptions, ResolvedCreateOptions } from '../../model/options';
import { CreateBehaviour, resolveCreate, validateRawCreate } from '../../rules/create';
import { BlockFile, NodeBlockFile } from '../../qcow2/io/blockfile';
import { HostFs, localFs } from '../../qcow2/io/hostfs';
import { createFacts, sameFile } from '../local-facts';
import type { ImportSource } from '../engine';
import { NotInPlace, ResizePlan, applyResize, planResizeInPlace } from '../../qcow2/ops/resize';
import { AmendChanges, AmendPlan, BackingReader, OldEndRefused, ResizePreallocation, amendMovesMetadata, applyAmend, firstRefcountAbove, planAmend, upgradeRewritesSnapshots } from '../../qcow2/ops/amend';
import { rewriteSnapshotTable } from '../../qcow2/ops/snapshot';
import { DowngradePlan, applyDowngrade, checkSnapshotL1Tables, firstSharedZeroCluster, planDowngrade } from '../../qcow2/ops/downgrade';
import { consistencyOf } from '../../qcow2/ops/check';
import * as C from '../../qcow2/spec/constants';
import { Image } from '../../qcow2/meta/image';
import type { ImageLock } from '../../qcow2/io/lock';
import {
  validateAmend, validateConsistent, validateDowngradeZeroClusters, validateGrowOverBacking, validateGrowOverBackingEnd, validateRefcountWidth, validateRebase, validateResizeRequest, validateWritable,
} from '../../rules/amend';
import type { AmendRequest, Refusal } from '../../rules/types';
import { refused, sizeArg, throwIfRefused } from '../refusal';
import { sweepStale } from '../../qcow2/io/publish';
import { dirname } from 'path';

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
  /** resize --preallocation (default off). */
  preallocation?: ResizePreallocation;
}

/** Open an image for a change: write lock first (QEMU's), then validation, nothing written. */
export function withWritableImage<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => T): T {
  const w = openWritable(path, behaviour);
  try {
    return fn(w.img, w.file);
  } finally {
    w.close();
  }
}

/** withWritableImage for a change that overlaps its I/O: the image stays open and locked until `fn` settles. */
export async function withWritableImageAsync<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => Promise<T>): Promise<T> {
  const w = openWritable(path, behaviour);
  try {
    return await fn(w.img, w.file);
  } finally {
    w.close();
  }
}

/** The image open for writing under QEMU's write lock, asked whether it may be written; close() lets both go. */
function openWritable(path: string, behaviour: AmendBehaviour): { img: Image; file: BlockFile; close(): void } {
  const host = behaviour.host ?? localFs;
  sweepStale(dirname(path), host);
  const nf = host.open(path, 'write').file;
  let lock: ImageLock | undefined;
  const close = () => {
    lock?.release();
    nf.close();
  };
  try {
    lock = host.lock(nf, path, 'write');
    const file = behaviour.wrapFile ? behaviour.wrapFile(nf) : nf;
    const img = Image.open(file, path);
    const w = validateWritable(imageStateOf(img));
    throwIfRefused(w, path);
    return { img, file, close };
  } catch (e) {
    close();
    throw e;
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

/**
 * Apply a validated change. `inPlace` (resize): a size change is written
 * in qemu-img's layout (ops/resize.ts), the cases that does not replay as amend writes them.
 */
export function runPlan(img: Image, file: BlockFile, path: string, ch: AmendChanges, host?: HostFs): AmendPlan;
export function runPlan(img: Image, file: BlockFile, path: string, ch: AmendChanges, host: HostFs, inPlace: true): AmendPlan | ResizePlan;
export function runPlan(img: Image, file: BlockFile, path: string, ch: AmendChanges, host: HostFs = localFs, inPlace = false): AmendPlan | ResizePlan {
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
  // A change that builds on the tables needs them sound: check's verdict first (rules decide).
  if (amendMovesMetadata(img, ch)) throwIfRefused(validateConsistent(consistencyOf(img, file), { widensRefcountsOnly: widensRefcountsOnly(img, ch) }), path);
  const df = needsData ? openDataFile(img, path, host) : undefined;
  // Preallocating an old end inside an unallocated cluster copies the backing file's bytes there.
  const backingName = img.header.backingFile;
  const readBacking: BackingReader | undefined = grows && backingName !== undefined && ch.preallocation !== undefined && ch.preallocation !== 'off'
    ? (offset, length) => {
      const src = openSource(resolveBackingName(path, backingName), img.header.backingFormat, { host });
      try { return src.read(offset, length); } finally { src.close(); }
    }
    : undefined;
  // Giving freed clusters back is advisory (QEMU's discard may do nothing): only on a local
  // file that can have holes punched, never by writing zeros through a wrapper.
  const punch = file instanceof NodeBlockFile ? (offset: number, length: number) => localFs.punchHole(file, offset, length) : undefined;
  try {
    if (inPlace && ch.size !== undefined) {
      const plan = tryResizeInPlace(img, file, ch.size, backingLength, ch.preallocation ?? 'off', readBacking);
      if (plan) {
        const punchData = df instanceof NodeBlockFile ? (offset: number, length: number) => localFs.punchHole(df, offset, length) : undefined;
        applyResize(file, plan, punch, df, punchData);
        return plan;
      }
    }
    const plan = planAmend(img, file, ch, df?.size(), backingLength, readBacking);
    applyAmend(file, plan, df, punch);
    return plan;
  } catch (e) {
    // The planners found an old end the rules refuse to grow from: their words, nothing written.
    if (e instanceof OldEndRefused) throw refused(validateGrowOverBackingEnd(e.end)!);
    throw e;
  } finally {
    df?.close();
  }
}

/** ops/resize.ts's plan, or undefined where it does not replay the case. */
function tryResizeInPlace(img: Image, file: BlockFile, size: bigint, backingLength: bigint | undefined,
  prealloc: ResizePreallocation, readBacking: BackingReader | undefined): ResizePlan | undefined {
  try {
    return planResizeInPlace(img, file, size, backingLength, prealloc, readBacking);
  } catch (e) {
    if (e instanceof NotInPlace) return undefined;
    throw e;
  }
}

/** The change widens the refcount width and moves nothing else (see validateConsistent). */
function widensRefcountsOnly(img: Image, ch: AmendChanges): boolean {
  return ch.refcountOrder !== undefined && ch.refcountOrder > img.header.refcountOrder && !img.dirty &&
    (ch.size === undefined || ch.size === img.header.size) && ch.version !== 2;
}

/**
 * `qemu-img amend -o ...`, all or nothing: every option is validated (provider/rules) before
 * anything is written, and the change is committed by a single header write.
 */
export function amendImage(path: string, request: AmendRequest, behaviour: AmendBehaviour = {}): AmendPlan | DowngradePlan {
  const req = request.size === undefined ? request : { ...request, size: sizeArg(request.size) };
  return withWritableImage(path, behaviour, (opened, file) => {
    let img = opened;
    const downgradeZstd = req.compat === '0.10' && img.header.version === 3 && img.header.compressionType === C.QCOW2_COMPRESSION_TYPE_ZSTD;
    const state = imageStateOf(img, downgradeZstd);
    const r = validateAmend(state, req, behaviour.allowShrink ?? true);
    throwIfRefused(r, path);
    if (req.refcountBits !== undefined && req.refcountBits < state.refcountBits) {
      const over = firstRefcountAbove(img, file, (1n << BigInt(req.refcountBits)) - 1n);
      throwIfRefused(validateRefcountWidth(req.refcountBits, over), path);
    }
    const ch = changesOf(state, req);
    if (upgradeRewritesSnapshots(img, ch)) {
      // qcow2_upgrade: the snapshot table gets the extra data v3 requires first (its own
      // crash-safe commit, the table where qcow2_write_snapshots puts it), then the header.
      throwIfRefused(validateConsistent(consistencyOf(img, file)), path);
      rewriteSnapshotTable(file, img);
      img = Image.open(file, path);
    }
    if (ch.version === 2 && img.header.version === 3) return downgrade(img, file, path, ch, behaviour.host ?? localFs);
    return runPlan(img, file, path, ch, behaviour.host ?? localFs);
  });
}

/**
 * compat=0.10 in qcow2_amend_options' order: the other options first, then qcow2_downgrade. What
 * else the amend changes (a size, a refcount width, header fields), and the repair of refcounts
 * a dirty image left stale, are one commit (runPlan); the downgrade then expands the zero
 * clusters of every table in place and commits with its own header write
 * (qcow2/ops/downgrade.ts). A crash between the two leaves a compat 1.1 image with the other
 * changes made, which reads as the new one.
 */
function downgrade(opened: Image, file: BlockFile, path: string, ch: AmendChanges, host: HostFs): AmendPlan | DowngradePlan {
  let img = opened;
  const { version: _v, ...rest } = ch;
  const others = Object.keys(rest).length > 0;
  // qcow2_validate_table's refusal of a broken snapshot L1 table comes first, in qemu-img's words.
  checkSnapshotL1Tables(img);
  if (others || img.dirty) {
    runPlan(img, file, path, rest, host);
    img = Image.open(file, path);
  }
  throwIfRefused(validateConsistent(consistencyOf(img, file)), path);
  throwIfRefused(validateDowngradeZeroClusters(firstSharedZeroCluster(img)), path);
  const plan = planDowngrade(img, file);
  applyDowngrade(file, plan, img.geometry.clusterSize);
  return plan;
}

/** `qemu-img resize [--shrink] FILE SIZE`: SIZE may be relative (+N / -N). */
export function resizeImage(path: string, sizeAsked: bigint | { relative: bigint }, behaviour: AmendBehaviour = {}): AmendPlan | ResizePlan {
  const size = typeof sizeAsked === 'object' && sizeAsked !== null
    ? { relative: sizeArg(sizeAsked.relative, 'size', true) } : sizeArg(sizeAsked);
  return withWritableImage(path, behaviour, (img, file) => {
    const state = imageStateOf(img);
    const target = typeof size === 'bigint' ? size : state.virtualSize + size.relative;
    const r = validateResizeRequest(state, target, behaviour.allowShrink ?? false, behaviour.preallocation);
    throwIfRefused(r, path);
    const ch: AmendChanges = { size: target };
    if (behaviour.preallocation !== undefined) ch.preallocation = behaviour.preallocation;
    return runPlan(img, file, path, ch, behaviour.host ?? localFs, true);
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
import { WriteImportOptions, copyGuestOver, copyTopLayer, writeImportedImage, writeImportedImageAsync, writeImportedRaw } from '../../qcow2/ops/convert';
import { Qcow2Image } from '../../qcow2/guest/qcow2';
import type { GuestSource, OpenOptions, ProgressFn } from '../../qcow2/guest/source';
import * as path from 'path';
import { openSource, probeFileFormat as probeFormat } from '../../qcow2/guest/sources/open';
import { ConcatSource } from '../../qcow2/guest/sources/concat';
import { validateChain } from '../../qcow2/guest/sources/preflight';
import { hasProtocolPrefix, resolveBackingName } from '../../qcow2/spec/backing';
import { MapEntry, mapSource } from '../../qcow2/ops/map';
import { rebaseSafe } from '../../qcow2/ops/rebase';
import { validateConvertInto, validateImport, validateSafeRebase, validateWrite } from '../../rules/data';
import { validateSourceReference } from '../../rules/references';

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
  /** Make the image durable before it appears at its path (default true; see ImportOptions.durable). */
  durable?: boolean;
  /** convert --bitmaps: copy the source's persistent bitmaps (inconsistent ones refused unless skipped). */
  bitmaps?: { skipBroken: boolean };
  /** convert -c: compressed clusters (see ImportOptions.compressed). */
  compressed?: boolean;
  /** convert -B: the new image is an overlay; only the source's top layer is copied (see ImportOptions.overBacking). */
  overBacking?: boolean;
  /** convert SRC1 SRC2 ... DST: the sources after the first, read after it in order (see ImportOptions.moreSources). */
  more?: readonly LocalImportSource[];
  /** convert -S: the shortest run of zeros left unwritten, in bytes (see ImportOptions.sparse). */
  sparse?: number;
}

/** An import source that is a local file (engines/source.ts made it one), as the worker gets it. */
export interface LocalImportSource extends ImportSource {
  /** The source as messages name it (the path, or a redacted URL). Default: the path. */
  label?: string;
  /** The file is a download: relative names in its headers name nothing here. */
  downloaded?: boolean;
}

/**
 * The hook that applies the rules' reference policy while a source's chain is opened: every
 * backing or data file a header names is judged before it is opened.
 */
export function referenceGuard(source: LocalImportSource): OpenOptions['onReference'] {
  const policy = source.references ?? (source.downloaded ? [] : 'any');
  const label = source.label ?? source.path;
  return (kind, name, resolved, from) => {
    const local = resolved === undefined || hasProtocolPrefix(name) || (source.downloaded && !name.startsWith('/')) ? undefined : path.resolve(resolved);
    const r = validateSourceReference({ kind, name, ...(local !== undefined ? { resolved: local } : {}), from: from === source.path ? label : from }, policy, label);
    throwIfRefused(r, label);
  };
}

/**
 * Create `dst` holding the guest view of `source` (qemu-img convert -O qcow2 -o ...), or of it and
 * `behaviour.more` one after another. The sources are opened and validated (header, backing chain
 * and data file names against the reference policy, every mapping inside its file) before
 * anything is created; `dst` and a data file are never overwritten, and a failure leaves nothing
 * behind.
 */
export function importImage(dst: string, options: CreateOptions, source: LocalImportSource, behaviour: ImportBehaviour = {}): void {
  const { src, plan, bitmaps, backingSize } = openImport(dst, options, source, behaviour);
  try {
    writeImportedImage(dst, plan, src, writeOptions(behaviour, bitmaps, backingSize));
  } finally {
    src.close();
  }
}

/** importImage with reads, decoding and writes overlapped (what the Engine runs on local files). */
export async function importImageAsync(dst: string, options: CreateOptions, source: LocalImportSource, behaviour: ImportBehaviour = {}): Promise<void> {
  const { src, plan, bitmaps, backingSize } = openImport(dst, options, source, behaviour);
  try {
    await writeImportedImageAsync(dst, plan, src, writeOptions(behaviour, bitmaps, backingSize));
  } finally {
    src.close();
  }
}

function writeOptions(behaviour: ImportBehaviour, bitmaps: DirtyBitmap[] | undefined, backingSize: number | undefined): WriteImportOptions {
  return {
    ...(backingSize !== undefined ? { backingSize } : {}),
    host: behaviour.host ?? localFs, durable: behaviour.durable ?? true, ...(behaviour.progress ? { progress: behaviour.progress } : {}), ...(bitmaps ? { bitmaps } : {}),
    ...(behaviour.compressed ? { compressed: true } : {}), ...(behaviour.overBacking ? { topLayerOnly: true } : {}),
    ...(behaviour.sparse !== undefined ? { sparse: behaviour.sparse } : {}),
  };
}

/** The sources of an import (`source`, then `behaviour.more`), each with its format: given, or probed on `host`. */
type SourceList = Array<{ source: LocalImportSource; format: string }>;

function sourcesOf(source: LocalImportSource, behaviour: ImportBehaviour, host: HostFs): SourceList {
  return [source, ...(behaviour.more ?? [])].map((s) => ({ source: s, format: s.format ?? probeFormat(s.path, host) }));
}

/** The first of the given source formats that import does not read (refused by the rules), else the first. */
function sourceFormatOf(list: Array<{ format?: string | undefined }>): string | undefined {
  return (list.find((s) => s.format !== undefined && s.format !== 'raw' && s.format !== 'qcow2') ?? list[0])?.format;
}

/**
 * Open the sources (each through its backing chain, the names in its headers judged by its
 * reference policy, the chain validated): one guest view, or their concatenation, as qemu-img
 * convert reads several source files. A failure closes what was opened.
 */
function openSources(list: SourceList, host: HostFs): GuestSource {
  const opened: GuestSource[] = [];
  try {
    for (const { source, format } of list) {
      const onReference = referenceGuard(source);
      const src = openSource(source.path, format, { host, ...(onReference ? { onReference } : {}), ...(source.snapshot ? { snapshot: source.snapshot } : {}) });
      opened.push(src);
      validateChain(src);
    }
    return opened.length === 1 ? opened[0]! : new ConcatSource(opened);
  } catch (e) {
    for (const s of opened) s.close();
    throw e;
  }
}

/** `qemu-img convert -O raw`: a new raw file holding the guest view of the sources (zero areas left as holes, as `sparse` says). */
export function importRawImage(dst: string, options: CreateOptions, source: LocalImportSource, behaviour: ImportBehaviour = {}): void {
  const list = sourcesOf(source, behaviour, localFs);
  const src = openSources(list, localFs);
  try {
    throwIfRefused(validateImport({
      sourceFormat: sourceFormatOf(list)!, targetFormat: 'raw', options, sourceSize: BigInt(src.size), sameFile: list.some((s) => sameFile(dst, s.source.path)),
      sources: list.length, ...(source.maxSize !== undefined ? { maxSize: source.maxSize } : {}), ...(behaviour.bitmaps ? { bitmaps: true } : {}),
      ...(behaviour.compressed ? { compress: true } : {}), ...(behaviour.overBacking ? { overBacking: true } : {}),
    }), dst);
    writeImportedRaw(dst, src, {
      host: localFs, durable: behaviour.durable ?? true, ...(behaviour.progress ? { progress: behaviour.progress } : {}),
      ...(behaviour.sparse !== undefined ? { sparse: behaviour.sparse } : {}),
    });
  } finally {
    src.close();
  }
}

/**
 * `qemu-img convert -n`: the guest view of the sources written over the existing image `dst`
 * (opened for writing as any guest write: QEMU's locks, the write rules), which must be at
 * least as large. Data is copied; zero areas are written as zeros (the image may hold data
 * there), or as data with `sparse` 0. With `overBacking` (-n -B) only the source's top layer.
 */
export function convertIntoImage(dst: string, source: LocalImportSource, behaviour: Pick<ImportBehaviour, 'progress' | 'more' | 'sparse' | 'overBacking'> = {}): void {
  const list = sourcesOf(source, behaviour, localFs);
  throwIfRefused(validateImport({
    sourceFormat: sourceFormatOf(list)!, options: {}, sourceSize: 0n, sameFile: false, sources: list.length, existingTarget: true, ...(behaviour.overBacking ? { overBacking: true } : {}),
  }));
  const src = openSources(list, localFs);
  try {
    if (list.some((s) => sameFile(dst, s.source.path))) throwIfRefused({ property: 'source', message: 'The source and the destination are the same file; convert -n never writes over its source' }, dst);
    const img = openImageForWrite(dst);
    try {
      throwIfRefused(validateConvertInto(BigInt(src.size), BigInt(img.size)), dst);
      // -n -B: only what the source's top layer holds (the image's own backing, if any, is not looked at).
      if (behaviour.overBacking) copyTopLayer(src, img, behaviour.progress, behaviour.sparse);
      else copyGuestOver(src, img, { ...(behaviour.progress ? { progress: behaviour.progress } : {}), ...(behaviour.sparse !== undefined ? { sparse: behaviour.sparse } : {}) });
    } finally {
      img.close();
    }
  } finally {
    src.close();
  }
}

/** Open and validate an import's sources (and, for --bitmaps, their bitmaps) and plan its image; nothing is created yet. */
function openImport(dst: string, options: CreateOptions, source: LocalImportSource, behaviour: ImportBehaviour): { src: GuestSource; plan: CreatePlan; bitmaps?: DirtyBitmap[]; backingSize?: number } {
  const host = behaviour.host ?? localFs;
  const sourceHost = behaviour.sourceHost ?? host;
  const given = [source, ...(behaviour.more ?? [])];
  const early = given.every((s) => s.format !== undefined) ? validateImport({ sourceFormat: sourceFormatOf(given)!, options: {}, sourceSize: 0n, sameFile: false }) : undefined;
  throwIfRefused(early);
  const list = sourcesOf(source, behaviour, sourceHost);
  const src = openSources(list, sourceHost);
  try {
    // Files on two hosts are never the same file.
    const same = (a: string) => sourceHost === host && list.some((s) => sameFile(a, s.source.path, host));
    const r = validateImport({
      sourceFormat: sourceFormatOf(list)!,
      options,
      sourceSize: BigInt(src.size),
      sameFile: same(dst) || (options.dataFile !== undefined && same(options.dataFile)),
      sources: list.length,
      ...(source.maxSize !== undefined ? { maxSize: source.maxSize } : {}),
      ...(behaviour.compressed ? { compress: true } : {}), ...(behaviour.overBacking ? { overBacking: true } : {}),
      ...(behaviour.bitmaps ? { bitmaps: true } : {}),
    });
    throwIfRefused(r, dst);
    const plan = planCreate(resolved(dst, { ...options, size: BigInt(src.size) }, {}, host));
    let bitmaps: DirtyBitmap[] | undefined;
    if (behaviour.bitmaps) {
      const list0 = src instanceof Qcow2Image ? readImageBitmaps(src.image) : [];
      throwIfRefused(validateCopyBitmaps({
        sourceFormat: list[0]!.format, bitmaps: statesOf(list0), targetCompat: plan.options.compat ?? '1.1', skipBroken: behaviour.bitmaps.skipBroken,
      }), source.label ?? source.path);
      bitmaps = list0.filter((b) => !b.inconsistent);
    }
    // -B: zeros past the end of the new backing file are left to it (qemu-img's target_backing_sectors).
    const backing = behaviour.overBacking && options.backingFile !== undefined ? probeBacking(dst, options.backingFile, options.backingFormat, host) : undefined;
    return { src, plan, ...(bitmaps ? { bitmaps } : {}), ...(backing ? { backingSize: Number(backing.size) } : {}) };
  } catch (e) {
    src.close();
    throw e;
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
  sweepStale(dirname(path), host);
  const img = Qcow2Image.open(path, {
    host,
    writable: true,
    beforeWrite: (image) => {
      const r = validateSafeRebase(imageStateOf(image), backingFile, backingFormat);
      throwIfRefused(r, path);
      throwIfRefused(validateConsistent(consistencyOf(image, image.file)), path);
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

// ---------------------------------------------------------------------------------------------
// Persistent bitmaps (qemu-img bitmap, and reading a bitmap's dirty extents)

import type { BitmapAction } from '../../model/bitmaps';
import { defaultBitmapGranularity } from '../../model/bitmaps';
import { BitmapState, inconsistentMessage, validateBitmapActions, validateCopyBitmaps } from '../../rules/bitmaps';
import { applyBitmapOps, readBitmapFile, readImageBitmaps } from '../../qcow2/ops/bitmap';
import type { DirtyBitmap, DirtyExtent } from '../../qcow2/meta/dirty-bitmap';
import { RawSource } from '../../qcow2/guest/sources/raw';

export interface BitmapCommandOptions {
  /** -b: the image --merge reads its source bitmap from (opened read-only, never changed). */
  sourceFile?: string;
  /** -F: its format (probed when omitted; a raw file has no bitmaps). */
  sourceFormat?: string;
  /** Open and close the image read-write even when refusing, as qemu-img does (BitmapOptions.rewriteOnRefusal). */
  rewriteOnRefusal?: boolean;
  /** The host the files are on (default: this machine). */
  host?: HostFs;
}

/** The rules' verdict on bitmap actions for an image as loaded (its bitmaps in memory). */
function bitmapRefusal(img: Qcow2Image, list: readonly DirtyBitmap[], path: string, name: string, actions: readonly BitmapAction[],
  source: { bitmaps: DirtyBitmap[]; size: bigint } | undefined) {
  const h = img.header;
  return validateBitmapActions(
    { compat: h.version === 2 ? '0.10' : '1.1', virtualSize: h.size, clusterSize: img.cs, bitmaps: statesOf(list), node: path },
    name, actions, source && { bitmaps: statesOf(source.bitmaps), virtualSize: source.size });
}

/** Bitmaps in memory as the rules see them. */
function statesOf(list: readonly DirtyBitmap[]): BitmapState[] {
  return list.map((b) => ({ name: b.name, granularity: b.granularity, enabled: b.enabled, inconsistent: b.inconsistent }));
}

/** The bitmaps and size of a --merge source file, opened as QEMU opens it (read-only, no backing). */
function mergeSource(file: string, format: string | undefined, host: HostFs): { bitmaps: DirtyBitmap[]; size: bigint } {
  const fmt = format ?? probeFormat(file, host);
  if (fmt === 'raw') {
    const raw = RawSource.open(file, { lock: true, host });
    try {
      return { bitmaps: [], size: BigInt(raw.size) };
    } finally {
      raw.close();
    }
  }
  if (fmt !== 'qcow2') throw new Qcow2Error('UNSUPPORTED', `Unknown driver '${fmt}': this engine reads qcow2 and raw images only`, { file, property: 'source_format' });
  const src = Qcow2Image.open(file, { backing: null, host });
  try {
    return { bitmaps: readImageBitmaps(src.image), size: src.image.header.size };
  } finally {
    src.close();
  }
}

/**
 * `qemu-img bitmap ACTIONS FILE NAME`: the image is opened read-write the QEMU way (every
 * consistent bitmap flagged in-use on disk), the actions are validated as a whole by
 * provider/rules, carried out, and every bitmap is stored at close, as qemu-img does; the bytes
 * written equal qemu-img's. A refusal is found on a read-only look first and writes nothing;
 * with `rewriteOnRefusal` the image is opened and closed as qemu-img does even then (no action
 * carried out: qemu-img would have carried out those before the refused one), then REFUSED.
 */
export function bitmapImage(path: string, name: string, actions: readonly BitmapAction[], opts: BitmapCommandOptions = {}): { warnings: string[] } {
  const host = opts.host ?? localFs;
  const source = opts.sourceFile !== undefined ? mergeSource(opts.sourceFile, opts.sourceFormat, host) : undefined;
  if (!opts.rewriteOnRefusal) {
    const look = Qcow2Image.open(path, { backing: null, host });
    try {
      throwIfRefused(bitmapRefusal(look, look.bitmaps().list, path, name, actions, source), path);
    } finally {
      look.close();
    }
  }
  const img = Qcow2Image.open(path, {
    host,
    writable: true,
    backing: null, // qemu-img bitmap opens no backing chain
    frees: 'immediate', // QEMU's reuse of freed clusters, for its exact layout
    beforeWrite: (image) => throwIfRefused(validateWrite(imageStateOf(image)), path),
  });
  let refusal;
  const warnings: string[] = [];
  try {
    if (img.header.staleBitmaps) warnings.push(staleBitmapsWarning(img.header.version));
    const bitmaps = img.bitmaps();
    // Judged again under the write lock: another writer may have come and gone since the look.
    refusal = bitmapRefusal(img, bitmaps.list, path, name, actions, source);
    if (!refusal) applyBitmapOps(bitmaps, img.header.size, img.cs, name, actions, defaultBitmapGranularity(img.cs), source?.bitmaps);
  } finally {
    img.close();
  }
  throwIfRefused(refusal, path);
  return { warnings };
}

/** QEMU's warning when it opens an image whose bitmaps extension another writer left stale. */
export function staleBitmapsWarning(version: number): string {
  return (version < 3
    ? 'This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
    : 'a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent') +
    "\nSome clusters may be leaked, run 'qemu-img check -r' on the image file to fix.";
}

/** A bitmap's dirty extents (qcow2 bitmap --dump). */
export interface BitmapExtents {
  name: string;
  granularity: number;
  enabled: boolean;
  extents: DirtyExtent[];
}

/**
 * The dirty extents of bitmap `name` in a closed image (read-only; QEMU's locks probed unless
 * `forceShare`). An inconsistent bitmap is refused as QEMU refuses it.
 */
export function dumpBitmap(path: string, name: string, opts: { forceShare?: boolean; host?: HostFs } = {}): BitmapExtents {
  const b = readBitmapFile(path, name, {
    forceShare: opts.forceShare ?? false,
    ...(opts.host !== undefined ? { host: opts.host } : {}),
    check: (e) => {
      if (e.flags.includes('in-use')) throw new Qcow2Error('REFUSED', inconsistentMessage(name), { file: path, property: 'bitmaps' });
    },
  });
  if (b === undefined) throw new Qcow2Error('NOT_FOUND', `Dirty bitmap '${name}' not found`, { file: path, property: 'bitmaps' });
  return { name: b.name, granularity: b.granularity, enabled: b.enabled, extents: b.extents() };
}
