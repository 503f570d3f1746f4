// Opening an image: read cluster 0, validate the header and table locations as QEMU's
// qcow2_do_open does, and give bounded access to L1, refcount table and clusters.
// Every read is bounded by the format's limits: a hostile header cannot make us read or
// allocate without bound, and every failure is a Qcow2Error with the byte offset.

import * as C from '../spec/constants';
import { BlockFile } from '../io/blockfile';
import { HostFs, localFs } from '../io/hostfs';
import { Qcow2Error, invalidImage } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header, HEADER_V2, decodeHeader } from '../spec/header';
import { readEntries } from '../spec/l1';
import { Snapshot, SnapshotTableRepair, readSnapshots } from '../spec/snapshot';

/** An open image. Read-only unless opened writable; the engine's writers build on it. */
export class Image {
  private constructor(
    readonly file: BlockFile,
    readonly header: Header,
    readonly geometry: Geometry,
    readonly fileName: string,
  ) {}

  /**
   * The image as QEMU's qcow2_snapshot_load_tmp shows it, for reading only: the snapshot's L1
   * table in place of the active one; the virtual size stays the image's.
   */
  atSnapshot(sn: Snapshot): Image {
    return new Image(this.file, { ...this.header, l1TableOffset: sn.l1TableOffset, l1Size: sn.l1Size }, this.geometry, this.fileName);
  }

  /**
   * Open and validate. Reads at most cluster 0 (<= 2 MiB), whatever the image size. `check`:
   * open as QEMU's check does (BDRV_O_CHECK), leaving the snapshot table's place and size to the
   * check itself.
   */
  static open(file: BlockFile, fileName = '', opts: { check?: boolean } = {}): Image {
    const fileSize = file.size();
    // Cluster bits sit in the first 72 bytes; then read exactly cluster 0 (or the whole file).
    const first = file.read(0, Math.min(fileSize, C.QCOW2_V2_HEADER_LENGTH));
    let clusterSize = 1 << C.MIN_CLUSTER_BITS;
    if (first.length >= C.QCOW2_V2_HEADER_LENGTH) {
      const bits = first.readUInt32BE(HEADER_V2.offsets.clusterBits!);
      if (bits >= C.MIN_CLUSTER_BITS && bits <= C.MAX_CLUSTER_BITS) clusterSize = 2 ** bits;
    }
    const cluster0 = file.read(0, Math.min(fileSize, clusterSize));
    const header = decodeHeader(cluster0, { snapshotTable: !opts.check });
    if (header.cryptMethod !== C.QCOW_CRYPT_NONE) {
      throw new Qcow2Error('UNSUPPORTED', `Encrypted images are not supported (crypt_method ${header.cryptMethod}); use qemu-img`,
        { offset: HEADER_V2.offsets.cryptMethod! });
    }
    const g = new Geometry(header.clusterBits, header.refcountOrder, (header.incompatibleFeatures & C.QCOW2_INCOMPAT_EXTL2) !== 0n);
    return new Image(file, header, g, fileName);
  }

  /** Open a file by name. */
  static openFile(path: string, writable = false, host: HostFs = localFs): Image {
    const f = host.open(path, writable ? 'write' : 'read').file;
    try {
      return Image.open(f, path);
    } catch (e) {
      f.close();
      throw e;
    }
  }

  close(): void { this.file.close(); }

  get version(): number { return this.header.version; }
  get hasDataFile(): boolean { return (this.header.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n; }
  get dataFileRaw(): boolean { return (this.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n; }
  get dirty(): boolean { return (this.header.incompatibleFeatures & C.QCOW2_INCOMPAT_DIRTY) !== 0n; }
  get corrupt(): boolean { return (this.header.incompatibleFeatures & C.QCOW2_INCOMPAT_CORRUPT) !== 0n; }
  get extendedL2(): boolean { return this.geometry.extendedL2; }

  /** Read bytes at a 64-bit offset; offsets beyond 2^53 are refused, not rounded. */
  read(offset: bigint | number, length: number): Buffer {
    return this.file.read(safeOffset(offset), length);
  }

  /** The active L1 table (at most 32 MiB by validation). */
  readL1(): bigint[] {
    const h = this.header;
    if (h.l1Size === 0) return [];
    return readEntries(this.read(h.l1TableOffset, h.l1Size * 8), h.l1Size);
  }

  /** The refcount table (at most 8 MiB by validation). */
  readReftable(): bigint[] {
    const h = this.header;
    const n = (h.refcountTableClusters * this.geometry.clusterSize) / 8;
    return readEntries(this.read(h.refcountTableOffset, n * 8), n);
  }

  readCluster(offset: bigint | number): Buffer {
    return this.read(offset, this.geometry.clusterSize);
  }

  /** Internal snapshots (bounded: at most 65536 entries of bounded size). */
  readSnapshots(opts: { count?: number; repair?: SnapshotTableRepair } = {}): Snapshot[] & { tableSize?: number } {
    const count = opts.count ?? this.header.nbSnapshots;
    if (count === 0) return [];
    return readSnapshots((o, l) => this.file.read(o, l), safeOffset(this.header.snapshotsOffset), count, opts.repair);
  }
}

export function safeOffset(offset: bigint | number): number {
  if (typeof offset === 'number') return offset;
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidImage(`Offset 0x${offset.toString(16)} is beyond the largest file offset this engine handles (2^53)`, offset);
  }
  return Number(offset);
}

