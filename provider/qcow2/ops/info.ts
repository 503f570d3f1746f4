// `info`: an image's facts (provider/model/facts.ts) from its header. Reads only cluster 0 and
// what it points at (snapshot table, bitmap directory); never the L1/L2 tables and never the
// data file, so its cost does not grow with the image. The qemu-img text forms are the CLI's
// (provider/cli/render).

import { BlockFile, NodeBlockFile } from '../io/blockfile';
import { heldForWriting } from '../io/lock';
import { HostFs, localFs } from '../io/hostfs';
import { resolveBackingName } from '../spec/backing';
import { decodeBitmapDirectory } from '../spec/bitmaps';
import { Image } from '../meta/image';
import * as C from '../spec/constants';
import { ICOUNT_UNKNOWN } from '../spec/snapshot';
import { rawImageFacts, type ImageFacts, type SnapshotFacts } from '../../model/facts';

/** The format to read an image as: qcow2 (the default), raw, or probed from the leading bytes as qemu-img does. */
export type InfoFormat = 'qcow2' | 'raw' | 'probe';

/**
 * The facts of an open image; `allocated` is the qcow2 file's allocated bytes. `writerHolds`:
 * whether a process has the image open for writing (then an `in-use` bitmap is that process's,
 * not a sign of a crash); the caller that holds the write lock itself knows nobody else does.
 */
export function factsOfImage(img: Image, allocated: number | bigint, fileName = '', writerHolds = false): ImageFacts {
  const h = img.header;
  // The bitmap directory's and the backing name's codecs load only for images that have them.
  const bitmaps = h.bitmaps
    ? decodeBitmapDirectory(img.read(h.bitmaps.bitmapDirectoryOffset, Number(h.bitmaps.bitmapDirectorySize)), h.bitmaps.nbBitmaps,
      Number(h.bitmaps.bitmapDirectoryOffset), img.geometry.clusterSize, h.size)
      .map(({ name, granularity, flags }) => ({ name, granularity, flags: [...flags], inconsistent: flags.includes('in-use') && !writerHolds }))
    : [];
  const snapshots = img.readSnapshots().map((s) => {
    const f: SnapshotFacts = { id: s.id, name: s.name, vmStateSize: s.vmStateSize, dateSec: s.dateSec, dateNsec: s.dateNsec, vmClockNsec: s.vmClockNsec };
    if (s.icount !== undefined && s.icount !== ICOUNT_UNKNOWN) f.icount = s.icount;
    f.diskSize = s.diskSize ?? h.size; // qcow2_read_snapshots
    return f;
  });
  const facts: ImageFacts = {
    virtualSize: h.size,
    actualSize: BigInt(allocated),
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
    snapshots: snapshots.length,
    bitmaps: bitmaps.map((b) => b.name),
    detail: { snapshots, bitmaps },
  };
  if (h.dataFile !== undefined) facts.dataFile = h.dataFile;
  if (h.backingFile !== undefined) {
    facts.backingFile = h.backingFile;
    facts.detail!.fullBackingFile = resolveBackingName(fileName, h.backingFile);
  }
  if (h.backingFormat !== undefined) facts.backingFormat = h.backingFormat;
  return facts;
}

/**
 * The facts of the image file `fileName` (header only; the data file is never opened). With
 * `lock`, QEMU's locks are probed first, as qemu-img info without -U does: an image a VM is
 * writing is LOCKED. A raw file (format 'raw', or probed as raw) gives its sizes only.
 */
export function readImageFacts(fileName: string, options: { lock?: boolean; host?: HostFs; format?: InfoFormat } = {}): ImageFacts {
  const host = options.host ?? localFs;
  const { file, size } = host.open(fileName, 'read');
  try {
    if (options.lock) host.probeLock(file, fileName, 'read');
    const format = options.format === 'probe' ? (size >= 4 && file.read(0, 4).readUInt32BE(0) === C.QCOW_MAGIC ? 'qcow2' : 'raw') : options.format;
    if (format === 'raw') return rawImageFacts(BigInt(size), BigInt(file.allocatedSize()));
    const img = Image.open(file, fileName);
    const inUse = img.header.bitmaps !== undefined && file instanceof NodeBlockFile && heldForWriting(file.fd);
    return factsOfImage(img, file.allocatedSize(), fileName, inUse);
  } finally {
    file.close();
  }
}

export function infoOf(file: BlockFile, fileName: string): ImageFacts {
  return factsOfImage(Image.open(file, fileName), file.allocatedSize(), fileName);
}
