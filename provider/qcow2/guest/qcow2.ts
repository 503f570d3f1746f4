// A qcow2 image as a guest view: reads and block status over mappings (guest/mapping.ts), and
// guest writes, write-zeroes and discard with QEMU 7.2's semantics (qcow2-cluster.c), changing
// the metadata (guest/metadata.ts), which commit() writes in its stated order. Opening (files,
// locks, chains) is guest/sources/open.ts.

import { BlockFile, readNew } from '../io/blockfile';
import { HostFs, localFs } from '../io/hostfs';
import { ImageLock } from '../io/lock';
import { decompressCluster } from '../spec/compress';
import { Qcow2Error, invalidImage } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header } from '../spec/header';
import { L2Halves, L2_LO_ZERO, SUBCLUSTERS_ALL, compressedEntry, normalEntry, parseCompressedEntry } from '../spec/l2';
import * as C from '../spec/constants';
import { writeZeros } from '../io/sparse';
import { Image, safeOffset } from '../meta/image';
import { clearUnknownAutoclear } from './autoclear';
import { ImageBitmaps } from './bitmaps';
import { Mapping, lookup } from './mapping';
import { Qcow2Metadata } from './metadata';
import type { FreePolicy } from '../meta/refcount';
import { BlockStatus, GuestSource, OpenOptions } from './source';
import { openQcow2 } from './sources/open';

/** Options of writeZeroes. */
export interface ZeroOptions {
  /** QEMU's BDRV_REQ_MAY_UNMAP (qemu-io `write -z -u`): allocated clusters are freed. */
  unmap?: boolean;
}

/** What an open image holds besides its metadata (the files it owns close with it). */
export interface Qcow2Parts {
  file: BlockFile;
  image: Image;
  fileName: string;
  dataFile: BlockFile | null;
  dataFileName: string | undefined;
  backing: GuestSource | null;
  writable: boolean;
  host: HostFs;
  locks: ImageLock[];
  owned: Array<{ close(): void }>;
  ownsFile: boolean;
  frees?: FreePolicy;
}

/**
 * An open qcow2 image with its data file and backing chain. Read-only unless opened writable;
 * writes are kept in memory and reach the file in guest/metadata.ts's order on commit() (and
 * close()).
 */
export class Qcow2Image implements GuestSource {
  readonly format = 'qcow2' as const;
  readonly size: number;
  readonly g: Geometry;
  readonly cs: number;
  readonly file: BlockFile;
  readonly image: Image;
  readonly fileName: string;
  readonly dataFile: BlockFile | null;
  readonly dataFileName: string | undefined;
  readonly backing: GuestSource | null;
  readonly writable: boolean;
  readonly meta: Qcow2Metadata;
  private readonly host: HostFs;
  private guestWriteStarted = false;
  private compressedCache: { entry: bigint; data: Buffer } | undefined;
  private metaPrealloc: boolean | undefined;
  private closed = false;
  private bitmapState: ImageBitmaps | undefined;

  constructor(private readonly parts: Qcow2Parts) {
    const h = parts.image.header;
    if (h.size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error('UNSUPPORTED', `Virtual size ${h.size} is beyond what this engine's data path handles (2^53)`, { file: parts.fileName });
    }
    if (parts.image.hasDataFile && !parts.dataFile) {
      throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: parts.fileName });
    }
    this.size = Number(h.size);
    this.file = parts.file;
    this.image = parts.image;
    this.fileName = parts.fileName;
    this.dataFile = parts.dataFile;
    this.dataFileName = parts.dataFileName;
    this.backing = parts.backing;
    this.writable = parts.writable;
    this.host = parts.host;
    this.g = parts.image.geometry;
    this.cs = this.g.clusterSize;
    this.meta = new Qcow2Metadata(parts.file, parts.image, parts.dataFile, parts.host, parts.frees);
    if (this.writable) clearUnknownAutoclear(this.meta);
  }

  /** Open an image file with its data file and backing chain. */
  static open(fileName: string, opts: OpenOptions = {}, depth = 0): Qcow2Image {
    return openQcow2(fileName, opts, depth);
  }

  /** An image over already-open files (tests, in-memory images). The caller owns the files. */
  static over(file: BlockFile, opts: { writable?: boolean; dataFile?: BlockFile | null; backing?: GuestSource | null; fileName?: string; host?: HostFs } = {}): Qcow2Image {
    const image = Image.open(file, opts.fileName ?? '');
    return new Qcow2Image({
      file, image, fileName: opts.fileName ?? '', dataFile: opts.dataFile ?? null, dataFileName: image.header.dataFile,
      backing: opts.backing ?? null, writable: opts.writable ?? false, host: opts.host ?? localFs, locks: [], owned: [], ownsFile: false,
    });
  }

  /** The header as it will be written on the next header write. */
  get header(): Header { return this.meta.header; }
  get hasDataFile(): boolean { return this.image.hasDataFile; }
  get dataFileRaw(): boolean { return (this.meta.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n; }
  get extendedL2(): boolean { return this.g.extendedL2; }
  private get v3(): boolean { return this.meta.header.version >= 3; }

  /** The mapping of this layer's guest bytes from `offset` (at most `length`). */
  lookup(offset: number, length: number): Mapping {
    return lookup(this.meta, offset, length, this.backing ? this.backing.size : null);
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  /** Guest bytes into `target`: one read per host-contiguous run, straight into the buffer. */
  readInto(target: Uint8Array, offset: number): void {
    const end = Math.min(offset + target.length, this.size);
    let p = offset;
    while (p < end) {
      const m = this.lookup(p, end - p);
      const sub = target.subarray(p - offset, p - offset + m.length);
      switch (m.kind) {
        case 'allocated':
          (this.dataFile ?? this.file).readInto(sub, m.host!);
          break;
        case 'backing':
          this.backing!.readInto(sub, p);
          break;
        case 'compressed':
          sub.set(this.decompressed(m.entry!).subarray(m.within!, m.within! + m.length));
          break;
        default:
          sub.fill(0);
      }
      p += m.length;
    }
    if (p < offset + target.length) target.fill(0, Math.max(0, p - offset));
  }

  private decompressed(entry: bigint): Buffer {
    if (this.compressedCache?.entry === entry) return this.compressedCache.data;
    if (this.hasDataFile) throw invalidImage(`Compressed cluster entry 0x${entry.toString(16)} in an image with an external data file`);
    const r = parseCompressedEntry(entry, this.g.clusterBits);
    const data = decompressCluster(this.file.read(safeOffset(r.offset), r.size), this.cs, this.meta.header.compressionType, r.offset);
    this.compressedCache = { entry, data };
    return data;
  }

  isZeroFast(offset: number, length: number): boolean {
    if (length === 0) return true;
    if (offset >= this.size || offset + length > this.size) return false;
    const st = this.blockStatus(offset, length, false);
    if (st.length < length) return false;
    if (st.zero) return true;
    if (st.data) return false;
    if (!this.backing || offset >= this.backing.size) return true;
    return this.backing.isZeroFast(offset, length);
  }

  /** This layer's status (qcow2_co_block_status plus the block layer's no-backing ZERO rule). */
  blockStatus(offset: number, length: number, wantZero = true): BlockStatus {
    const len0 = Math.min(length, this.size - offset);
    const m = this.lookup(offset, len0);
    let n = m.length;
    // Compressed clusters come one mapping each; their status is one run.
    while (m.kind === 'compressed' && n < len0) {
      const next = this.lookup(offset + n, len0 - n);
      if (next.kind !== 'compressed') break;
      n += next.length;
    }
    const unallocated = m.kind === 'backing' || m.kind === 'unallocated';
    const st: BlockStatus = {
      length: n,
      data: m.kind === 'allocated' || m.kind === 'compressed',
      zero: m.kind === 'zero' || (m.kind === 'unallocated' && (wantZero || !this.backing)),
      allocated: !unallocated,
    };
    if (m.host !== undefined) {
      st.offset = m.host;
      st.file = this.hasDataFile ? this.dataFileName : this.fileName;
    }
    if (wantZero && m.kind === 'allocated' && this.metadataPreallocation()) {
      // BDRV_BLOCK_RECURSE: a preallocated cluster that is a hole in its file reads as zeros.
      const e = this.host.extent(this.dataFile ?? this.file, m.host!, st.length);
      st.length = Math.max(1, Math.min(st.length, e.length));
      if (!e.data) st.zero = true;
    }
    return st;
  }

  /** qcow2_detect_metadata_preallocation: more refcounted clusters than the file has allocated. */
  metadataPreallocation(): boolean {
    if (this.metaPrealloc !== undefined) return this.metaPrealloc;
    const realClusters = Math.floor(this.file.allocatedSize() / this.cs);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const endCluster = Math.ceil(this.file.size() / this.cs);
    const rc = this.meta.refcounts;
    let count = 0;
    for (let i = 0; i < endCluster && count < threshold; i++) if (rc.get(i) !== 0) count++;
    this.metaPrealloc = count >= threshold;
    return this.metaPrealloc;
  }

  /** Whether guest cluster data at `offset` is allocated in this layer (zero clusters count). */
  allocatedHere(offset: number): { allocated: boolean; length: number } {
    const st = this.blockStatus(offset, this.size - offset, false);
    return { allocated: st.allocated, length: st.length };
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  private checkRange(offset: number, length: number, op: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new Qcow2Error('REFUSED', `${op} at offset ${offset}, ${length} bytes: beyond the end of the image (${this.size} bytes)`, { file: this.fileName });
    }
  }

  /**
   * The image's persistent bitmaps (guest/bitmaps.ts), loaded on first use. On a writable image
   * this is QEMU's read-write open: consistent bitmaps are flagged `in-use` on disk until close()
   * stores them, and a stale bitmaps extension (autoclear bit 0 cleared by another writer) is
   * dropped from the header.
   */
  bitmaps(): ImageBitmaps {
    if (this.bitmapState === undefined) {
      if (this.writable && this.meta.header.staleBitmaps) this.meta.writeHeaderFields(() => undefined);
      this.bitmapState = ImageBitmaps.open(this.meta, this.fileName, this.writable);
    }
    return this.bitmapState;
  }

  /**
   * Before the first guest write: the bitmaps are opened (flagged in-use on disk), so that every
   * write is recorded in the recording ones and a crash leaves them known inconsistent.
   */
  private beginGuestWrite(offset: number, length: number): void {
    if (!this.writable) throw new Qcow2Error('REFUSED', `'${this.fileName}' is open read-only`, { file: this.fileName });
    if (!this.guestWriteStarted) {
      this.guestWriteStarted = true;
      if (this.meta.header.bitmaps !== undefined) this.bitmaps();
    }
    this.bitmapState?.markDirty(offset, length);
  }

  private writeHost(host: number, data: Uint8Array): void {
    (this.dataFile ?? this.file).write(host, data);
    this.meta.noteDataWritten();
  }

  private setEntry(gc: number, e: L2Halves): void {
    this.meta.setEntry(gc, e);
    this.compressedCache = undefined;
  }

  /** COPIED | host, every subcluster data (a cluster filled from the guest view). */
  private ownedEntry(host: number): L2Halves {
    return normalEntry(host, true, this.extendedL2 ? SUBCLUSTERS_ALL : 0);
  }

  /** Write guest data; partial clusters are completed from the current guest view (copy-on-write). */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length, 'Write');
    if (data.length === 0) return;
    this.beginGuestWrite(offset, data.length);
    const end = offset + data.length;
    let p = offset;
    while (p < end) {
      const gc = Math.floor(p / this.cs);
      const e = this.meta.entry(gc);
      if (this.meta.owns(e)) {
        p = this.writeInPlace(gc, e, p, end, data, offset);
        continue;
      }
      // A run of clusters that all need a new allocation: one contiguous allocation, one write.
      let last = gc;
      const lastGc = Math.floor((end - 1) / this.cs);
      while (last < lastGc && last - gc < 1024 && !this.meta.owns(this.meta.entry(last + 1))) last++;
      p = this.writeNew(gc, last, p, end, data, offset);
    }
  }

  /** Clusters gc..last get new host clusters holding guest view + data. */
  private writeNew(gc: number, last: number, p: number, end: number, data: Uint8Array, base: number): number {
    const cs = this.cs;
    const n = last - gc + 1;
    const runStart = gc * cs;
    const runEnd = Math.min((last + 1) * cs, end);
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    // Whole clusters of new data need no copy-on-write: write straight from the caller's buffer.
    const whole = p === runStart && runEnd === (last + 1) * cs;
    const buf = whole ? src.subarray(p - base, runEnd - base) : Buffer.alloc(n * cs);
    // Copy-on-write: the head and tail clusters not fully covered keep their current guest bytes.
    const fill = (c: number) => {
      const s = c * cs;
      if (!(p <= s && end >= s + cs)) this.readInto(buf.subarray(s - runStart, s - runStart + Math.min(cs, this.size - s)), s);
    };
    if (!whole) {
      fill(gc);
      if (last !== gc) fill(last);
      src.copy(buf, p - runStart, p - base, runEnd - base);
    }
    const olds: L2Halves[] = [];
    for (let c = gc; c <= last; c++) olds.push(this.meta.entry(c));
    let hostStart: number;
    if (this.hasDataFile) {
      hostStart = runStart;
    } else {
      // The L2 tables first, so that the data run stays contiguous after them (as QEMU's layout).
      for (let c = gc; c <= last; c += this.g.l2Entries - (c % this.g.l2Entries)) this.meta.l2ForWrite(Math.floor(c / this.g.l2Entries));
      hostStart = this.meta.allocClusters(n) * cs;
    }
    // A last cluster the image ends inside is written whole too: QEMU's copy-on-write of the rest
    // of a partly written cluster zeroes it up to the cluster's end.
    this.writeHost(hostStart, buf);
    for (let i = 0; i < n; i++) {
      // Extended L2: the new cluster was filled from the guest view, so every subcluster is data.
      this.setEntry(gc + i, this.ownedEntry(hostStart + i * cs));
      if (!this.hasDataFile) this.meta.release(olds[i]!, false);
    }
    return runEnd;
  }

  /**
   * One whole guest cluster, already compressed (io/compressor.ts), as
   * qcow2_alloc_compressed_cluster_offset stores it: the L2 table first, then the bytes packed
   * after the previous compressed cluster's. Only into a cluster with nothing allocated (QEMU:
   * compression cannot overwrite), never with a data file.
   */
  writeCompressed(gc: number, compressed: Uint8Array): void {
    const s = gc * this.cs;
    this.checkRange(s, Math.min(this.cs, this.size - s), 'Write');
    if (this.hasDataFile) throw new Qcow2Error('UNSUPPORTED', `'${this.fileName}' has an external data file, which cannot hold compressed clusters`, { file: this.fileName });
    if (compressed.length === 0 || compressed.length >= this.cs) throw new Qcow2Error('IO', `A compressed cluster of ${compressed.length} bytes does not fit a ${this.cs}-byte cluster`);
    this.beginGuestWrite(s, this.cs);
    this.meta.l2ForWrite(Math.floor(gc / this.g.l2Entries));
    const t = this.meta.typeOf(this.meta.entry(gc));
    if (t === 'normal' || t === 'compressed' || t === 'zero-alloc') {
      throw new Qcow2Error('IO', `Guest cluster ${gc} of '${this.fileName}' is already allocated: a compressed cluster cannot overwrite it`, { file: this.fileName });
    }
    const host = this.meta.allocBytes(compressed.length);
    this.writeHost(host, compressed);
    this.setEntry(gc, compressedEntry(host, compressed.length, this.g.clusterBits));
  }

  /** A cluster we own (COPIED): data goes in place; zero or unallocated subclusters are filled first. */
  private writeInPlace(gc: number, e: L2Halves, p: number, end: number, data: Uint8Array, base: number): number {
    const cs = this.cs;
    const s = gc * cs;
    const stop = Math.min(end, s + cs);
    const host = this.meta.hostOf(e);
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const needsFill = this.meta.typeOf(e) === 'zero-alloc' || (this.extendedL2 && e.allocBits !== SUBCLUSTERS_ALL);
    if (!needsFill) {
      this.writeHost(host + (p - s), src.subarray(p - base, stop - base));
      return stop;
    }
    const buf = p === s && stop === s + cs ? Buffer.alloc(cs) : this.read(s, cs);
    src.copy(buf, p - s, p - base, stop - base);
    const len = Math.min(cs, this.size - s);
    this.writeHost(host, buf.subarray(0, Math.ceil(len / 512) * 512));
    this.setEntry(gc, this.ownedEntry(host));
    return stop;
  }

  /**
   * Host space for whole clusters gc..gc+n-1 of an import into a new image: unallocated ones
   * get one contiguous host run (their L2 entries set), which is returned, and the caller writes
   * the clusters' bytes there (at most up to the image's end, rounded up to 512); commit()
   * writes the metadata after. With a data file the run is the guest range itself (clusters
   * preallocated there at their guest offsets, as data-file-raw has them, are used as they
   * are). Undefined when the clusters are something else (preallocated in the image file):
   * then write() places them.
   */
  placeNewClusters(gc: number, n: number): number | undefined {
    const cs = this.cs;
    const length = Math.min(n * cs, this.size - gc * cs);
    this.checkRange(gc * cs, length, 'Write');
    let fresh = 0;
    const entries = this.meta.entries(gc, n);
    const unallocated = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      const t = this.meta.typeOf(e);
      if (t === 'unallocated') unallocated[i] = 1;
      if (t === 'unallocated' && (!this.extendedL2 || e.allocBits === 0)) fresh++;
      else if (!(this.hasDataFile && t === 'normal' && this.meta.owns(e) && this.meta.hostOf(e) === (gc + i) * cs && (!this.extendedL2 || e.allocBits === SUBCLUSTERS_ALL))) return undefined;
    }
    this.beginGuestWrite(gc * cs, length);
    let host: number;
    if (this.hasDataFile) {
      host = gc * cs;
    } else {
      // The L2 tables first, so that the data run stays contiguous after them (as in writeNew).
      for (let c = gc; c < gc + n; c += this.g.l2Entries - (c % this.g.l2Entries)) this.meta.l2ForWrite(Math.floor(c / this.g.l2Entries));
      host = this.meta.allocClusters(n) * cs;
    }
    if (fresh > 0) {
      this.meta.setEntries(gc, n, (i) => (unallocated[i] === 1 ? this.ownedEntry(host + i * cs) : undefined));
      this.compressedCache = undefined;
    }
    this.meta.noteDataWritten();
    return host;
  }

  /**
   * Write zeroes as QEMU's qcow2_co_pwrite_zeroes behind the block layer: whole clusters get the
   * ZERO flag (keeping their offset unless `unmap`); a partial cluster is zeroed the same way when
   * the rest of it already reads as zeros and it holds no data, otherwise zeros are written.
   * On a data-file-raw image the data file range is zeroed too.
   */
  writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): void {
    this.checkRange(offset, length, 'Write zeroes');
    if (length === 0) return;
    this.beginGuestWrite(offset, length);
    const cs = this.cs;
    const end = offset + length;
    if ((!this.v3 && this.hasBacking) || this.extendedL2) {
      // v2 has no ZERO flag: over a backing file QEMU gets -ENOTSUP and falls back to writing
      // zeros (without one, zeroing is a discard: zeroizeClusters); extended L2 images are
      // zeroed by writing zeros too, which keeps every subcluster bitmap exact.
      this.writeZeroBuffers(offset, end);
      return;
    }
    let p = offset;
    while (p < end) {
      const cStart = Math.floor(p / cs) * cs;
      const cEnd = cStart + cs;
      if (p === cStart && end >= cEnd) {
        // The aligned middle.
        const stop = Math.floor(end / cs) * cs;
        this.zeroizeClusters(cStart, stop, opts.unmap ?? false);
        p = stop;
        continue;
      }
      const stop = Math.min(end, cEnd);
      const t = this.meta.typeOf(this.meta.entry(cStart / cs));
      const restZero = this.isZeroFast(cStart, p - cStart) && this.isZeroFast(stop, Math.min(cEnd, this.size) - stop) && cEnd <= this.size;
      if (restZero && (t === 'unallocated' || t === 'zero-plain' || t === 'zero-alloc')) {
        this.zeroizeClusters(cStart, cEnd, opts.unmap ?? false);
      } else {
        this.writeZeroBuffers(p, stop);
      }
      p = stop;
    }
  }

  private writeZeroBuffers(from: number, to: number): void {
    const chunk = Math.max(this.cs, 1 << 20);
    const zeros = Buffer.alloc(Math.min(chunk, to - from));
    for (let p = from; p < to; p += chunk) this.write(p, zeros.subarray(0, Math.min(chunk, to - p)));
  }

  /** qcow2_subcluster_zeroize / zero_in_l2_slice over whole clusters [from, to). */
  /** The image has a backing file: one opened below it, or one its header names (an image opened without its chain). */
  private get hasBacking(): boolean {
    return this.backing !== null || (this.header.backingFile !== undefined && this.header.backingFile !== '');
  }

  private zeroizeClusters(from: number, to: number, unmap: boolean): void {
    if (this.dataFileRaw) writeZeros(this.dataFile!, from, to - from);
    if (!this.v3) {
      // qcow2_subcluster_zeroize on v2 without a backing file: a discard (unallocated reads as zeros).
      this.discard(from, to - from);
      return;
    }
    const cs = this.cs;
    for (let gc = from / cs; gc * cs < to; gc++) {
      const e = this.meta.entry(gc);
      const t = this.meta.typeOf(e);
      const allocated = t === 'normal' || t === 'zero-alloc' || t === 'compressed';
      const doUnmap = t === 'compressed' || (unmap && allocated);
      const next: L2Halves = doUnmap ? { hi: 0, lo: L2_LO_ZERO, allocBits: 0, zeroBits: 0 } : { ...e, lo: (e.lo | L2_LO_ZERO) >>> 0, allocBits: 0, zeroBits: 0 };
      if (next.hi === e.hi && next.lo === e.lo) continue;
      this.setEntry(gc, next);
      if (doUnmap) this.meta.release(e, true);
    }
  }

  /**
   * Discard as QEMU's qcow2_co_pdiscard (full_discard = false): only whole clusters (and the
   * partial last cluster of an unaligned image); v3 clusters read as zeros afterwards, v2 ones
   * over a backing file are left alone. With a data file the range is punched in it.
   */
  discard(offset: number, length: number): void {
    this.checkRange(offset, length, 'Discard');
    if (length === 0) return;
    if (!this.v3 && this.backing) return;
    this.beginGuestWrite(offset, length);
    const cs = this.cs;
    const end = offset + length;
    const first = Math.ceil(offset / cs);
    let stop = Math.floor(end / cs);
    if (end === this.size && this.size % cs !== 0 && first * cs < end) stop = Math.ceil(end / cs);
    for (let gc = first; gc < stop; gc++) {
      const e = this.meta.entry(gc);
      const t = this.meta.typeOf(e);
      const allocated = t === 'normal' || t === 'zero-alloc' || t === 'compressed';
      let next = e;
      if (this.backing || allocated) {
        next = this.extendedL2
          ? { hi: 0, lo: 0, allocBits: 0, zeroBits: SUBCLUSTERS_ALL }
          : { hi: 0, lo: this.v3 ? L2_LO_ZERO : 0, allocBits: 0, zeroBits: 0 };
      }
      if (next.hi === e.hi && next.lo === e.lo && next.allocBits === e.allocBits && next.zeroBits === e.zeroBits) continue;
      this.setEntry(gc, next);
      this.meta.release(e, true);
    }
  }

  /** Point the image at another backing file (written with the header, last, on commit). */
  setBacking(file: string, format: string | undefined): void {
    if (!this.writable) throw new Qcow2Error('REFUSED', `'${this.fileName}' is open read-only`);
    this.meta.changeHeader((h) => {
      if (file === '') {
        delete h.backingFile;
        delete h.backingFormat;
      } else {
        h.backingFile = file;
        if (format !== undefined) h.backingFormat = format; else delete h.backingFormat;
      }
    });
  }

  /** Bytes of metadata waiting in the caches. */
  get dirtyBytes(): number {
    return this.meta.dirtyBytes;
  }

  /** Write everything changed, in the order stated in guest/metadata.ts. */
  commit(): void {
    if (!this.writable) return;
    this.meta.commit();
    this.compressedCache = undefined;
    this.metaPrealloc = undefined;
  }

  /** Whether maybeCommit(limit) would commit now. */
  commitDue(limit = 32 << 20): boolean {
    return this.dirtyBytes > limit;
  }

  /** Commit when the caches hold more than `limit` bytes (bounded memory for long writes). */
  maybeCommit(limit = 32 << 20): void {
    if (this.commitDue(limit)) this.commit();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.writable) {
        this.commit();
        if (this.bitmapState !== undefined) {
          // QEMU's close: the bitmaps are stored after everything else, then their frees land.
          this.bitmapState.store();
          this.commit();
        }
      }
    } finally {
      for (const o of [...this.parts.owned].reverse()) o.close();
      for (const l of this.parts.locks) l.release();
      if (this.parts.ownsFile) this.file.close(); // over() leaves its files to the caller
    }
  }
}
