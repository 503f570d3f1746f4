// `create`: plan an image by replaying QEMU's create sequence on the refcount component (an
// empty in-memory image), then write the plan into a new file that io/publish.ts links into
// place. Options arrive validated (provider/rules decides what is legal); an existing image or
// data file is never overwritten.
//
// Write ordering: the image is invisible until the final link(2), so a crash leaves at most a
// temporary file beside it, never a half-written image at the requested path. Inside the
// temporary file we still write data area, refcount blocks, L2 tables, L1, refcount table and
// the header last, so that even the temporary file is never self-inconsistent.

import * as path from 'path';
import { BlockFile } from '../io/blockfile';
import { HostFs, localFs } from '../io/hostfs';
import { Publication, existsError } from '../io/publish';
import { writeZeros } from '../io/sparse';
import * as C from '../spec/constants';
import { Qcow2Error } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header, decodeHeader, encodeHeader } from '../spec/header';
import { resolveBackingName } from '../spec/backing';
import { encodeL1Entry } from '../spec/l1';
import { putNormalEntry } from '../spec/l2';
import type { ResolvedCreateOptions } from '../../model/options';
import { TableRefcounts } from '../meta/refcount';
import { TableCache } from '../meta/tables';
import { formatOfHead } from '../guest/sources/open';

/** What a metadata cluster last held; freed clusters keep their old bytes, as in QEMU's file. */
export type Role =
  | { kind: 'header' }
  | { kind: 'reftable'; table: BigUint64Array; chunk: number }
  | { kind: 'refblock'; offset: number }
  | { kind: 'l1'; chunk: number }
  | { kind: 'l2'; l1Index: number };

/** How an L2 table maps its guest clusters: `hostStart` null means 1:1 (external data file). */
interface L2Map { firstGuestCluster: number; count: number; hostStart: number | null }

/** Everything `create` will write, decided before anything is written. */
export interface CreatePlan {
  options: ResolvedCreateOptions;
  geometry: Geometry;
  header: Header;
  /** Final refcount state: the refcount table and blocks QEMU would have written. */
  refcounts: TableRefcounts;
  /** Cluster index -> what was last written there. */
  roles: Map<number, Role>;
  /** L1 entries as L2 table offsets (0 = none); all set entries carry COPIED. */
  l1: number[];
  l2: Map<number, L2Map>;
  /** Size of the qcow2 file. */
  fileSize: number;
  /** qcow2-file range to preallocate with zeros (falloc/full without a data file). */
  preallocRange?: { start: number; end: number };
  /** Size the data file gets (ignored when adopting: an adopted file is never resized). */
  dataFileSize?: number;
  /** Write zeros into the data file (falloc/full with a data file). */
  dataFilePrealloc: boolean;
}

/** Plan a create with validated options. Pure: touches no file. */
export function planCreate(o: ResolvedCreateOptions): CreatePlan {
  const g = new Geometry(o.clusterBits, o.refcountOrder, o.extendedL2);
  const cs = g.clusterSize;
  const hasDataFile = o.dataFile !== undefined;

  const roles = new Map<number, Role>();
  let fileEnd = 0;
  const wrote = (offset: number, length: number) => { fileEnd = Math.max(fileEnd, offset + length); };
  const setRole = (offset: number, role: Role) => { roles.set(offset / cs, role); };
  const setTableRoles = (offset: number, table: BigUint64Array) => {
    for (let c = 0; c * cs < table.length * 8; c++) setRole(offset + c * cs, { kind: 'reftable', table, chunk: c });
    wrote(offset, table.length * 8);
  };

  // qcow2_co_create: header at 0, refcount table at cluster 1 with one refblock at cluster 2.
  const initialTable = new BigUint64Array(cs / 8);
  initialTable[0] = BigInt(2 * cs);
  const blocks = new TableCache(null, cs);
  blocks.create(2 * cs);
  const rc = new TableRefcounts(g, 'immediate', blocks, initialTable, cs, {
    refblock: (offset) => { setRole(offset, { kind: 'refblock', offset }); wrote(offset, cs); },
    reftable: setTableRoles,
  });
  setRole(0, { kind: 'header' });
  setTableRoles(cs, initialTable);
  setRole(2 * cs, { kind: 'refblock', offset: 2 * cs });
  wrote(0, 3 * cs);
  if (rc.alloc(3) !== 0) throw new Error('first cluster in empty image is already in use');

  // qcow2_co_truncate from 0 to size: grow the L1 table (exact size) first.
  const size = o.size;
  const l1Size = size === 0n ? 0 : g.l1EntriesFor(size);
  const l1 = new Array<number>(l1Size).fill(0);
  let l1Offset = 0;
  if (l1Size > 0) {
    l1Offset = rc.alloc(Math.ceil((l1Size * 8) / cs)) * cs;
    for (let c = 0; c * cs < l1Size * 8; c++) setRole(l1Offset + c * cs, { kind: 'l1', chunk: c });
    wrote(l1Offset, l1Size * 8);
  }

  const l2 = new Map<number, L2Map>();
  const guestClusters = g.clustersFor(size);
  const allocL2 = (i: number) => {
    if (l1[i] === 0) {
      const off = rc.alloc(1) * cs;
      l1[i] = off;
      setRole(off, { kind: 'l2', l1Index: i });
      wrote(off, cs);
    }
  };
  const rangeOf = (i: number) => {
    const first = i * g.l2Entries;
    return { first, count: Math.min(g.l2Entries, guestClusters - first) };
  };

  let preallocRange: CreatePlan['preallocRange'];
  let dataFileSize: number | undefined;
  let dataFilePrealloc = false;
  const roundedSize = Number(g.roundUp(size));

  const preallocateMetadata = () => {
    // preallocate_co: per L2 table, the table first (first fit), then its data clusters.
    let lastEnd = 0;
    for (let i = 0; i < l1Size; i++) {
      const { first, count } = rangeOf(i);
      allocL2(i);
      if (hasDataFile) {
        l2.set(i, { firstGuestCluster: first, count, hostStart: null });
      } else {
        const host = rc.alloc(count) * cs;
        l2.set(i, { firstGuestCluster: first, count, hostStart: host });
        lastEnd = host + count * cs;
      }
    }
    if (hasDataFile) {
      if (roundedSize > 0) dataFileSize = roundedSize;
    } else if (lastEnd > fileEnd) {
      wrote(0, lastEnd); // bdrv_co_truncate of the image file to the last data cluster
    }
  };

  switch (o.preallocation) {
    case 'off':
      if (hasDataFile) dataFileSize = Number(size);
      break;
    case 'metadata':
      preallocateMetadata();
      break;
    case 'falloc':
    case 'full':
      if (hasDataFile) {
        preallocateMetadata();
        dataFilePrealloc = true;
        break;
      }
      {
        // qcow2_co_truncate, falloc/full: new self-covering refcount structures after the
        // current end, the data area after them, then L2 tables wherever first fit puts them.
        let oldFileSize = fileEnd;
        const last = rc.lastCluster(Math.ceil(oldFileSize / cs));
        if ((last + 1) * cs < oldFileSize) {
          oldFileSize = (last + 1) * cs;
          fileEnd = oldFileSize;
        } else {
          oldFileSize = Math.ceil(oldFileSize / cs) * cs;
        }
        const nData = guestClusters;
        const nL2 = Math.ceil(nData / g.l2Entries) + 1;
        const allocStart = rc.refcountArea(oldFileSize, nData + nL2, true, 0, 0);
        if (rc.allocAt(allocStart / cs, nData) !== nData) throw new Error('data clusters not contiguous');
        const end = allocStart + nData * cs;
        if (end > fileEnd) {
          preallocRange = { start: fileEnd, end };
          wrote(0, end);
        }
        for (let i = 0; i < l1Size; i++) {
          const { first, count } = rangeOf(i);
          allocL2(i);
          l2.set(i, { firstGuestCluster: first, count, hostStart: allocStart + first * cs });
        }
      }
      break;
  }

  let incompat = 0n;
  if (hasDataFile) incompat |= C.QCOW2_INCOMPAT_DATA_FILE;
  if (o.compressionType === 'zstd') incompat |= C.QCOW2_INCOMPAT_COMPRESSION;
  if (o.extendedL2) incompat |= C.QCOW2_INCOMPAT_EXTL2;
  const header: Header = {
    magic: C.QCOW_MAGIC,
    version: o.version,
    backingFileOffset: 0n,
    backingFileSize: 0,
    clusterBits: o.clusterBits,
    size,
    cryptMethod: C.QCOW_CRYPT_NONE,
    l1Size,
    l1TableOffset: BigInt(l1Offset),
    refcountTableOffset: BigInt(rc.reftableOffset),
    refcountTableClusters: (rc.reftable.length * 8) / cs,
    nbSnapshots: 0,
    snapshotsOffset: 0n,
    incompatibleFeatures: incompat,
    compatibleFeatures: o.lazyRefcounts ? C.QCOW2_COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: o.dataFileRaw ? C.QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: o.refcountOrder,
    headerLength: o.version === 3 ? C.QCOW2_V3_HEADER_LENGTH : C.QCOW2_V2_HEADER_LENGTH,
    compressionType: o.compressionType === 'zstd' ? C.QCOW2_COMPRESSION_TYPE_ZSTD : C.QCOW2_COMPRESSION_TYPE_ZLIB,
    unknownFields: new Uint8Array(0),
    unknownExtensions: [],
  };
  if (o.backingFile !== undefined) header.backingFile = o.backingFile;
  if (o.backingFormat !== undefined) header.backingFormat = o.backingFormat;
  if (o.dataFile !== undefined) header.dataFile = o.dataFile;
  // Encode now so a name that does not fit in cluster 0 fails before any file exists.
  try {
    encodeHeader(header, cs);
  } catch (e) {
    if (o.backingFile === undefined) throw e;
    throw new Qcow2Error('INVALID_OPTION', `Could not assign backing file '${o.backingFile}' with format '${o.backingFormat ?? ''}': No space left on device`, { property: 'backing_file' });
  }

  const plan: CreatePlan = {
    options: o, geometry: g, header, refcounts: rc, roles, l1, l2, fileSize: fileEnd, dataFilePrealloc,
  };
  if (preallocRange) plan.preallocRange = preallocRange;
  if (dataFileSize !== undefined) plan.dataFileSize = dataFileSize;
  return plan;
}

const BATCH = 4 << 20;

/** Bytes of one metadata cluster according to its final role. */
function clusterBytes(plan: CreatePlan, role: Role, out: Uint8Array): void {
  const { geometry: g } = plan;
  const cs = g.clusterSize;
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  switch (role.kind) {
    case 'header':
      out.set(encodeHeader(plan.header, cs));
      return;
    case 'reftable': {
      const per = cs / 8;
      for (let k = 0; k < per; k++) {
        const e = role.table[role.chunk * per + k];
        if (e) dv.setBigUint64(k * 8, e);
      }
      return;
    }
    case 'refblock':
      out.set(plan.refcounts.blocks.get(role.offset).buf);
      return;
    case 'l1': {
      const per = cs / 8;
      for (let k = 0; k < per; k++) {
        const off = plan.l1[role.chunk * per + k];
        if (off) dv.setBigUint64(k * 8, encodeL1Entry(BigInt(off), true));
      }
      return;
    }
    case 'l2': {
      const m = plan.l2.get(role.l1Index);
      if (!m) return;
      const step = g.l2EntrySize;
      for (let k = 0; k < m.count; k++) {
        putNormalEntry(dv, k * step, m.hostStart === null ? (m.firstGuestCluster + k) * cs : m.hostStart + k * cs);
      }
      return;
    }
  }
}

/** Write a plan into an empty BlockFile: data area, refblocks, L2, L1, reftable, header last. */
export function writePlan(plan: CreatePlan, file: BlockFile): void {
  const cs = plan.geometry.clusterSize;
  if (plan.preallocRange) writeZeros(file, plan.preallocRange.start, plan.preallocRange.end - plan.preallocRange.start, true);
  const order: Record<Role['kind'], number> = { refblock: 0, l2: 1, l1: 2, reftable: 3, header: 4 };
  const byKind: Array<Array<[number, Role]>> = [[], [], [], [], []];
  for (const [ci, role] of plan.roles) byKind[order[role.kind]]!.push([ci, role]);
  // One reused batch buffer: L2 tables of a 1 TiB image are 128 MiB, streamed, never held.
  const batch = new Uint8Array(Math.max(cs, BATCH));
  for (const list of byKind) {
    list.sort((a, b) => a[0] - b[0]);
    let i = 0;
    while (i < list.length) {
      // Coalesce runs of adjacent clusters into one write of at most BATCH bytes.
      let j = i + 1;
      while (j < list.length && list[j]![0] === list[j - 1]![0] + 1 && (j - i + 1) * cs <= BATCH) j++;
      const start = list[i]![0] * cs;
      const buf = batch.subarray(0, (j - i) * cs);
      buf.fill(0);
      for (let k = i; k < j; k++) clusterBytes(plan, list[k]![1], buf.subarray((k - i) * cs, (k - i + 1) * cs));
      const len = Math.min(buf.length, plan.fileSize - start);
      if (len > 0) file.write(start, len === buf.length ? buf : buf.subarray(0, len));
      i = j;
    }
  }
  if (file.size() !== plan.fileSize) file.truncate(plan.fileSize);
}

/** What a backing file is, read without trusting it (qemu-img opens it to learn the size). */
export interface BackingProbe {
  /** The path opened: relative names are relative to the new image's folder. */
  path: string;
  /** Virtual size under the given format, or the detected one when none was given. */
  size: bigint;
  detectedFormat: 'qcow2' | 'raw';
}

/** The refusal for a backing file that cannot be opened, naming the path qemu-img would. */
export function backingOpenError(full: string, e: unknown): Qcow2Error {
  const detail = Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND' ? 'No such file or directory' : String((e as Error).message);
  return new Qcow2Error('NOT_FOUND', `Could not open '${full}': ${detail}\nCould not open backing image.`, { property: 'backing_file', file: full });
}

/**
 * What a backing file is, from its first bytes (`head`: its first cluster, or the whole file when
 * smaller) and its length: the size under `format`, or under the format its magic says.
 */
export function backingProbeOf(full: string, head: Buffer, size: number, format: string | undefined): BackingProbe {
  const detectedFormat = formatOfHead(head, size);
  const fmt = format ?? detectedFormat;
  let virtual: bigint;
  if (fmt === 'raw') virtual = BigInt(size);
  else if (fmt === 'qcow2') virtual = decodeHeader(head).size;
  else throw new Qcow2Error('UNSUPPORTED', `Backing format '${fmt}' is not supported: use qcow2 or raw`, { property: 'backing_fmt' });
  return { path: full, size: virtual, detectedFormat };
}

/** Open a backing file read-only and learn its size; NOT_FOUND names the path qemu-img would. */
export function probeBacking(imagePath: string, backing: string, format: string | undefined, host: HostFs = localFs): BackingProbe {
  const full = resolveBackingName(imagePath, backing);
  let opened;
  try {
    opened = host.open(full, 'read');
  } catch (e) {
    throw backingOpenError(full, e);
  }
  const f = opened.file;
  try {
    return backingProbeOf(full, f.read(0, Math.min(opened.size, 2 << 20)), opened.size, format);
  } finally {
    f.close();
  }
}

/**
 * Why a new image may not be created, given what is at its path and its data file's (EXISTS for
 * an existing image, or an existing data file not adopted; NOT_FOUND for a data file to adopt
 * that is not there), or undefined.
 */
export function newImageFilesRefusal(imagePath: string, o: Pick<ResolvedCreateOptions, 'dataFile' | 'adoptDataFile'>, imageThere: boolean, dataFileThere: boolean): Qcow2Error | undefined {
  if (imageThere) return existsError(imagePath, 'image');
  if (o.dataFile === undefined) return undefined;
  if (dataFileThere && !o.adoptDataFile) {
    return new Qcow2Error('EXISTS',
      `Data file '${o.dataFile}' already exists; qemu-img would truncate it, we refuse. ` +
      'To wrap the existing raw file unchanged, adopt it (CLI: --adopt-data-file; resource: adopt: true)',
      { file: o.dataFile, property: 'data_file' });
  }
  if (!dataFileThere && o.adoptDataFile) {
    return new Qcow2Error('NOT_FOUND', `Data file '${o.dataFile}' to adopt does not exist`, { file: o.dataFile, property: 'data_file' });
  }
  return undefined;
}

/**
 * The files a new image must not clobber: an existing image path is EXISTS; an existing data
 * file is EXISTS unless adopted (then it must exist). Shared by every engine's create, so they
 * refuse with the same words before touching anything.
 */
export function assertNewImageFiles(imagePath: string, o: Pick<ResolvedCreateOptions, 'dataFile' | 'adoptDataFile'>, host: HostFs = localFs): void {
  const imageThere = host.lstat(imagePath) !== undefined;
  const refusal = newImageFilesRefusal(imagePath, o, imageThere, !imageThere && o.dataFile !== undefined && host.stat(o.dataFile) !== undefined);
  if (refusal !== undefined) throw refusal;
}

/**
 * Write a planned image at `imagePath`. Never overwrites (assertNewImageFiles); an adopted data
 * file is never written or resized. On failure nothing new is left behind and nothing that
 * existed is changed.
 */
export function writeNewImage(imagePath: string, plan: CreatePlan, host: HostFs = localFs): void {
  const o = plan.options;
  assertNewImageFiles(imagePath, o, host);
  if (host.stat(path.dirname(imagePath)) === undefined) {
    throw new Qcow2Error('NOT_FOUND', `Could not create '${imagePath}': No such file or directory`, { file: imagePath, property: 'path' });
  }
  const pub = new Publication(host);
  try {
    if (o.dataFile !== undefined && !o.adoptDataFile) {
      const df = pub.create(o.dataFile, 'data file');
      const dsize = plan.dataFileSize ?? 0;
      if (plan.dataFilePrealloc) writeZeros(df, 0, dsize, true);
      df.truncate(dsize);
    }
    writePlan(plan, pub.create(imagePath, 'image'));
    pub.publish();
  } catch (e) {
    pub.abort();
    throw e;
  }
}

/**
 * Write a new raw image of `size` bytes at `imagePath` (qemu-img create -f raw): sparse, or with
 * or with its blocks allocated (falloc, full: written with zeros). Never overwrites; published like a
 * qcow2 image, so a failure leaves nothing behind.
 */
export function writeNewRawImage(imagePath: string, size: bigint, preallocation: 'off' | 'falloc' | 'full', host: HostFs = localFs): void {
  if (host.lstat(imagePath) !== undefined) throw existsError(imagePath, 'image');
  if (host.stat(path.dirname(imagePath)) === undefined) {
    throw new Qcow2Error('NOT_FOUND', `Could not create '${imagePath}': No such file or directory`, { file: imagePath, property: 'path' });
  }
  const pub = new Publication(host);
  try {
    const f = pub.create(imagePath, 'image');
    // falloc and full both write zeros, as create does for qcow2 (the blocks end up allocated).
    if (preallocation !== 'off') writeZeros(f, 0, Number(size), true);
    f.truncate(Number(size));
    // QEMU's file driver, growing an empty file without preallocation, writes zeros over its
    // first block "to optimize future alignment probing" (allocate_first_block): 4 KiB, or one
    // sector when the file is smaller. That block then counts as data (map, measure).
    if (preallocation === 'off' && size > 0n) f.write(0, new Uint8Array(size < 4096n ? 512 : 4096));
    pub.publish();
  } catch (e) {
    pub.abort();
    throw e;
  }
}
