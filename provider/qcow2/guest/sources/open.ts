// Opening guest views: a qcow2 image with its external data file and its backing chain (each
// file locked as QEMU locks it: write on image and data file, read on backing files), or a raw
// file; the format probed from the magic where none is given.

import * as path from 'path';
import { BlockFile } from '../../io/blockfile';
import { HostFs, localFs } from '../../io/hostfs';
import { ImageLock } from '../../io/lock';
import * as C from '../../spec/constants';
import { Qcow2Error } from '../../../model/errors';
import { resolveBackingName } from '../../spec/backing';
import { Header } from '../../spec/header';
import { SnapshotSelector, findSnapshot, validateSnapshotL1 } from '../../spec/snapshot';
import { Image } from '../../meta/image';
import { Qcow2Image } from '../qcow2';
import { GuestSource, OpenOptions } from '../source';
import { RawSource } from './raw';

const MAX_CHAIN = 64;
/** The too-deep refusal, passed up the chain as it is. */
const CHAIN_ERRORS = new WeakSet<object>();

/** Raw or qcow2 by the magic in a file's first bytes, as QEMU's probe tells these two apart. */
export function formatOfHead(head: Uint8Array, size: number): 'raw' | 'qcow2' {
  return size >= 4 && head.length >= 4 && Buffer.from(head.buffer, head.byteOffset, 4).readUInt32BE(0) === C.QCOW_MAGIC ? 'qcow2' : 'raw';
}

/** Raw or qcow2 by the magic, as QEMU's probe tells these two apart. */
export function probeFormat(file: BlockFile, size = file.size()): 'raw' | 'qcow2' {
  return formatOfHead(size >= 4 ? file.read(0, 4) : new Uint8Array(0), size);
}

/** probeFormat of a file by name. */
export function probeFileFormat(fileName: string, host: HostFs = localFs): 'raw' | 'qcow2' {
  const { file, size } = host.open(fileName, 'read');
  try {
    return probeFormat(file, size);
  } finally {
    file.close();
  }
}

/** Open a file as a guest view in the given format (qcow2: with its backing chain), read-only. */
export function openSource(fileName: string, format: string | undefined, opts: OpenOptions = {}, depth = 0): GuestSource {
  const host = opts.host ?? localFs;
  const fmt = format ?? probeFileFormat(fileName, host);
  if (fmt === 'raw') {
    if (opts.snapshot) throw new Qcow2Error('UNSUPPORTED', "Failed to load snapshot: Block format 'raw' used by device '' does not support internal snapshots", { file: fileName });
    return RawSource.open(fileName, { lock: opts.lock ?? true, host });
  }
  if (fmt === 'qcow2') return openQcow2(fileName, { ...opts, writable: false }, depth);
  throw new Qcow2Error('UNSUPPORTED', `Unknown driver '${fmt}': this engine reads qcow2 and raw images only`, { file: fileName });
}

/** The backing chain below an image, or null; names resolved as QEMU resolves them. */
function openBacking(imagePath: string, h: Header, opts: OpenOptions, depth: number): GuestSource | null {
  if (h.backingFile === undefined || h.backingFile === '') return null;
  if (depth + 1 >= MAX_CHAIN) {
    const e = new Qcow2Error('INVALID_IMAGE', `Could not open backing file: the backing chain is deeper than ${MAX_CHAIN} images; ` +
      `a backing file that names the image itself or one above it makes a loop (qcow2 info --backing-chain shows it)`, { file: imagePath, property: 'backing_file' });
    CHAIN_ERRORS.add(e);
    throw e;
  }
  const full = resolveBackingName(imagePath, h.backingFile);
  opts.onReference?.('backing file', h.backingFile, full, imagePath);
  try {
    const sub: OpenOptions = { lock: opts.lock ?? true };
    if (opts.host) sub.host = opts.host;
    if (opts.onReference) sub.onReference = opts.onReference;
    return openSource(full, h.backingFormat ?? opts.backingFormat, sub, depth + 1);
  } catch (e) {
    // Said once, not once per layer of the loop.
    if (CHAIN_ERRORS.has(e as object)) throw e;
    const msg = Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND' ? `Could not open '${full}': No such file or directory` : (e as Error).message;
    throw new Qcow2Error(Qcow2Error.isInstance(e) ? e.code : 'IO', `Could not open backing file: ${msg}`, { file: full, property: 'backing_file', cause: e });
  }
}

/**
 * qcow2_snapshot_load_tmp: the image with the snapshot's L1 table (validated as QEMU validates
 * it), read-only. QEMU's words when there is no such snapshot.
 */
function snapshotView(image: Image, sel: SnapshotSelector, writable: boolean): Image {
  if (writable) throw new Error('internal: a snapshot is opened read-only');
  const list = image.readSnapshots();
  const i = findSnapshot(list, sel);
  if (i < 0) throw new Qcow2Error('NOT_FOUND', "Failed to load snapshot: Can't find snapshot", { file: image.fileName });
  const sn = list[i]!;
  const bad = validateSnapshotL1(sn, image.file.size(), image.geometry.clusterSize);
  if (bad) throw new Qcow2Error('INVALID_IMAGE', `Failed to load snapshot: ${bad}`, { file: image.fileName });
  return image.atSnapshot(sn);
}

/** Open a qcow2 image file with its data file and backing chain. */
export function openQcow2(fileName: string, opts: OpenOptions = {}, depth = 0): Qcow2Image {
  const writable = opts.writable ?? false;
  const lock = opts.lock ?? true;
  const host = opts.host ?? localFs;
  const mode = writable ? 'write' : 'read';
  const opened = host.open(fileName, mode).file;
  const locks: ImageLock[] = [];
  const owned: Array<{ close(): void }> = [];
  try {
    if (lock) locks.push(host.lock(opened, fileName, mode));
    const file = opts.wrapFile ? opts.wrapFile(opened) : opened;
    let image = Image.open(file, fileName);
    if (opts.snapshot) image = snapshotView(image, opts.snapshot, writable);
    const h = image.header;
    let dataFile: BlockFile | null = null;
    if (image.hasDataFile) {
      if (opts.dataFile) {
        dataFile = opts.dataFile;
      } else {
        if (h.dataFile === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: fileName });
        // A relative name is relative to the working directory (QCOW2-NOTES §4), as QEMU opens it.
        opts.onReference?.('data file', h.dataFile, path.resolve(h.dataFile), fileName);
        dataFile = host.open(h.dataFile, mode).file;
        owned.push(dataFile);
        if (lock) locks.push(host.lock(dataFile, h.dataFile, mode));
      }
    }
    let backing: GuestSource | null;
    if (opts.backing !== undefined) {
      backing = opts.backing;
    } else {
      backing = openBacking(fileName, h, opts, depth);
      if (backing) owned.push(backing);
    }
    if (writable) opts.beforeWrite?.(image);
    return new Qcow2Image({
      file, image, fileName, dataFile, dataFileName: h.dataFile, backing, writable, host, locks, owned, ownsFile: true,
      ...(opts.frees !== undefined ? { frees: opts.frees } : {}),
    });
  } catch (e) {
    for (const o of owned.reverse()) o.close();
    for (const l of locks) l.release();
    opened.close();
    throw e;
  }
}
