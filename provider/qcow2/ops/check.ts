// `check`: QEMU's qcow2_check_refcounts, read-only. Recount every reference (header, L1/L2,
// snapshots, refcount structures, bitmaps) and compare with the stored refcounts; then the
// OFLAG_COPIED consistency pass. Verdicts, counters, messages and exit codes as qemu-img check.

import * as fs from 'fs';
import { BlockFile, NodeBlockFile } from '../io/blockfile';
import * as C from '../spec/constants';
import { Qcow2Error } from '../../model/errors';
import { Image, safeOffset } from '../meta/image';
import { decodeL2Entry } from '../spec/l2';
import { getRefcount, refcountMax } from '../spec/refcount';
import { decodeBitmapDirectory } from '../spec/bitmaps';
import { lockImage } from '../io/lock';

export interface CheckResult {
  /** Errors and leaks, one line each, as qemu-img prints them on stderr. */
  messages: string[];
  corruptions: number;
  leaks: number;
  checkErrors: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

const hex = (v: bigint | number) => v.toString(16);

/** Computed reference counts: dense for the file's clusters, sparse beyond (hostile offsets). */
class RefCounter {
  dense: Uint32Array;
  sparse = new Map<number, number>();
  constructor(readonly clusters: number) { this.dense = new Uint32Array(clusters); }
  get(ci: number): number { return ci < this.clusters ? this.dense[ci]! : this.sparse.get(ci) ?? 0; }
  set(ci: number, v: number): void { if (ci < this.clusters) this.dense[ci] = v; else this.sparse.set(ci, v); }
  /** Highest index QEMU's in-memory table would cover (it grows to the largest reference). */
  size(): number {
    let n = this.clusters;
    for (const k of this.sparse.keys()) n = Math.max(n, k + 1);
    return n;
  }
}

export function checkImage(file: BlockFile): CheckResult {
  const img = Image.open(file);
  return new Checker(img, file).run();
}

/**
 * The refcount every cluster should have, counted from references (what `check -r` rebuilds
 * from). `beyondFile` lists clusters referenced past the end of the file (a corrupt image).
 */
export function countReferences(img: Image, file: BlockFile): { counts: Uint32Array; beyondFile: number[]; structuralCorruptions: number; result: CheckResult } {
  const c = new Checker(img, file);
  const result = c.run();
  return { counts: c.computed().dense, beyondFile: [...c.computed().sparse.keys()], structuralCorruptions: c.structural, result };
}

class Checker {
  private readonly r: CheckResult = {
    messages: [], corruptions: 0, leaks: 0, checkErrors: 0, imageEndOffset: 0,
    totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
  };
  private readonly cs: number;
  private readonly bits: bigint;
  private readonly refs: RefCounter;
  private readonly max: bigint;
  private reftable: bigint[] = [];
  private readonly refblockCache = new Map<number, Uint8Array>();

  constructor(private readonly img: Image, private readonly file: BlockFile) {
    this.cs = img.geometry.clusterSize;
    this.bits = BigInt(img.geometry.clusterBits);
    this.refs = new RefCounter(Math.ceil(file.size() / this.cs));
    this.max = refcountMax(img.geometry.refcountOrder);
  }

  private err(line: string): void { this.r.messages.push(line); }

  computed(): RefCounter { return this.refs; }

  /** Corruptions found before refcounts were compared: broken structure, not stale counts. */
  structural = 0;
  private signalled = false;

  run(): CheckResult {
    const { img, r } = this;
    const h = img.header;
    r.totalClusters = img.geometry.clustersFor(h.size);
    this.reftable = img.readReftable();

    this.inc(0n, this.cs);
    this.checkL1(h.l1TableOffset, h.l1Size, true);
    const snaps = img.readSnapshots();
    if (img.hasDataFile && snaps.length) {
      this.err(`ERROR ${snaps.length} snapshots in image with data file`);
      r.corruptions++;
    }
    for (const sn of snaps) {
      if (sn.l1TableOffset % BigInt(this.cs) !== 0n) {
        this.err(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${hex(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
        r.corruptions++;
        continue;
      }
      if (sn.l1Size > C.QCOW_MAX_L1_SIZE / 8) {
        this.err(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=0x${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
        r.corruptions++;
        continue;
      }
      this.checkL1(sn.l1TableOffset, sn.l1Size, false);
    }
    if (snaps.length) this.inc(h.snapshotsOffset, snaps.tableSize ?? 0);
    this.inc(h.refcountTableOffset, this.reftable.length * 8);
    this.checkBitmaps();
    this.checkRefblocks();
    this.structural = this.r.corruptions;
    const highest = this.compare();
    this.checkCopied();
    r.imageEndOffset = (highest + 1) * this.cs;
    return r;
  }

  /** qcow2_inc_refcounts_imrt */
  private inc(offset: bigint, size: number): void {
    if (size <= 0) return;
    const cs = BigInt(this.cs);
    const first = offset / cs;
    const last = (offset + BigInt(size) - 1n) / cs;
    for (let c = first; c <= last; c++) {
      const ci = Number(c);
      const v = this.refs.get(ci);
      if (BigInt(v) === this.max) {
        this.err(`ERROR: overflow cluster offset=0x${hex(c * cs)}`);
        this.err('Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing');
        this.r.corruptions++;
        continue;
      }
      this.refs.set(ci, v + 1);
    }
  }

  private readTable(offset: bigint, length: number): Buffer {
    return this.file.read(safeOffset(offset), length);
  }

  private checkL1(l1Offset: bigint, l1Size: number, active: boolean): void {
    if (l1Size === 0) return;
    this.inc(l1Offset, l1Size * 8);
    const buf = this.readTable(l1Offset, l1Size * 8);
    for (let i = 0; i < l1Size; i++) {
      const e = buf.readBigUInt64BE(i * 8);
      if (e === 0n) continue;
      if (e & C.L1E_RESERVED_MASK) {
        this.err(`ERROR found L1 entry with reserved bits set: ${hex(e)}`);
        this.r.corruptions++;
      }
      const l2 = e & C.L1E_OFFSET_MASK;
      this.inc(l2, this.cs);
      if (l2 % BigInt(this.cs) !== 0n) {
        this.err(`ERROR l2_offset=${hex(l2)}: Table is not cluster aligned; L1 entry corrupted`);
        this.r.corruptions++;
      }
      this.checkL2(l2, active);
    }
  }

  private checkL2(l2Offset: bigint, active: boolean): void {
    const g = this.img.geometry;
    const ext = g.extendedL2;
    const table = this.readTable(l2Offset, this.cs);
    const opts = { dataFile: this.img.hasDataFile, extendedL2: ext };
    let nextContiguous = 0n;
    for (let i = 0; i < g.l2Entries; i++) {
      const raw = table.readBigUInt64BE(i * g.l2EntrySize);
      const bitmap = ext ? table.readBigUInt64BE(i * g.l2EntrySize + 8) : 0n;
      const e = decodeL2Entry(raw, bitmap, opts);
      if (e.type !== 'compressed' && e.reserved) {
        this.err(`ERROR found l2 entry with reserved bits set: ${hex(raw)}`);
        this.r.corruptions++;
      }
      switch (e.type) {
        case 'compressed': {
          let entry = raw;
          if (raw & C.QCOW_OFLAG_COPIED) {
            const mask = (1n << (62n - (this.bits - 8n))) - 1n;
            this.err(`ERROR: coffset=0x${hex(raw & mask)}: copied flag must never be set for compressed clusters`);
            entry &= ~C.QCOW_OFLAG_COPIED;
            this.r.corruptions++;
          }
          if (this.img.hasDataFile) {
            this.err(`ERROR compressed cluster ${i} with data file, entry=0x${hex(entry)}`);
            this.r.corruptions++;
            break;
          }
          if (bitmap) {
            this.err(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex(entry)}`);
            this.r.corruptions++;
            break;
          }
          const { offset, size } = compressedRange(entry, g.clusterBits);
          this.inc(offset, size);
          if (active) {
            this.r.allocatedClusters++;
            this.r.compressedClusters++;
            this.r.fragmentedClusters++;
          }
          break;
        }
        case 'zero-alloc':
        case 'normal': {
          const offset = e.hostOffset;
          if ((bitmap >> 32n) & bitmap) {
            this.r.corruptions++;
            this.err(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
          }
          if (offset % BigInt(this.cs) !== 0n) {
            this.r.corruptions++;
            const containsData = ext ? (bitmap & 0xffffffffn) !== 0n : (raw & C.QCOW_OFLAG_ZERO) === 0n;
            this.err(containsData
              ? `ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`
              : `ERROR offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
          }
          if (active) {
            this.r.allocatedClusters++;
            if (nextContiguous && offset !== nextContiguous) this.r.fragmentedClusters++;
            nextContiguous = offset + BigInt(this.cs);
          }
          if (!this.img.hasDataFile) this.inc(offset, this.cs);
          break;
        }
        case 'zero-plain':
          break;
        case 'unallocated':
          if (bitmap & 0xffffffffn) {
            this.r.corruptions++;
            this.err('ERROR: Unallocated cluster has non-zero subcluster allocation map');
          }
          break;
      }
    }
  }

  private checkBitmaps(): void {
    const b = this.img.header.bitmaps;
    if (!b) return;
    this.inc(b.bitmapDirectoryOffset, Number(b.bitmapDirectorySize));
    let entries;
    try {
      const dir = this.readTable(b.bitmapDirectoryOffset, Number(b.bitmapDirectorySize));
      entries = decodeBitmapDirectory(dir, b.nbBitmaps, Number(b.bitmapDirectoryOffset), this.cs, this.img.header.size);
    } catch (e) {
      // qcow2_check_bitmaps_refcounts: an unloadable directory is one corruption.
      this.err(`ERROR ${(e as Error).message}`);
      this.r.corruptions++;
      return;
    }
    for (const e of entries) {
      // Sizes are bounded by the entry check: at most what the virtual size needs.
      this.inc(e.tableOffset, e.tableSize * 8);
      const t = this.readTable(e.tableOffset, e.tableSize * 8);
      for (let k = 0; k < e.tableSize; k++) {
        const entry = t.readBigUInt64BE(k * 8);
        const off = entry & 0x00fffffffffffe00n;
        if ((entry & 0x7f000000000001fen) || off % BigInt(this.cs) !== 0n || ((entry & 1n) && off)) { this.r.corruptions++; continue; }
        if (off) this.inc(off, this.cs);
      }
    }
  }

  private checkRefblocks(): void {
    const nb = this.refs.size();
    this.reftable.forEach((entry, i) => {
      const offset = entry & C.REFT_OFFSET_MASK;
      if (entry & C.REFT_RESERVED_MASK) {
        this.err(`ERROR refcount table entry ${i} has reserved bits set`);
        this.r.corruptions++;
        return;
      }
      if (offset % BigInt(this.cs) !== 0n) {
        this.err(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.r.corruptions++;
        return;
      }
      const cluster = offset >> this.bits;
      if (cluster >= BigInt(nb)) {
        this.r.corruptions++;
        this.err(`ERROR refcount block ${i} is outside image`);
        return;
      }
      if (offset !== 0n) {
        this.inc(offset, this.cs);
        const v = this.refs.get(Number(cluster));
        if (v !== 1) {
          this.err(`ERROR refcount block ${i} refcount=${v}`);
          this.r.corruptions++;
        }
      }
    });
  }

  /** Stored refcount of a cluster (qcow2_get_refcount); undefined when it cannot be read. */
  private stored(ci: number): bigint | undefined {
    const g = this.img.geometry;
    const ti = Math.floor(ci / g.refblockEntries);
    if (ti >= this.reftable.length) return 0n;
    const off = this.reftable[ti]! & C.REFT_OFFSET_MASK;
    if (off === 0n) return 0n;
    if (off % BigInt(this.cs) !== 0n) {
      // qcow2_signal_corruption on a read-only image: said once, then suppressed.
      if (!this.signalled) {
        this.signalled = true;
        this.err(`qcow2: Image is corrupt: Refblock offset 0x${hex(off)} unaligned (reftable index: ${ti === 0 ? '0' : `0x${hex(ti)}`}); further non-fatal corruption events will be suppressed`);
      }
      return undefined;
    }
    let block = this.refblockCache.get(ti);
    if (!block) {
      block = this.readTable(off, this.cs);
      this.refblockCache.set(ti, block);
    }
    return getRefcount(block, g.refcountOrder, ci % g.refblockEntries);
  }

  private compare(): number {
    let highest = 0;
    const n = this.refs.size();
    // Beyond the file, only clusters something references can differ (stored refcounts past
    // the end of the file are read as zero blocks), so visit those instead of the whole range.
    const visit = (ci: number) => {
      const stored = this.stored(ci);
      const computed = BigInt(this.refs.get(ci));
      if (stored === undefined) {
        this.err(`Can't get refcount for cluster ${ci}: Input/output error`);
        this.r.checkErrors++;
        return;
      }
      if (stored > 0n || computed > 0n) highest = ci;
      if (stored !== computed) {
        this.err(`${stored < computed ? 'ERROR' : 'Leaked'} cluster ${ci} refcount=${stored} reference=${computed}`);
        if (stored < computed) this.r.corruptions++;
        else this.r.leaks++;
      }
    };
    for (let ci = 0; ci < this.refs.clusters; ci++) visit(ci);
    const beyond = [...this.storedNonZeroBeyond(n), ...this.refs.sparse.keys()].filter((k) => k >= this.refs.clusters && k < n);
    for (const ci of [...new Set(beyond)].sort((a, b) => a - b)) visit(ci);
    return highest;
  }

  /** Clusters past the end of the file whose stored refcount is non-zero (blocks inside the file only). */
  private storedNonZeroBeyond(limit: number): number[] {
    const g = this.img.geometry;
    const out: number[] = [];
    const fileSize = this.file.size();
    this.reftable.forEach((entry, ti) => {
      const off = entry & C.REFT_OFFSET_MASK;
      if (off === 0n || off % BigInt(this.cs) !== 0n || off >= BigInt(fileSize)) return;
      const base = ti * g.refblockEntries;
      if (base + g.refblockEntries <= this.refs.clusters || base >= limit) return;
      for (let k = 0; k < g.refblockEntries; k++) {
        const ci = base + k;
        if (ci >= this.refs.clusters && ci < limit && (this.stored(ci) ?? 0n) !== 0n) out.push(ci);
      }
    });
    return out;
  }

  private checkCopied(): void {
    const g = this.img.geometry;
    const l1 = this.img.readL1();
    l1.forEach((l1e, i) => {
      const l2 = l1e & C.L1E_OFFSET_MASK;
      if (l2 === 0n) return;
      const rc = this.stored(Number(l2 >> this.bits));
      if (rc === undefined) return;
      if ((rc === 1n) !== ((l1e & C.QCOW_OFLAG_COPIED) !== 0n)) {
        this.r.corruptions++;
        this.err(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(l1e)} refcount=${rc}`);
      }
      const table = this.readTable(l2, this.cs);
      const opts = { dataFile: this.img.hasDataFile, extendedL2: g.extendedL2 };
      for (let j = 0; j < g.l2Entries; j++) {
        const raw = table.readBigUInt64BE(j * g.l2EntrySize);
        const e = decodeL2Entry(raw, 0n, opts);
        if (e.type !== 'normal' && e.type !== 'zero-alloc') continue;
        const drc = this.img.hasDataFile ? 1n : this.stored(Number(e.hostOffset >> this.bits));
        if (drc === undefined) continue;
        if ((drc === 1n) !== e.copied) {
          this.r.corruptions++;
          this.err(`ERROR OFLAG_COPIED data cluster: l2_entry=${hex(raw)} refcount=${drc}`);
        }
      }
    });
  }
}

/** Host range of a compressed cluster descriptor (qcow2_parse_compressed_l2_entry). */
function compressedRange(entry: bigint, clusterBits: number): { offset: bigint; size: number } {
  const csizeShift = 62n - (BigInt(clusterBits) - 8n);
  const offsetMask = (1n << csizeShift) - 1n;
  const csizeMask = (1n << (BigInt(clusterBits) - 8n)) - 1n;
  const offset = entry & offsetMask;
  const nbSectors = Number((entry >> csizeShift) & csizeMask) + 1;
  const size = nbSectors * 512 - Number(offset & 511n);
  return { offset, size };
}

/**
 * Check an image file. Like qemu-img, fails when the external data file cannot be opened, and
 * takes QEMU's read lock (refusing an image a VM is writing) unless `forceShare` (qemu-img -U).
 */
export function checkImageFile(path: string, options: { forceShare?: boolean } = {}): CheckResult {
  const f = NodeBlockFile.open(path, false);
  try {
    if (!options.forceShare) lockImage(f.fd, path, 'read');
    const img = Image.open(f, path);
    if (img.hasDataFile) {
      const name = img.header.dataFile;
      if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image");
      if (!fs.existsSync(name)) {
        throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name, property: 'data_file' });
      }
    }
    return new Checker(img, f).run();
  } finally {
    f.close();
  }
}
