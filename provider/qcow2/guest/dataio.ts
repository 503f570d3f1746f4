// The data path: guest reads through L1/L2 (every cluster type, extended-L2 subclusters,
// compressed clusters, external data files, qcow2 and raw backing chains) and guest writes,
// write-zeroes and discard with QEMU 7.2's semantics (qcow2-cluster.c), allocating through the
// refcount structures.
//
// Write-ordering invariant (QEMU's, qcow2-refcount.c beside qcow2_cache_set_dependency): a
// reference is never on disk before the refcount that accounts for it, and a refcount is never
// dropped on disk before the last reference to it is gone. commit() writes, with a flush
// (barrier) between the steps that have anything to write:
//   1. guest data (new clusters only become visible through step 3);
//   2. refcount blocks holding increments, then the refcount table entries that point at new
//      blocks; a refcount table that had to move is published here by a header write, as
//      QEMU's qcow2_refcount_area does, because step 3 may rely on clusters only it covers;
//   3. L2 tables (new ones and changed ones);
//   4. the L1 table;
//   5. the header (autoclear bits, backing file of a rebase): last;
//   6. refcount decrements of clusters freed by the steps above (deferred until here: a freed
//      cluster is not reused before the table that dropped it is on disk).
// The only header writes outside a commit come first, before any guest data is written: the
// autoclear bits we do not maintain are cleared on opening for writing (unknown bits) and on
// the first guest write (bit 0, bitmaps: this engine does NOT update persistent bitmaps, so, as
// the qcow2 spec requires of such a writer, it clears the bit; QEMU then treats the bitmaps as
// inconsistent and `check -r` reclaims their clusters). Bit 1 (data-file-raw) is kept because
// every write here keeps the data file a valid raw image: host offset = guest offset, zeros
// written to it on write-zeroes, holes punched on discard.

import * as fs from 'fs';
import { BlockFile, NodeBlockFile } from '../io/blockfile';
import * as C from '../spec/constants';
import { decompressCluster, parseCompressedEntry } from '../spec/compress';
import { Qcow2Error, invalidImage } from '../../model/errors';
import { Geometry } from '../spec/geometry';
import { Header, encodeHeader } from '../spec/header';
import { Image, safeOffset } from '../meta/image';
import { fullBackingFilename } from '../ops/info';
import { decodeL2Entry } from '../spec/l2';
import { ImageLock, LockMode, lockImage } from '../io/lock';
import { getRefcount, refcountMax, setRefcount } from '../spec/refcount';
import { extentAt, punchHole, writeZeros } from '../io/sparse';

/** What one layer says about a guest range (QEMU's BDRV_BLOCK_* for that layer alone). */
export interface BlockStatus {
  /** Bytes from the asked offset with the same status (> 0). */
  length: number;
  data: boolean;
  zero: boolean;
  /** DATA or ZERO came from this layer itself (QEMU's BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /** Host offset in `file` when QEMU reports one (OFFSET_VALID). */
  offset?: number;
  file?: string;
}

/** A guest view: a raw file, or a qcow2 image with its backing chain. */
export interface GuestSource {
  readonly format: 'raw' | 'qcow2';
  /** Virtual size in bytes. */
  readonly size: number;
  readonly fileName: string;
  readonly backing: GuestSource | null;
  /** Guest bytes; past the virtual size they read as zeros. */
  read(offset: number, length: number): Buffer;
  /** The same into a caller's buffer (streaming without an allocation per chunk). */
  readInto?(target: Buffer, offset: number): void;
  /** QEMU's bdrv_co_is_zero_fast (want_zero = false): known zero without reading data. */
  isZeroFast(offset: number, length: number): boolean;
  /** This layer's status at `offset` (want_zero = true, as map asks), at most `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus;
  close(): void;
}

/** Options for opening an image or a chain. */
export interface OpenOptions {
  writable?: boolean;
  /** Take QEMU's image locks (default true): write on image and data file, read on backing files. */
  lock?: boolean;
  /** Wrap the image file (tests record writes here). */
  wrapFile?: (f: BlockFile) => BlockFile;
  /** Use this file as the external data file instead of opening the stored name. */
  dataFile?: BlockFile;
  /** Use this guest view as the backing chain instead of opening the stored name (null: none). */
  backing?: GuestSource | null;
  /** Format of the backing file when the image does not record one (default: probe). */
  backingFormat?: string;
  /**
   * Called with the opened image before anything is written (writable opens): the engine puts
   * its legality check (provider/rules) here; a throw closes everything again.
   */
  beforeWrite?: (img: Image) => void;
}

const MAX_CHAIN = 64;
const ALL_ALLOC = 0xffffffffn;
const ALL_ZERO = 0xffffffffn << 32n;

function lockOrClose(f: NodeBlockFile, name: string, mode: LockMode, locks: ImageLock[]): void {
  try {
    locks.push(lockImage(f.fd, name, mode));
  } catch (e) {
    f.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Raw files

/** A raw file as a guest view (QEMU's raw format over file-posix). */
export class RawSource implements GuestSource {
  readonly format = 'raw' as const;
  readonly backing = null;
  readonly size: number;
  private constructor(readonly file: BlockFile, readonly fileName: string, private readonly locks: ImageLock[]) {
    this.size = file.size();
  }

  static open(fileName: string, opts: { lock?: boolean; writable?: boolean } = {}): RawSource {
    const f = NodeBlockFile.open(fileName, opts.writable ?? false);
    const locks: ImageLock[] = [];
    if (opts.lock ?? true) lockOrClose(f, fileName, opts.writable ? 'write' : 'read', locks);
    return new RawSource(f, fileName, locks);
  }

  static over(file: BlockFile, fileName: string): RawSource { return new RawSource(file, fileName, []); }

  read(offset: number, length: number): Buffer {
    const b = Buffer.allocUnsafe(length);
    this.readInto(b, offset);
    return b;
  }

  readInto(target: Buffer, offset: number): void {
    const length = target.length;
    const n = Math.max(0, Math.min(length, this.size - offset));
    let done = 0;
    if (this.file instanceof NodeBlockFile) {
      while (done < n) {
        const r = fs.readSync(this.file.fd, target, done, n - done, offset + done);
        if (r === 0) break;
        done += r;
      }
    } else if (n > 0) {
      this.file.read(offset, n).copy(target);
      done = n;
    }
    if (done < length) target.fill(0, done);
  }

  isZeroFast(offset: number, length: number): boolean {
    return length === 0 || offset >= this.size;
  }

  blockStatus(offset: number, length: number): BlockStatus {
    const len = Math.min(length, this.size - offset);
    const e = extentAt(this.file, offset, len, this.size);
    return { length: Math.max(1, e.length), data: e.data, zero: !e.data, allocated: true, offset, file: this.fileName };
  }

  close(): void {
    for (const l of this.locks) l.release();
    this.file.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Opening chains

/** Detect raw or qcow2 by the magic, as QEMU's probe does for these two. */
export function probeFormat(fileName: string): 'raw' | 'qcow2' {
  const f = NodeBlockFile.open(fileName, false);
  try {
    return f.size() >= 4 && f.read(0, 4).readUInt32BE(0) === C.QCOW_MAGIC ? 'qcow2' : 'raw';
  } finally {
    f.close();
  }
}

/** Open a file as a guest view in the given format (qcow2: with its backing chain), read-only. */
export function openSource(fileName: string, format: string | undefined, opts: OpenOptions = {}, depth = 0): GuestSource {
  const fmt = format ?? probeFormat(fileName);
  if (fmt === 'raw') return RawSource.open(fileName, { lock: opts.lock ?? true });
  if (fmt === 'qcow2') return Qcow2Image.open(fileName, { ...opts, writable: false }, depth);
  throw new Qcow2Error('UNSUPPORTED', `Unknown driver '${fmt}': this engine reads qcow2 and raw images only`, { file: fileName });
}

function openBacking(imagePath: string, h: Header, opts: OpenOptions, depth: number): GuestSource | null {
  if (h.backingFile === undefined || h.backingFile === '') return null;
  if (depth + 1 >= MAX_CHAIN) {
    throw new Qcow2Error('INVALID_IMAGE', `Backing chain of '${imagePath}' is deeper than ${MAX_CHAIN} images (a loop?)`, { file: imagePath });
  }
  const full = fullBackingFilename(imagePath, h.backingFile);
  try {
    const fmt = h.backingFormat ?? opts.backingFormat;
    return openSource(full, fmt, { lock: opts.lock ?? true }, depth + 1);
  } catch (e) {
    const msg = Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND' ? `Could not open '${full}': No such file or directory` : (e as Error).message;
    throw new Qcow2Error(Qcow2Error.isInstance(e) ? e.code : 'IO', `Could not open backing file: ${msg}`, { file: full, property: 'backing_file', cause: e });
  }
}

// ---------------------------------------------------------------------------------------------
// qcow2

interface CachedTable { buf: Buffer; dirty: boolean }

/** Unit of an L2 entry for a guest offset: the cluster's entry and, extended, its bitmap. */
interface EntryRef { l1i: number; k: number; raw: bigint; bitmap: bigint }

type SubType = 'unallocated-plain' | 'unallocated-alloc' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

/** Progress of long operations: bytes done of total. */
export type ProgressFn = (done: number, total: number) => void;

/** Options of writeZeroes. */
export interface ZeroOptions {
  /** QEMU's BDRV_REQ_MAY_UNMAP (qemu-io `write -z -u`): allocated clusters are freed. */
  unmap?: boolean;
}

/**
 * An open qcow2 image with its data file and backing chain. Read-only unless opened writable;
 * writes are cached in memory and reach the file in the order stated at the top of this file
 * on commit() (and close()).
 */
export class Qcow2Image implements GuestSource {
  readonly format = 'qcow2' as const;
  readonly size: number;
  readonly g: Geometry;
  readonly cs: number;
  /** The header as it will be written on the next header write. */
  readonly header: Header;
  private headerDirty = false;
  /** The header as last written (a moved refcount table is published from it, nothing else). */
  private diskHeader: Header;
  private readonly l1: BigUint64Array;
  private readonly l1Dirty = new Set<number>();
  private readonly l2Cache = new Map<number, CachedTable>();
  private reftable: BigUint64Array;
  private reftableOffset: number;
  private readonly reftableDirty = new Set<number>();
  private reftableMoved = false;
  private readonly refblocks = new Map<number, CachedTable>();
  private pendingFrees: number[] = [];
  private freeClusterIndex = 0;
  private fileEnd: number;
  private dataWritten = false;
  private guestWriteStarted = false;
  private compressedCache: { raw: bigint; data: Buffer } | undefined;
  private metaPrealloc: boolean | undefined;
  private closed = false;

  private constructor(
    readonly file: BlockFile,
    readonly image: Image,
    readonly fileName: string,
    readonly dataFile: BlockFile | null,
    readonly dataFileName: string | undefined,
    readonly backing: GuestSource | null,
    readonly writable: boolean,
    private readonly locks: ImageLock[],
    private readonly owned: Array<{ close(): void }>,
    private readonly ownsFile: boolean,
  ) {
    const h = image.header;
    if (h.size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error('UNSUPPORTED', `Virtual size ${h.size} is beyond what this engine's data path handles (2^53)`, { file: fileName });
    }
    this.size = Number(h.size);
    this.g = image.geometry;
    this.cs = this.g.clusterSize;
    this.header = { ...h, unknownExtensions: [...h.unknownExtensions] };
    this.diskHeader = { ...this.header };
    this.l1 = BigUint64Array.from(image.readL1());
    this.reftable = BigUint64Array.from(image.readReftable());
    this.reftableOffset = safeOffset(h.refcountTableOffset);
    this.fileEnd = file.size();
  }

  /** Open an image file with its data file and backing chain. */
  static open(fileName: string, opts: OpenOptions = {}, depth = 0): Qcow2Image {
    const writable = opts.writable ?? false;
    const lock = opts.lock ?? true;
    const nf = NodeBlockFile.open(fileName, writable);
    const locks: ImageLock[] = [];
    const owned: Array<{ close(): void }> = [];
    try {
      if (lock) locks.push(lockImage(nf.fd, fileName, writable ? 'write' : 'read'));
      const file = opts.wrapFile ? opts.wrapFile(nf) : nf;
      const image = Image.open(file, fileName);
      const h = image.header;
      let dataFile: BlockFile | null = null;
      let dataFileName: string | undefined;
      if (image.hasDataFile) {
        if (opts.dataFile) {
          dataFile = opts.dataFile;
          dataFileName = h.dataFile;
        } else {
          if (h.dataFile === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: fileName });
          // A relative name is relative to the working directory (QCOW2-NOTES §4), as QEMU opens it.
          const df = NodeBlockFile.open(h.dataFile, writable);
          owned.push(df);
          if (lock) locks.push(lockImage(df.fd, h.dataFile, writable ? 'write' : 'read'));
          dataFile = df;
          dataFileName = h.dataFile;
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
      return Qcow2Image.wrap(file, image, fileName, dataFile, dataFileName, backing, writable, locks, owned, true);
    } catch (e) {
      for (const o of owned.reverse()) o.close();
      for (const l of locks) l.release();
      nf.close();
      throw e;
    }
  }

  /** An image over already-open files (tests, in-memory images). The caller owns the files. */
  static over(file: BlockFile, opts: { writable?: boolean; dataFile?: BlockFile | null; backing?: GuestSource | null; fileName?: string } = {}): Qcow2Image {
    const image = Image.open(file, opts.fileName ?? '');
    return Qcow2Image.wrap(file, image, opts.fileName ?? '', opts.dataFile ?? null, image.header.dataFile, opts.backing ?? null, opts.writable ?? false, [], [], false);
  }

  private static wrap(file: BlockFile, image: Image, fileName: string, dataFile: BlockFile | null, dataFileName: string | undefined,
    backing: GuestSource | null, writable: boolean, locks: ImageLock[], owned: Array<{ close(): void }>, ownsFile: boolean): Qcow2Image {
    if (image.hasDataFile && !dataFile) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: fileName });
    const img = new Qcow2Image(file, image, fileName, dataFile, dataFileName, backing, writable, locks, owned, ownsFile);
    if (writable) img.openForWriting();
    return img;
  }

  get hasDataFile(): boolean { return this.image.hasDataFile; }
  get dataFileRaw(): boolean { return (this.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n; }
  get extendedL2(): boolean { return this.g.extendedL2; }
  private get v3(): boolean { return this.header.version >= 3; }

  /** QEMU's qcow2_do_open for a read-write open: unknown autoclear bits are cleared at once. */
  private openForWriting(): void {
    const known = this.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_MASK;
    if (known !== this.header.autoclearFeatures) {
      this.header.autoclearFeatures = known;
      this.writeHeaderNow();
    }
  }

  private writeHeaderNow(h: Header = this.header): void {
    this.file.write(0, encodeHeader(h, this.cs));
    this.file.flush();
    this.diskHeader = { ...h };
    if (h === this.header) this.headerDirty = false;
  }

  /** Before the first guest write: this engine does not maintain bitmaps, so bit 0 goes first. */
  private beginGuestWrite(): void {
    if (!this.writable) throw new Qcow2Error('REFUSED', `'${this.fileName}' is open read-only`, { file: this.fileName });
    if (this.guestWriteStarted) return;
    this.guestWriteStarted = true;
    if ((this.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_BITMAPS) !== 0n) {
      this.header.autoclearFeatures &= ~C.QCOW2_AUTOCLEAR_BITMAPS;
      delete this.header.bitmaps;
      this.writeHeaderNow();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Tables

  private loadTable(cache: Map<number, CachedTable>, offset: number): CachedTable {
    let t = cache.get(offset);
    if (!t) {
      t = { buf: this.file.read(offset, this.cs), dirty: false };
      if (cache.size >= 512) {
        // Bounded: drop clean tables (dirty ones leave through commit()).
        for (const [k, v] of cache) if (!v.dirty) { cache.delete(k); if (cache.size < 256) break; }
      }
      cache.set(offset, t);
    }
    return t;
  }

  private l2Offset(l1i: number): number {
    const e = this.l1[l1i] ?? 0n;
    const off = e & C.L1E_OFFSET_MASK;
    if (off === 0n) return 0;
    if (off % BigInt(this.cs) !== 0n) {
      throw invalidImage(`L2 table offset 0x${off.toString(16)} unaligned (L1 index: 0x${l1i.toString(16)})`, off);
    }
    return safeOffset(off);
  }

  /** The L2 entry (and bitmap) of guest cluster `gc`. */
  private entry(gc: number): EntryRef {
    const l1i = Math.floor(gc / this.g.l2Entries);
    const k = gc % this.g.l2Entries;
    const off = this.l2Offset(l1i);
    if (off === 0) return { l1i, k, raw: 0n, bitmap: 0n };
    const t = this.loadTable(this.l2Cache, off).buf;
    const at = k * this.g.l2EntrySize;
    return { l1i, k, raw: t.readBigUInt64BE(at), bitmap: this.extendedL2 ? t.readBigUInt64BE(at + 8) : 0n };
  }

  private clusterType(raw: bigint): 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed' {
    return decodeL2Entry(raw, 0n, { dataFile: this.hasDataFile, extendedL2: this.extendedL2 }).type;
  }

  /** qcow2_get_subcluster_type. */
  private subType(raw: bigint, bitmap: bigint, sc: number): SubType {
    const t = this.clusterType(raw);
    if (!this.extendedL2) {
      return t === 'unallocated' ? 'unallocated-plain' : t;
    }
    if (t === 'compressed') return 'compressed';
    const zeroBit = (bitmap >> BigInt(32 + sc)) & 1n;
    const allocBit = (bitmap >> BigInt(sc)) & 1n;
    if (t === 'normal') {
      if ((bitmap >> 32n) & bitmap) throw invalidImage(`Invalid subcluster bitmap 0x${bitmap.toString(16)} for L2 entry 0x${raw.toString(16)}`);
      return zeroBit ? 'zero-alloc' : allocBit ? 'normal' : 'unallocated-alloc';
    }
    if (bitmap & ALL_ALLOC) throw invalidImage(`Unallocated cluster has non-zero subcluster allocation map 0x${bitmap.toString(16)}`);
    return zeroBit ? 'zero-plain' : 'unallocated-plain';
  }

  private hostOf(raw: bigint): number {
    const off = raw & C.L2E_OFFSET_MASK;
    if (off % BigInt(this.cs) !== 0n) throw invalidImage(`Cluster allocation offset 0x${off.toString(16)} unaligned`, off);
    return safeOffset(off);
  }

  private get unit(): number { return this.extendedL2 ? this.cs / 32 : this.cs; }

  // -------------------------------------------------------------------------------------------
  // Reading

  read(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    const end = Math.min(offset + length, this.size);
    let p = offset;
    while (p < end) {
      const gc = Math.floor(p / this.cs);
      const inC = p - gc * this.cs;
      const e = this.entry(gc);
      const unit = this.unit;
      const sc = Math.floor(inC / unit);
      const type = this.subType(e.raw, e.bitmap, sc);
      // Extend over following subclusters of the same type within this cluster.
      let stop = (sc + 1) * unit;
      if (this.extendedL2 && type !== 'compressed') {
        for (let s = sc + 1; s < 32 && this.subType(e.raw, e.bitmap, s) === type; s++) stop = (s + 1) * unit;
      } else {
        stop = this.cs;
      }
      const n = Math.min(end - p, stop - inC);
      const dst = p - offset;
      switch (type) {
        case 'unallocated-plain':
        case 'unallocated-alloc':
          if (this.backing && p < this.backing.size) this.backing.read(p, n).copy(out, dst);
          break;
        case 'zero-plain':
        case 'zero-alloc':
          break;
        case 'normal': {
          const host = this.hostOf(e.raw) + inC;
          const f = this.dataFile ?? this.file;
          f.read(host, n).copy(out, dst);
          break;
        }
        case 'compressed':
          this.decompressed(e.raw).copy(out, dst, inC, inC + n);
          break;
      }
      p += n;
    }
    return out;
  }

  private decompressed(raw: bigint): Buffer {
    if (this.compressedCache?.raw === raw) return this.compressedCache.data;
    if (this.hasDataFile) throw invalidImage(`Compressed cluster entry 0x${raw.toString(16)} in an image with an external data file`);
    const r = parseCompressedEntry(raw & ~C.QCOW_OFLAG_COMPRESSED & ~C.QCOW_OFLAG_COPIED, this.g.clusterBits);
    const data = decompressCluster(this.file.read(safeOffset(r.offset), r.size), this.cs, this.header.compressionType, r.offset);
    this.compressedCache = { raw, data };
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
    const first = this.unitStatus(offset);
    let n = Math.min(len0, first.end - offset);
    while (n < len0) {
      if (!this.extendedL2) {
        // Fast path: scan the rest of this L2 table on raw u32 halves (a 1 TiB map is 16M entries).
        const adv = this.runLength(offset + n, len0 - n, first.type, first.host !== undefined ? first.host + n : undefined);
        if (adv > 0) {
          n += adv;
          continue;
        }
      }
      const next = this.unitStatus(offset + n);
      if (next.type !== first.type || next.file !== first.file ||
        (first.host !== undefined && next.host !== first.host + n)) break;
      n = Math.min(len0, next.end - offset);
    }
    const t = first.type;
    const st: BlockStatus = { length: n, data: false, zero: false, allocated: false };
    if (t === 'zero-plain' || t === 'zero-alloc') st.zero = true;
    else if (t === 'normal' || t === 'compressed') st.data = true;
    st.allocated = st.data || st.zero;
    if (first.host !== undefined) {
      st.offset = first.host;
      st.file = first.file;
    }
    if (!st.allocated) {
      if (!this.backing) st.zero = true;
      else if (wantZero && offset >= this.backing.size) st.zero = true;
    } else if (wantZero && t === 'normal' && this.metadataPreallocation()) {
      // BDRV_BLOCK_RECURSE: a preallocated cluster that is a hole in its file reads as zeros.
      const f = this.dataFile ?? this.file;
      const e = extentAt(f, first.host!, st.length);
      st.length = Math.max(1, Math.min(st.length, e.length));
      if (!e.data) st.zero = true;
    }
    return st;
  }

  /**
   * Bytes from cluster-aligned `p` (at most `max`, within one L2 table) whose standard L2 entries
   * have `type` and, where `host` is given, continue the host range from it. 0 means "ask
   * unitStatus" (a different type, or something only the slow path reports, such as misalignment).
   */
  private runLength(p: number, max: number, type: SubType, host: number | undefined): number {
    const cs = this.cs;
    const gc = Math.floor(p / cs);
    const per = this.g.l2Entries;
    let k = gc % per;
    const off = this.l2Offset(Math.floor(gc / per));
    if (off === 0) return type === 'unallocated-plain' ? Math.min(max, (per - k) * cs) : 0;
    const t = this.loadTable(this.l2Cache, off).buf;
    let bytes = 0;
    for (; k < per && bytes < max; k++) {
      const hi = t.readUInt32BE(k * 8);
      const lo = t.readUInt32BE(k * 8 + 4);
      let ty: SubType;
      let h: number | undefined;
      if (hi & 0x40000000) {
        ty = 'compressed';
      } else {
        const o = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
        if (lo & 1) ty = o !== 0 ? 'zero-alloc' : 'zero-plain';
        else if (o === 0 && !(this.hasDataFile && (hi & 0x80000000) !== 0)) ty = 'unallocated-plain';
        else ty = 'normal';
        if (ty === 'normal' || ty === 'zero-alloc') {
          if (o % cs !== 0) break;
          h = o;
        }
      }
      if (ty !== type) break;
      if (host !== undefined ? h !== host + bytes : h !== undefined) break;
      bytes += cs;
    }
    return Math.min(bytes, max);
  }

  private unitStatus(p: number): { type: SubType; end: number; host?: number; file?: string } {
    const gc = Math.floor(p / this.cs);
    const inC = p - gc * this.cs;
    const e = this.entry(gc);
    const sc = Math.floor(inC / this.unit);
    const type = this.subType(e.raw, e.bitmap, sc);
    const end = type === 'compressed' || !this.extendedL2 ? (gc + 1) * this.cs : gc * this.cs + (sc + 1) * this.unit;
    const out: { type: SubType; end: number; host?: number; file?: string } = { type, end };
    if (type === 'normal' || type === 'zero-alloc' || type === 'unallocated-alloc') {
      out.host = this.hostOf(e.raw) + inC;
      out.file = this.hasDataFile ? this.dataFileName : this.fileName;
    }
    return out;
  }

  /** qcow2_detect_metadata_preallocation: more refcounted clusters than the file has allocated. */
  private metadataPreallocation(): boolean {
    if (this.metaPrealloc !== undefined) return this.metaPrealloc;
    const realClusters = Math.floor(this.file.allocatedSize() / this.cs);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const endCluster = Math.ceil(this.file.size() / this.cs);
    let count = 0;
    for (let i = 0; i < endCluster && count < threshold; i++) if (this.refcount(i) !== 0) count++;
    this.metaPrealloc = count >= threshold;
    return this.metaPrealloc;
  }

  // -------------------------------------------------------------------------------------------
  // Refcounts and allocation

  private refblockFor(ti: number): CachedTable | undefined {
    if (ti >= this.reftable.length) return undefined;
    const off = this.reftable[ti]! & C.REFT_OFFSET_MASK;
    if (off === 0n) return undefined;
    if (off % BigInt(this.cs) !== 0n) throw invalidImage(`Refblock offset 0x${off.toString(16)} unaligned (reftable index: 0x${ti.toString(16)})`, off);
    return this.loadTable(this.refblocks, safeOffset(off));
  }

  /** Refcount of host cluster `ci` as the in-memory state has it. */
  refcount(ci: number): number {
    const b = this.refblockFor(Math.floor(ci / this.g.refblockEntries));
    if (!b) return 0;
    return Number(getRefcount(b.buf, this.g.refcountOrder, ci % this.g.refblockEntries));
  }

  private addRefcount(ci: number, delta: number): void {
    const b = this.refblockFor(Math.floor(ci / this.g.refblockEntries));
    if (!b) throw new Error(`internal: no refcount block for cluster ${ci}`);
    const i = ci % this.g.refblockEntries;
    const v = getRefcount(b.buf, this.g.refcountOrder, i) + BigInt(delta);
    if (v < 0n || v > refcountMax(this.g.refcountOrder)) {
      throw invalidImage(`Refcount of cluster ${ci} would become ${v}: out of range for ${this.g.refcountBits}-bit refcounts`);
    }
    setRefcount(b.buf, this.g.refcountOrder, i, v);
    b.dirty = true;
    if (v === 0n && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
  }

  /** alloc_clusters_noref: first fit of `n` free clusters from free_cluster_index. */
  private findFree(n: number): number {
    for (;;) {
      let ok = true;
      for (let i = 0; i < n; i++) {
        const idx = this.freeClusterIndex++;
        if (this.refcount(idx) !== 0) { ok = false; break; }
      }
      if (ok) return this.freeClusterIndex - n;
    }
  }

  /** qcow2_alloc_clusters: `n` contiguous clusters, refcounted; returns the first cluster index. */
  private allocClusters(n: number): number {
    for (;;) {
      const saved = this.freeClusterIndex;
      const start = this.findFree(n);
      if (!this.ensureRefblocks(start, n)) {
        this.freeClusterIndex = Math.min(saved, start);
        continue; // a refcount block was placed (maybe inside the candidate): search again
      }
      for (let i = 0; i < n; i++) this.addRefcount(start + i, 1);
      return start;
    }
  }

  /** True when refcount blocks cover [start, start+n); otherwise adds one and returns false. */
  private ensureRefblocks(start: number, n: number): boolean {
    const E = this.g.refblockEntries;
    for (let ti = Math.floor(start / E); ti <= Math.floor((start + n - 1) / E); ti++) {
      if (ti >= this.reftable.length) {
        this.growReftable(ti);
        return false;
      }
      if ((this.reftable[ti]! & C.REFT_OFFSET_MASK) === 0n) {
        this.allocRefblock(ti);
        return false;
      }
    }
    return true;
  }

  /** alloc_refcount_block: a block for table index `ti`, describing itself when it can. */
  private allocRefblock(ti: number): void {
    const E = this.g.refblockEntries;
    const saved = this.freeClusterIndex;
    const c = this.findFree(1);
    if (c === 0) throw invalidImage('Preventing invalid allocation of refcount block at offset 0');
    const buf = Buffer.alloc(this.cs);
    if (Math.floor(c / E) === ti) {
      setRefcount(buf, this.g.refcountOrder, c % E, 1n);
    } else {
      this.freeClusterIndex = saved;
      // Its own refcount lives in another block: that one must exist first.
      while (!this.ensureRefblocks(c, 1)) { /* placed one; retry */ }
      if (this.refcount(c) !== 0) { this.freeClusterIndex = saved; return; } // taken meanwhile: caller retries
      this.addRefcount(c, 1);
    }
    this.refblocks.set(c * this.cs, { buf, dirty: true });
    this.reftable[ti] = BigInt(c * this.cs);
    this.reftableDirty.add(ti);
    this.fileEnd = Math.max(this.fileEnd, (c + 1) * this.cs);
  }

  /**
   * qcow2_refcount_area: a larger refcount table, with the refcount blocks it needs, placed
   * at the end of the file and covering itself. The old table is freed after the commit.
   */
  private growReftable(needTi: number): void {
    const E = this.g.refblockEntries;
    const cs = this.cs;
    const perCluster = cs / 8;
    const start = Math.ceil(this.fileEnd / cs);
    const missing = (ti: number) => ti >= this.reftable.length || (this.reftable[ti]! & C.REFT_OFFSET_MASK) === 0n;
    let blocks: number[] = [];
    let tableEntries = 0;
    for (let guard = 0; guard < 64; guard++) {
      const areaEnd = start + blocks.length + tableEntries / perCluster; // exclusive cluster
      const want = new Set<number>();
      if (missing(needTi)) want.add(needTi);
      for (let ti = Math.floor(start / E); ti <= Math.floor((areaEnd - 1) / E); ti++) if (missing(ti)) want.add(ti);
      const maxTi = Math.max(needTi, Math.floor((Math.max(areaEnd, start + 1) - 1) / E), this.reftable.length - 1);
      let entries = Math.ceil(Math.max(maxTi + 1, Math.ceil((this.reftable.length * 3) / 2)) / perCluster) * perCluster;
      entries = Math.max(entries, tableEntries);
      const nextBlocks = [...want].sort((a, b) => a - b);
      if (nextBlocks.length === blocks.length && entries === tableEntries) break;
      blocks = nextBlocks;
      tableEntries = entries;
    }
    const table = new BigUint64Array(tableEntries);
    table.set(this.reftable);
    blocks.forEach((ti, i) => {
      table[ti] = BigInt((start + i) * cs);
      this.refblocks.set((start + i) * cs, { buf: Buffer.alloc(cs), dirty: true });
    });
    const oldOffset = this.reftableOffset;
    const oldClusters = Math.ceil((this.reftable.length * 8) / cs);
    this.reftable = table;
    const tableCluster = start + blocks.length;
    this.reftableOffset = tableCluster * cs;
    for (let c = start; c < tableCluster + tableEntries / perCluster; c++) this.addRefcount(c, 1);
    for (let c = 0; c < oldClusters; c++) this.pendingFrees.push(oldOffset / cs + c);
    this.reftableMoved = true;
    this.header.refcountTableOffset = BigInt(this.reftableOffset);
    this.header.refcountTableClusters = tableEntries / perCluster;
    this.fileEnd = Math.max(this.fileEnd, (tableCluster + tableEntries / perCluster) * cs);
  }

  /** Drop a reference (applied in commit step 6). */
  private freeLater(ci: number, n = 1): void {
    for (let i = 0; i < n; i++) this.pendingFrees.push(ci + i);
  }

  /** qcow2_free_any_cluster for an entry that was just unlinked. */
  private freeEntry(raw: bigint, discardDataFile: boolean): void {
    const t = this.clusterType(raw);
    if (this.hasDataFile) {
      if (discardDataFile && (t === 'normal' || t === 'zero-alloc')) punchHole(this.dataFile!, this.hostOf(raw), this.cs);
      return;
    }
    if (t === 'compressed') {
      const r = parseCompressedEntry(raw & ~C.QCOW_OFLAG_COMPRESSED & ~C.QCOW_OFLAG_COPIED, this.g.clusterBits);
      const first = Number(r.offset / BigInt(this.cs));
      const last = Number((r.offset + BigInt(r.size) - 1n) / BigInt(this.cs));
      this.freeLater(first, last - first + 1);
    } else if (t === 'normal' || t === 'zero-alloc') {
      this.freeLater(this.hostOf(raw) / this.cs);
    }
  }

  /** The L2 table of `l1i` ready to change: allocated, or copied when shared (no COPIED). */
  private l2ForWrite(l1i: number): CachedTable {
    const e = this.l1[l1i]!;
    const old = this.l2Offset(l1i);
    if (old !== 0 && (e & C.QCOW_OFLAG_COPIED) !== 0n) {
      const t = this.loadTable(this.l2Cache, old);
      return t;
    }
    const c = this.allocClusters(1);
    const buf = old === 0 ? Buffer.alloc(this.cs) : Buffer.from(this.loadTable(this.l2Cache, old).buf);
    if (old !== 0) this.freeLater(old / this.cs);
    const t = { buf, dirty: true };
    this.l2Cache.set(c * this.cs, t);
    this.l1[l1i] = BigInt(c * this.cs) | C.QCOW_OFLAG_COPIED;
    this.l1Dirty.add(l1i);
    this.fileEnd = Math.max(this.fileEnd, (c + 1) * this.cs);
    return t;
  }

  private setEntry(gc: number, raw: bigint, bitmap: bigint): void {
    const l1i = Math.floor(gc / this.g.l2Entries);
    const t = this.l2ForWrite(l1i);
    const at = (gc % this.g.l2Entries) * this.g.l2EntrySize;
    t.buf.writeBigUInt64BE(raw, at);
    if (this.extendedL2) t.buf.writeBigUInt64BE(bitmap, at + 8);
    t.dirty = true;
    this.compressedCache = undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  private checkRange(offset: number, length: number, op: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new Qcow2Error('REFUSED', `${op} at offset ${offset}, ${length} bytes: beyond the end of the image (${this.size} bytes)`, { file: this.fileName });
    }
  }

  private writeHost(host: number, data: Uint8Array): void {
    (this.dataFile ?? this.file).write(host, data);
    if (!this.dataFile) this.fileEnd = Math.max(this.fileEnd, host + data.length);
    this.dataWritten = true;
  }

  /** Write guest data; partial clusters are completed from the current guest view (copy-on-write). */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length, 'Write');
    if (data.length === 0) return;
    this.beginGuestWrite();
    const end = offset + data.length;
    let p = offset;
    while (p < end) {
      const gc = Math.floor(p / this.cs);
      const e = this.entry(gc);
      const t = this.clusterType(e.raw);
      const inPlace = (t === 'normal' || t === 'zero-alloc') && (e.raw & C.QCOW_OFLAG_COPIED) !== 0n;
      if (inPlace) {
        p = this.writeInPlace(gc, e, p, end, data, offset);
        continue;
      }
      // A run of clusters that all need a new allocation: one contiguous allocation, one write.
      let last = gc;
      const lastGc = Math.floor((end - 1) / this.cs);
      while (last < lastGc && last - gc < 1024) {
        const n = this.entry(last + 1);
        const nt = this.clusterType(n.raw);
        if ((nt === 'normal' || nt === 'zero-alloc') && (n.raw & C.QCOW_OFLAG_COPIED) !== 0n) break;
        last++;
      }
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
    const whole = p === runStart && (runEnd === (last + 1) * cs || runEnd === this.size);
    const buf = whole ? src.subarray(p - base, runEnd - base) : Buffer.alloc(n * cs);
    // Copy-on-write: the head and tail clusters not fully covered keep their current guest bytes.
    const fill = (c: number) => {
      const s = c * cs;
      const covered = p <= s && end >= s + cs;
      if (!covered) this.read(s, Math.min(cs, this.size - s)).copy(buf, s - runStart);
    };
    if (!whole) {
      fill(gc);
      if (last !== gc) fill(last);
      src.copy(buf, p - runStart, p - base, runEnd - base);
    }
    const olds: EntryRef[] = [];
    for (let c = gc; c <= last; c++) olds.push(this.entry(c));
    let hostStart: number;
    if (this.hasDataFile) {
      hostStart = runStart;
    } else {
      // The L2 tables first, so that the data run stays contiguous after them (as QEMU's layout).
      for (let c = gc; c <= last; c += this.g.l2Entries - (c % this.g.l2Entries)) this.l2ForWrite(Math.floor(c / this.g.l2Entries));
      hostStart = this.allocClusters(n) * cs;
    }
    const tailLen = Math.min(buf.length, Math.ceil((this.size - runStart) / 512) * 512);
    this.writeHost(hostStart, tailLen === buf.length ? buf : buf.subarray(0, tailLen));
    for (let i = 0; i < n; i++) {
      const o = olds[i]!;
      const host = BigInt(hostStart + i * cs);
      // Extended L2: the new cluster was filled from the guest view, so every subcluster is data.
      this.setEntry(gc + i, host | C.QCOW_OFLAG_COPIED, this.extendedL2 ? ALL_ALLOC : 0n);
      if (!this.hasDataFile) this.freeEntry(o.raw, false);
    }
    return runEnd;
  }

  /** A cluster we own (COPIED): data goes in place; zero or unallocated subclusters are filled first. */
  private writeInPlace(gc: number, e: EntryRef, p: number, end: number, data: Uint8Array, base: number): number {
    const cs = this.cs;
    const s = gc * cs;
    const stop = Math.min(end, s + cs);
    const host = this.hostOf(e.raw);
    const t = this.clusterType(e.raw);
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const needsFill = t === 'zero-alloc' || (this.extendedL2 && e.bitmap !== ALL_ALLOC);
    if (!needsFill) {
      this.writeHost(host + (p - s), src.subarray(p - base, stop - base));
      return stop;
    }
    const covered = p === s && stop === s + cs;
    const buf = covered ? Buffer.alloc(cs) : this.read(s, cs);
    src.copy(buf, p - s, p - base, stop - base);
    const len = Math.min(cs, this.size - s);
    this.writeHost(host, buf.subarray(0, Math.ceil(len / 512) * 512));
    this.setEntry(gc, BigInt(host) | C.QCOW_OFLAG_COPIED, this.extendedL2 ? ALL_ALLOC : 0n);
    return stop;
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
    this.beginGuestWrite();
    const cs = this.cs;
    const end = offset + length;
    if (!this.v3 || this.extendedL2) {
      // v2 has no ZERO flag (QEMU: -ENOTSUP, falls back to writing zeros); extended L2 images
      // are zeroed by writing zeros too, which keeps every subcluster bitmap exact.
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
      const e = this.entry(cStart / cs);
      const t = this.clusterType(e.raw);
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
  private zeroizeClusters(from: number, to: number, unmap: boolean): void {
    if (this.dataFileRaw) writeZeros(this.dataFile!, from, to - from);
    const cs = this.cs;
    for (let gc = from / cs; gc * cs < to; gc++) {
      const e = this.entry(gc);
      const t = this.clusterType(e.raw);
      const allocated = t === 'normal' || t === 'zero-alloc' || t === 'compressed';
      const doUnmap = t === 'compressed' || (unmap && allocated);
      const next = (doUnmap ? 0n : e.raw) | C.QCOW_OFLAG_ZERO;
      if (next === e.raw) continue;
      this.setEntry(gc, next, 0n);
      if (doUnmap) this.freeEntry(e.raw, true);
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
    this.beginGuestWrite();
    const cs = this.cs;
    const end = offset + length;
    const first = Math.ceil(offset / cs);
    let stop = Math.floor(end / cs);
    if (end === this.size && this.size % cs !== 0 && first * cs < end) stop = Math.ceil(end / cs);
    for (let gc = first; gc < stop; gc++) {
      const e = this.entry(gc);
      const t = this.clusterType(e.raw);
      const allocated = t === 'normal' || t === 'zero-alloc' || t === 'compressed';
      let raw = e.raw, bitmap = e.bitmap;
      if (this.backing || allocated) {
        if (this.extendedL2) { raw = 0n; bitmap = ALL_ZERO; } else raw = this.v3 ? C.QCOW_OFLAG_ZERO : 0n;
      }
      if (raw === e.raw && bitmap === e.bitmap) continue;
      this.setEntry(gc, raw, bitmap);
      this.freeEntry(e.raw, true);
    }
  }

  /** Point the image at another backing file (written with the header, last, on commit). */
  setBacking(file: string, format: string | undefined): void {
    if (!this.writable) throw new Qcow2Error('REFUSED', `'${this.fileName}' is open read-only`);
    if (file === '') {
      delete this.header.backingFile;
      delete this.header.backingFormat;
    } else {
      this.header.backingFile = file;
      if (format !== undefined) this.header.backingFormat = format; else delete this.header.backingFormat;
    }
    encodeHeader(this.header, this.cs); // fails now, not at commit, if the name does not fit
    this.headerDirty = true;
  }

  /** Whether guest cluster data at `offset` is allocated in this layer (zero clusters count). */
  allocatedHere(offset: number): { allocated: boolean; length: number } {
    const st = this.blockStatus(offset, this.size - offset, false);
    return { allocated: st.allocated, length: st.length };
  }

  /** Bytes of metadata waiting in the caches. */
  get dirtyBytes(): number {
    let n = 0;
    for (const t of this.l2Cache.values()) if (t.dirty) n += this.cs;
    for (const t of this.refblocks.values()) if (t.dirty) n += this.cs;
    return n + this.pendingFrees.length * 8;
  }

  /** Write everything cached, in the order stated at the top of this file. */
  commit(): void {
    if (!this.writable) return;
    const barrier = () => {
      this.dataFile?.flush();
      this.file.flush();
    };
    const writeDirty = (cache: Map<number, CachedTable>) => {
      const list = [...cache].filter(([, t]) => t.dirty).sort((a, b) => a[0] - b[0]);
      for (const [off, t] of list) {
        this.file.write(off, t.buf);
        t.dirty = false;
      }
      return list.length > 0;
    };
    // 1. data
    if (this.dataWritten) { barrier(); this.dataWritten = false; }
    // 2. refcount blocks (increments), refcount table, a moved table's header pointer
    let any = writeDirty(this.refblocks);
    if (this.reftableMoved) {
      const buf = Buffer.alloc(this.header.refcountTableClusters * this.cs);
      this.reftable.forEach((e, i) => buf.writeBigUInt64BE(e, i * 8));
      this.file.write(this.reftableOffset, buf);
      barrier();
      this.writeHeaderNow({ ...this.diskHeader, refcountTableOffset: this.header.refcountTableOffset, refcountTableClusters: this.header.refcountTableClusters });
      this.reftableMoved = false;
      this.reftableDirty.clear();
      any = false;
    } else if (this.reftableDirty.size) {
      for (const ti of [...this.reftableDirty].sort((a, b) => a - b)) {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(this.reftable[ti]!);
        this.file.write(this.reftableOffset + ti * 8, b);
      }
      this.reftableDirty.clear();
      any = true;
    }
    if (any) barrier();
    // 3. L2 tables
    if (writeDirty(this.l2Cache)) barrier();
    // 4. L1
    if (this.l1Dirty.size) {
      const l1Off = safeOffset(this.header.l1TableOffset);
      const idx = [...this.l1Dirty].sort((a, b) => a - b);
      for (let i = 0; i < idx.length;) {
        let j = i + 1;
        while (j < idx.length && idx[j] === idx[j - 1]! + 1) j++;
        const b = Buffer.alloc((j - i) * 8);
        for (let k = i; k < j; k++) b.writeBigUInt64BE(this.l1[idx[k]!]!, (k - i) * 8);
        this.file.write(l1Off + idx[i]! * 8, b);
        i = j;
      }
      this.l1Dirty.clear();
      barrier();
    }
    // 5. header
    if (this.headerDirty) this.writeHeaderNow();
    // 6. deferred frees
    if (this.pendingFrees.length) {
      const frees = this.pendingFrees;
      this.pendingFrees = [];
      for (const ci of frees) this.addRefcount(ci, -1);
      if (writeDirty(this.refblocks)) barrier();
    }
    this.compressedCache = undefined;
    this.metaPrealloc = undefined;
    // Bounded memory: tables allocated during long writes stay cached only until written.
    for (const cache of [this.l2Cache, this.refblocks]) {
      if (cache.size <= 256) continue;
      for (const [k, v] of cache) if (!v.dirty) cache.delete(k);
    }
  }

  /** Commit when the caches hold more than `limit` bytes (bounded memory for long writes). */
  maybeCommit(limit = 32 << 20): void {
    if (this.dirtyBytes > limit) this.commit();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.writable) this.commit();
    } finally {
      for (const o of [...this.owned].reverse()) o.close();
      for (const l of this.locks) l.release();
      if (this.ownsFile) this.file.close(); // over() leaves its files to the caller
    }
  }
}

/** Every guest cluster mapping of an image lies inside its files: catches truncated images early. */
export function validateMappings(img: Qcow2Image): void {
  const fileSize = img.file.size();
  const cs = img.cs;
  const g = img.g;
  const l1 = img.image.readL1();
  l1.forEach((e, i) => {
    const off = e & C.L1E_OFFSET_MASK;
    if (off === 0n) return;
    if (off % BigInt(cs) !== 0n || off + BigInt(cs) > BigInt(fileSize)) {
      throw invalidImage(`'${img.fileName}' is truncated or corrupt: L2 table of L1 entry ${i} at 0x${off.toString(16)} lies outside the file (${fileSize} bytes)`, off);
    }
    const t = img.image.readCluster(off);
    for (let k = 0; k < g.l2Entries; k++) {
      const raw = t.readBigUInt64BE(k * g.l2EntrySize);
      const d = decodeL2Entry(raw, 0n, { dataFile: img.hasDataFile, extendedL2: g.extendedL2 });
      if (d.type === 'compressed') {
        if (img.hasDataFile) throw invalidImage(`'${img.fileName}': compressed cluster in an image with an external data file`);
        const r = parseCompressedEntry(raw & ~C.QCOW_OFLAG_COMPRESSED & ~C.QCOW_OFLAG_COPIED, g.clusterBits);
        if (r.offset >= BigInt(fileSize)) {
          throw invalidImage(`'${img.fileName}' is truncated or corrupt: compressed cluster at 0x${r.offset.toString(16)} lies outside the file`, r.offset);
        }
      } else if ((d.type === 'normal' || d.type === 'zero-alloc') && !img.hasDataFile) {
        // A cluster starting past the end is lost data; one the file ends inside of is not (QEMU
        // writes only the subclusters it needs, and reads past the end as zeros).
        if (d.hostOffset % BigInt(cs) !== 0n || d.hostOffset >= BigInt(fileSize)) {
          if (d.type === 'zero-alloc') continue; // reads as zeros whatever is there
          throw invalidImage(`'${img.fileName}' is truncated or corrupt: data cluster at 0x${d.hostOffset.toString(16)} lies outside the file (${fileSize} bytes)`, d.hostOffset);
        }
      }
    }
  });
}

/** Validate a whole chain's mappings (qcow2 layers). */
export function validateChain(src: GuestSource): void {
  for (let s: GuestSource | null = src; s; s = s.backing) if (s instanceof Qcow2Image) validateMappings(s);
}

