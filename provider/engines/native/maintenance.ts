// The native engine's maintenance operations: the repair QEMU makes when it opens a dirty image,
// internal snapshots, compare and commit (check -r: repair.ts). Glue as ops.ts is: the files
// opened and locked as QEMU opens them, provider/rules asked, provider/qcow2 doing the work.

import * as fs from 'fs';
import { Qcow2Error } from '../../model/errors';
import type { SnapshotFacts } from '../../model/facts';
import { BlockFile, NodeBlockFile } from '../../qcow2/io/blockfile';
import { HostFs, localFs } from '../../qcow2/io/hostfs';
import { lockImage } from '../../qcow2/io/lock';
import { Image } from '../../qcow2/meta/image';
import { resolveBackingName, hasProtocolPrefix } from '../../qcow2/spec/backing';
import type { CompareResult } from '../../qcow2/ops/compare';
import type { CommitTarget, EmptyOptions } from '../../qcow2/ops/commit';
import type { GuestSource, ProgressFn } from '../../qcow2/guest/source';
import { validateResize, validateWritable } from '../../rules/amend';
import { validateWrite } from '../../rules/data';
import { validateSnapshot, validateSnapshotRefcounts } from '../../rules/snapshot';
import { validateCommit } from '../../rules/commit';
import type { CommitFacts, CommitRequest, SnapshotRequest } from '../../rules/types';
import { throwIfRefused } from '../refusal';
import { clearUnknownAutoclearOf } from '../../qcow2/guest/autoclear';
import { AmendBehaviour, imageStateOf, resizeImage, runPlan, withWritableImage, withWritableImageAsync } from './ops';
import { repairFailed, repairImage } from '../../qcow2/ops/repair';
import { punchIn, withLockedFile } from './repair';
import { applySnapshot, createSnapshot, deleteSnapshot, findByIdOrName, findByName } from '../../qcow2/ops/snapshot';
import { readImageFacts } from '../../qcow2/ops/info';

// compare and commit, and the guest view they read through, load when first run: `check -r`
// and snapshots do without them (module loading is much of a short command's cost).
const compare = () => require('../../qcow2/ops/compare') as typeof import('../../qcow2/ops/compare');
const commit = () => require('../../qcow2/ops/commit') as typeof import('../../qcow2/ops/commit');
const guest = () => require('../../qcow2/guest/qcow2') as typeof import('../../qcow2/guest/qcow2');
const raw = () => require('../../qcow2/guest/sources/raw') as typeof import('../../qcow2/guest/sources/raw');
const sources = () => require('../../qcow2/guest/sources/open') as typeof import('../../qcow2/guest/sources/open');

/**
 * What QEMU does when it opens a dirty image (lazy refcounts left stale) read/write: check -r
 * all. Returns the lines it prints; none for a clean image. A corrupt image is refused, as
 * QEMU refuses to open it read/write.
 */
export function repairDirtyImage(path: string, host: HostFs = localFs): string[] {
  return withLockedFile(path, host, (file) => {
    const img = Image.open(file, path);
    throwIfRefused(validateWritable(imageStateOf(img)), path);
    if (!img.dirty) return [];
    const r = repairImage(file, 'all', { punch: punchIn(file, host) });
    if (r.failed || r.result.checkErrors) throw repairFailed(path);
    return r.messages;
  });
}

/** Open for a change and, when the image is dirty, repair it first as QEMU's open does. */
function withRepairedImage<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => T): T {
  return withWritableImage(path, behaviour, (opened, file) => fn(repairedOnOpen(path, behaviour, opened, file), file));
}

/** withRepairedImage for a change that overlaps its I/O. */
function withRepairedImageAsync<T>(path: string, behaviour: AmendBehaviour, fn: (img: Image, file: BlockFile) => Promise<T>): Promise<T> {
  return withWritableImageAsync(path, behaviour, (opened, file) => fn(repairedOnOpen(path, behaviour, opened, file), file));
}

/** The image as QEMU's read/write open leaves it: unknown autoclear bits cleared, a dirty image repaired. */
function repairedOnOpen(path: string, behaviour: AmendBehaviour, opened: Image, file: BlockFile): Image {
  const img = clearUnknownAutoclearOf(file, opened) ? Image.open(file, path) : opened;
  if (!img.dirty) return img;
  const r = repairImage(file, 'all', { punch: punchIn(file, behaviour.host) });
  if (r.failed || r.result.checkErrors) throw repairFailed(path);
  return Image.open(file, path);
}

// ---------------------------------------------------------------------------------------------
// snapshot

/**
 * `qemu-img snapshot -l/-c/-d/-a`. A listing reads the header's table (with -U, ignoring
 * holders); the changes take QEMU's write lock, ask provider/rules, and write in the
 * crash-safe order of qcow2/meta/ordered.ts. Applying a snapshot of another size resizes the
 * image first, as QEMU does (one commit), then reverts it (another).
 */
export function snapshotImage(path: string, req: SnapshotRequest, behaviour: AmendBehaviour & { forceShare?: boolean } = {}): SnapshotFacts[] | undefined {
  if (req.action === 'list') {
    const facts = readImageFacts(path, { lock: !behaviour.forceShare, ...(behaviour.host ? { host: behaviour.host } : {}) });
    return facts.hasDataFile ? [] : facts.detail?.snapshots ?? [];
  }
  return withRepairedImage(path, behaviour, (opened, file) => {
    let img = opened;
    const state = imageStateOf(img);
    const list = img.readSnapshots();
    const index = req.action === 'apply' ? findByIdOrName(list, req.name) : req.action === 'delete' ? findByName(list, req.name) : -1;
    throwIfRefused(validateSnapshot(state, req, index >= 0), path);
    // QEMU discards the clusters a snapshot operation frees (holes in the image file).
    const opts = { punch: punchIn(file, behaviour.host) };
    if (req.action === 'create') {
      const made = createSnapshot(file, img, req.name, req.time, opts);
      if (typeof made === 'string') throwIfRefused(validateSnapshotRefcounts(req.name, made), path);
    } else if (req.action === 'delete') {
      deleteSnapshot(file, img, index, opts);
    } else {
      const size = list[index]!.diskSize ?? img.header.size;
      if (size !== img.header.size) {
        throwIfRefused(validateResize(state, size, true), path);
        runPlan(img, file, path, { size }, behaviour.host);
        img = Image.open(file, path);
      }
      applySnapshot(file, img, index, opts);
    }
    return undefined;
  });
}

// ---------------------------------------------------------------------------------------------
// compare

export interface CompareInput { path: string; format?: string }

/**
 * `qemu-img compare [-f F] [-F F] [-s] [-U] A B`: read-only, each through its backing chain.
 * Asynchronous: the reads run ahead of the comparison (ops/compare.ts); the images stay open
 * until it settles.
 */
export async function compareImageFiles(a: CompareInput, b: CompareInput, opts: { strict?: boolean; forceShare?: boolean; progress?: ProgressFn; host?: HostFs } = {}): Promise<CompareResult> {
  const host = opts.host ?? localFs;
  const open = (i: CompareInput) => sources().openSource(i.path, i.format ?? sources().probeFileFormat(i.path, host), { lock: !opts.forceShare, host });
  const sa = open(a);
  try {
    const sb = open(b);
    try {
      const o: { strict?: boolean; progress?: ProgressFn } = {};
      if (opts.strict) o.strict = true;
      if (opts.progress) o.progress = opts.progress;
      return await compare().compareSources(sa, sb, o);
    } finally {
      sb.close();
    }
  } finally {
    sa.close();
  }
}

// ---------------------------------------------------------------------------------------------
// commit

interface ChainLink { name: string; format: 'qcow2' | 'raw'; backing?: string; backingFormat?: string }

/** The chain below an image by name (headers only), as QEMU resolves the names. */
function chainOf(path: string, img: Image): ChainLink[] {
  const out: ChainLink[] = [];
  let link: ChainLink = { name: path, format: 'qcow2' };
  if (img.header.backingFile) link.backing = img.header.backingFile;
  if (img.header.backingFormat) link.backingFormat = img.header.backingFormat;
  out.push(link);
  while (link.backing !== undefined && link.backing !== '') {
    if (out.length >= 64) throw new Qcow2Error('INVALID_IMAGE', `Backing chain of '${path}' is deeper than 64 images (a loop?)`, { file: path });
    const name = resolveBackingName(link.name, link.backing);
    const format = (link.backingFormat ?? sources().probeFileFormat(name)) as string;
    if (format !== 'qcow2' && format !== 'raw') {
      throw new Qcow2Error('UNSUPPORTED', `Unknown driver '${format}': this engine reads qcow2 and raw images only`, { file: name });
    }
    const next: ChainLink = { name, format };
    if (format === 'qcow2') {
      const sub = Image.openFile(name);
      try {
        if (sub.header.backingFile) next.backing = sub.header.backingFile;
        if (sub.header.backingFormat) next.backingFormat = sub.header.backingFormat;
      } finally {
        sub.close();
      }
    }
    out.push(next);
    link = next;
  }
  return out;
}

const realpath = (p: string): string | undefined => {
  try {
    return fs.realpathSync(p);
  } catch {
    return undefined;
  }
};

/** bdrv_find_backing_image: the index in `chain` of the image `base` names, or -1. */
function findBase(chain: readonly ChainLink[], base: string): number {
  for (let i = 0; i + 1 < chain.length; i++) {
    const link = chain[i]!;
    const stored = link.backing!;
    if (hasProtocolPrefix(base) || hasProtocolPrefix(stored)) {
      if (base === stored || base === resolveBackingName(link.name, stored)) return i + 1;
      continue;
    }
    const want = realpath(resolveBackingName(link.name, base));
    const have = realpath(resolveBackingName(link.name, stored));
    if (want !== undefined && want === have) return i + 1;
  }
  return -1;
}

const isRegular = (p: string) => localFs.stat(p)?.kind === 'file';

/** Bytes written between two starts of writeback of the base (see targetOf). */
const WRITEBACK_STEP = 16 << 20;

/**
 * The base as commit writes it. Its dirty pages go to the medium while the copy goes on
 * (writeback started when it is opened, then every WRITEBACK_STEP bytes written): the flush
 * before its metadata is written then waits only for the last of them.
 */
function targetOf(base: GuestSource, file: BlockFile | undefined): CommitTarget {
  const data = base instanceof guest().Qcow2Image ? base.dataFile ?? base.file : file!;
  localFs.startWriteback?.(data);
  let unflushed = 0;
  const wrote = (n: number) => {
    unflushed += n;
    if (unflushed < WRITEBACK_STEP) return;
    unflushed = 0;
    localFs.startWriteback?.(data);
  };
  if (base instanceof guest().Qcow2Image) {
    const cs = base.cs;
    return {
      clusterSize: cs,
      write: (o, d) => { base.write(o, d); wrote(d.length); },
      place: (o, n) => {
        // Whole clusters only (the last one may end with the image).
        if (o % cs !== 0 || (n % cs !== 0 && o + n !== base.size)) return undefined;
        const host = base.placeNewClusters(o / cs, Math.ceil(n / cs));
        if (host === undefined) return undefined;
        wrote(n);
        return { file: data, host };
      },
      writeZeroes: (o, n) => base.writeZeroes(o, n, { unmap: true }),
      discard: (o, n) => base.discard(o, n),
      checkpointDue: () => base.commitDue(),
      checkpoint: () => base.maybeCommit(),
    };
  }
  const f = file!;
  return {
    clusterSize: 0,
    write: (o, d) => { f.write(o, d); wrote(d.length); },
    place: (o, n) => { wrote(n); return { file: f, host: o }; },
    checkpointDue: () => false,
    writeZeroes: (o, n) => localFs.punchHole(f, o, n),
    discard: (o, n) => localFs.punchHole(f, o, n),
    checkpoint: () => undefined,
  };
}

/**
 * `qemu-img commit [-b BASE] [-d] FILE`: the data of FILE (and of the images between it and
 * BASE) is written into BASE, a file of FILE's backing chain, named there; then FILE is emptied
 * unless `keep` (-d; -b implies it). Writes only into the base and, when emptying, FILE; both
 * must be regular files. The base grows to FILE's size when it is smaller (as QEMU's job does).
 */
export function commitImage(path: string, req: CommitRequest, behaviour: { progress?: ProgressFn } = {}): Promise<void> {
  return withRepairedImageAsync(path, {}, async (img, file) => {
    const chain = chainOf(path, img);
    const baseIndex = chain.length < 2 ? -1 : req.base === undefined ? 1 : findBase(chain, req.base);
    const facts: CommitFacts = { file: path, hasBacking: chain.length > 1, baseFound: baseIndex > 0 };
    if (baseIndex > 0 && !isRegular(chain[baseIndex]!.name)) facts.notRegular = chain[baseIndex]!.name;
    else if (!req.keep && !isRegular(path)) facts.notRegular = path;
    throwIfRefused(validateCommit(req, facts), path);
    const base = chain[baseIndex]!;
    const topSize = Number(img.header.size);

    // The base grows to the top's size first (mirror_run truncates it so).
    if (base.format === 'qcow2') {
      const b = Image.openFile(base.name);
      const smaller = b.header.size < img.header.size;
      b.close();
      if (smaller) resizeImage(base.name, img.header.size);
    }

    const opened: Array<{ close(): void }> = [];
    try {
      let baseSrc: GuestSource;
      let baseFile: NodeBlockFile | undefined;
      if (base.format === 'qcow2') {
        baseSrc = guest().Qcow2Image.open(base.name, {
          writable: true,
          beforeWrite: (image) => throwIfRefused(validateWrite(imageStateOf(image)), base.name),
        });
        opened.push(baseSrc);
      } else {
        baseFile = NodeBlockFile.open(base.name, true);
        opened.push(baseFile);
        const lock = lockImage(baseFile.fd, base.name, 'write');
        opened.push({ close: () => lock.release() });
        if (baseFile.size() < topSize) baseFile.truncate(topSize);
        baseSrc = raw().RawSource.over(baseFile, base.name);
      }
      // The images between, read-locked, each over the one below; the top over them.
      let below = baseSrc;
      for (let i = baseIndex - 1; i >= 1; i--) {
        const layer = guest().Qcow2Image.open(chain[i]!.name, { backing: below });
        opened.push(layer);
        below = layer;
      }
      const top = guest().Qcow2Image.open(path, { lock: false, backing: below });
      opened.push(top);
      await commit().commitInto(top, commit().layersAbove(top, baseSrc), targetOf(baseSrc, baseFile), behaviour.progress);
    } finally {
      for (const o of opened.reverse()) o.close();
    }

    if (!req.keep) {
      const after = Image.open(file, path);
      let dataFile: NodeBlockFile | undefined;
      try {
        if (after.hasDataFile && after.header.dataFile !== undefined) dataFile = NodeBlockFile.open(after.header.dataFile, true);
        const opts: EmptyOptions = { punch: punchIn(file) };
        if (dataFile) opts.punchDataFile = punchIn(dataFile);
        commit().emptyImage(file, after, opts);
      } finally {
        dataFile?.close();
      }
    }
  });
}
