// A dirty bitmap in memory (QEMU's BdrvDirtyBitmap over an HBitmap): one bit per
// 2^granularityBits guest bytes, kept as the clusters of bitmap data the image stores, so that
// loading and storing are per cluster and a mostly clean bitmap of a large disk costs little.
// Bit 8k+j is bit j of byte k (QEMU serializes little-endian words), continued across clusters;
// bits past the disk's end are always zero.

import { bitmapBits } from '../../model/bitmaps';

/** A dirty range of guest bytes (clipped to the disk's end). */
export interface DirtyExtent { offset: bigint; length: bigint }

export class DirtyBitmap {
  /** Bits in the bitmap: ceil(size / granularity). */
  bits: number;
  /** Bits in one cluster of bitmap data. */
  readonly chunkBits: number;
  /** Clusters of bitmap data that may hold a set bit, by their index in the bitmap table. */
  private chunks = new Map<number, Uint8Array>();
  /** Stored in the image (QEMU's persistent bitmaps; the only kind this engine keeps). */
  persistent = true;
  /** Loaded from an image where it was `in-use`: its contents are unknown and it cannot be used. */
  inconsistent = false;

  constructor(
    public name: string,
    readonly granularityBits: number,
    /** The disk's size in bytes. */
    public size: bigint,
    readonly clusterSize: number,
    /** Recording writes (the `auto` flag). */
    public enabled = true,
  ) {
    this.bits = bitmapBits(size, granularityBits);
    this.chunkBits = clusterSize * 8;
  }

  get granularity(): number { return 2 ** this.granularityBits; }

  /** Guest bytes one cluster of bitmap data covers. */
  get chunkBytes(): bigint { return BigInt(this.chunkBits) << BigInt(this.granularityBits); }

  private chunk(i: number): Uint8Array {
    let c = this.chunks.get(i);
    if (c === undefined) {
      c = new Uint8Array(this.clusterSize);
      this.chunks.set(i, c);
    }
    return c;
  }

  /** Set bits [from, to). */
  setBits(from: number, to: number): void {
    to = Math.min(to, this.bits);
    let b = Math.max(0, from);
    while (b < to) {
      const ci = Math.floor(b / this.chunkBits);
      const c = this.chunk(ci);
      const end = Math.min(to, (ci + 1) * this.chunkBits);
      let k = b - ci * this.chunkBits;
      const kEnd = end - ci * this.chunkBits;
      // Unaligned head, whole bytes, unaligned tail.
      while (k < kEnd && (k & 7) !== 0) { c[k >> 3]! |= 1 << (k & 7); k++; }
      if (kEnd - k >= 8) {
        const bytesEnd = kEnd >> 3;
        c.fill(0xff, k >> 3, bytesEnd);
        k = bytesEnd << 3;
      }
      while (k < kEnd) { c[k >> 3]! |= 1 << (k & 7); k++; }
      b = end;
    }
  }

  /** Mark the guest bytes [offset, offset+length) dirty (every bit they touch). */
  setRange(offset: bigint | number, length: bigint | number): void {
    const o = BigInt(offset), l = BigInt(length);
    if (l <= 0n) return;
    const g = BigInt(this.granularityBits);
    const from = o >> g;
    const to = (o + l + (1n << g) - 1n) >> g;
    if (from >= BigInt(this.bits)) return;
    this.setBits(Number(from), Number(to > BigInt(this.bits) ? BigInt(this.bits) : to));
  }

  /** Every bit set (the all-ones table entry, and tests). */
  setAll(): void {
    this.setBits(0, this.bits);
  }

  clear(): void {
    this.chunks.clear();
  }

  get(bit: number): boolean {
    const c = this.chunks.get(Math.floor(bit / this.chunkBits));
    if (c === undefined) return false;
    const k = bit % this.chunkBits;
    return (c[k >> 3]! & (1 << (k & 7))) !== 0;
  }

  /** Indices of the clusters of bitmap data that hold a set bit, ascending. */
  dirtyChunks(): number[] {
    const out: number[] = [];
    for (const [i, c] of this.chunks) if (c.some((b) => b !== 0)) out.push(i);
    return out.sort((a, b) => a - b);
  }

  /** Cluster `i` of bitmap data as stored (a whole cluster; zeros past the last bit). */
  chunkData(i: number): Uint8Array {
    return this.chunks.get(i) ?? new Uint8Array(this.clusterSize);
  }

  /** Load cluster `i` of bitmap data (bits past the disk's end are ignored, as QEMU ignores them). */
  loadChunk(i: number, data: Uint8Array): void {
    const c = this.chunk(i);
    c.set(data.subarray(0, this.clusterSize));
    this.maskTail(i, c);
  }

  /** The all-ones entry: every bit cluster `i` covers. */
  loadAllOnes(i: number): void {
    this.setBits(i * this.chunkBits, (i + 1) * this.chunkBits);
  }

  /** Clear the bits of cluster `i` at and past the disk's end. */
  private maskTail(i: number, c: Uint8Array): void {
    const first = i * this.chunkBits;
    const valid = this.bits - first;
    if (valid >= this.chunkBits) return;
    if (valid <= 0) { c.fill(0); return; }
    const byte = valid >> 3;
    if (valid & 7) c[byte]! &= (1 << (valid & 7)) - 1;
    c.fill(0, byte + ((valid & 7) ? 1 : 0));
  }

  /** Number of set bits. */
  countBits(): number {
    let n = 0;
    for (const c of this.chunks.values()) {
      for (let k = 0; k < c.length; k++) {
        let v = c[k]!;
        while (v) { v &= v - 1; n++; }
      }
    }
    return n;
  }

  /** Dirty bytes as QEMU counts them (set bits x granularity, clipped to the disk's end). */
  dirtyBytes(): bigint {
    let n = 0n;
    for (const e of this.extents()) n += e.length;
    return n;
  }

  /** Runs of set bits [start, end), ascending. */
  runs(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const i of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const c = this.chunks.get(i)!;
      const base = i * this.chunkBits;
      for (let k = 0; k < c.length; k++) {
        const v = c[k]!;
        if (v === 0) continue;
        if (v === 0xff) {
          const bit = base + k * 8;
          const last = out[out.length - 1];
          if (last !== undefined && last[1] === bit) last[1] = bit + 8;
          else out.push([bit, bit + 8]);
          continue;
        }
        for (let j = 0; j < 8; j++) {
          if ((v & (1 << j)) === 0) continue;
          const bit = base + k * 8 + j;
          const last = out[out.length - 1];
          if (last !== undefined && last[1] === bit) last[1] = bit + 1;
          else out.push([bit, bit + 1]);
        }
      }
    }
    return out;
  }

  /** The dirty guest byte ranges, ascending and merged, clipped to the disk's end. */
  extents(): DirtyExtent[] {
    const g = BigInt(this.granularityBits);
    return this.runs().map(([a, b]) => {
      const offset = BigInt(a) << g;
      const end = BigInt(b) << g;
      return { offset, length: (end > this.size ? this.size : end) - offset };
    });
  }

  /** OR `src` in (hbitmap_merge: granularities may differ; every granule a dirty byte touches). */
  merge(src: DirtyBitmap): void {
    if (src.granularityBits === this.granularityBits && src.clusterSize === this.clusterSize) {
      for (const i of src.dirtyChunks()) {
        const from = src.chunks.get(i)!;
        const to = this.chunk(i);
        for (let k = 0; k < to.length; k++) to[k]! |= from[k]!;
        this.maskTail(i, to);
      }
      return;
    }
    for (const e of src.extents()) this.setRange(e.offset, e.length);
  }

  /** bdrv_dirty_bitmap_truncate: the disk's new size; bits past it are dropped, new ones clear. */
  truncate(size: bigint): void {
    this.size = size;
    this.bits = bitmapBits(size, this.granularityBits);
    const last = Math.ceil(this.bits / this.chunkBits);
    for (const [i, c] of [...this.chunks]) {
      if (i >= last) this.chunks.delete(i);
      else this.maskTail(i, c);
    }
  }

  /** A copy under another name (convert --bitmaps). */
  copy(name = this.name): DirtyBitmap {
    const b = new DirtyBitmap(name, this.granularityBits, this.size, this.clusterSize, this.enabled);
    for (const [i, c] of this.chunks) b.chunks.set(i, c.slice());
    return b;
  }
}
