// Opening an image: read cluster 0, validate the header and table locations as QEMU's
// qcow2_do_open does, and give bounded access to L1, refcount table and clusters.
// Every read is bounded by the format's limits: a hostile header cannot make us read or
// allocate without bound, and every failure is a Qcow2Error with the byte offset.

import * as C from './constants';
import { BlockFile, NodeBlockFile } from './blockfile';
import { Qcow2Error, invalidImage } from './errors';
import { Geometry } from './geometry';
import { Header, HEADER_V2, HEADER_V3_TAIL, decodeHeader } from './header';
import { readEntries } from './l1';
import { Snapshot, readSnapshots } from './snapshot';

const INT64_MAX = (1n << 63n) - 1n;

/** An open image. Read-only unless opened writable; the engine's writers build on it. */
export class Image {
  private constructor(
    readonly file: BlockFile,
    readonly header: Header,
    readonly geometry: Geometry,
    readonly fileName: string,
  ) {}

  /** Open and validate. Reads at most cluster 0 (<= 2 MiB), whatever the image size. */
  static open(file: BlockFile, fileName = ''): Image {
    const fileSize = file.size();
    // Cluster bits sit in the first 72 bytes; then read exactly cluster 0 (or the whole file).
    const first = file.read(0, Math.min(fileSize, C.QCOW2_V2_HEADER_LENGTH));
    let clusterSize = 1 << C.MIN_CLUSTER_BITS;
    if (first.length >= C.QCOW2_V2_HEADER_LENGTH) {
      const bits = first.readUInt32BE(HEADER_V2.offsets.clusterBits!);
      if (bits >= C.MIN_CLUSTER_BITS && bits <= C.MAX_CLUSTER_BITS) clusterSize = 2 ** bits;
    }
    const cluster0 = file.read(0, Math.min(fileSize, clusterSize));
    const header = decodeHeader(cluster0);
    const g = new Geometry(header.clusterBits, header.refcountOrder, (header.incompatibleFeatures & C.QCOW2_INCOMPAT_EXTL2) !== 0n);
    validateTables(header, g);
    return new Image(file, header, g, fileName);
  }

  /** Open a file by name. */
  static openFile(path: string, writable = false): Image {
    const f = NodeBlockFile.open(path, writable);
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
  readSnapshots(): Snapshot[] & { tableSize?: number } {
    if (this.header.nbSnapshots === 0) return [];
    return readSnapshots((o, l) => this.file.read(o, l), safeOffset(this.header.snapshotsOffset), this.header.nbSnapshots);
  }
}

export function safeOffset(offset: bigint | number): number {
  if (typeof offset === 'number') return offset;
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalidImage(`Offset 0x${offset.toString(16)} is beyond the largest file offset this engine handles (2^53)`, offset);
  }
  return Number(offset);
}

/** qcow2_validate_table: size limit, INT64 overflow, cluster alignment. */
function validateTable(g: Geometry, offset: bigint, entries: bigint, entryLen: number, maxBytes: number, name: string, fieldOffset: number): void {
  if (entries > BigInt(Math.floor(maxBytes / entryLen))) throw invalidImage(`${name} too large`, fieldOffset);
  if (INT64_MAX - entries * BigInt(entryLen) < offset || !g.isClusterAligned(offset)) {
    throw invalidImage(`${name} offset invalid`, fieldOffset);
  }
}

function validateTables(h: Header, g: Geometry): void {
  const v2 = (name: string) => HEADER_V2.offsets[name]!;
  if (h.cryptMethod !== C.QCOW_CRYPT_NONE) {
    throw new Qcow2Error('UNSUPPORTED', `Encrypted images are not supported (crypt_method ${h.cryptMethod}); use qemu-img`, { offset: v2('cryptMethod') });
  }
  if (h.refcountTableClusters === 0) {
    throw invalidImage('Image does not contain a reference count table', v2('refcountTableClusters'));
  }
  validateTable(g, h.refcountTableOffset, BigInt(h.refcountTableClusters) * BigInt(g.clusterSize / 8), 8,
    C.QCOW_MAX_REFTABLE_SIZE, 'Reference count table', v2('refcountTableOffset'));
  if (h.nbSnapshots > 0) {
    validateTable(g, h.snapshotsOffset, BigInt(h.nbSnapshots), 40, 65536 * 1024, 'Snapshot table', v2('snapshotsOffset'));
  }
  if (h.l1Size > C.QCOW_MAX_L1_SIZE / C.L1E_SIZE) throw invalidImage('Active L1 table too large', v2('l1Size'));
  validateTable(g, h.l1TableOffset, BigInt(h.l1Size), 8, C.QCOW_MAX_L1_SIZE, 'Active L1 table', v2('l1TableOffset'));
  if (BigInt(h.l1Size) < (h.size + g.l2Coverage - 1n) / g.l2Coverage) {
    throw invalidImage('L1 table is too small', v2('l1Size'));
  }
  const hasDataFile = (h.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n;
  if (!hasDataFile && (h.autoclearFeatures & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n) {
    throw invalidImage('data-file-raw requires a data file', HEADER_V2.size + HEADER_V3_TAIL.offsets.autoclearFeatures!);
  }
}
