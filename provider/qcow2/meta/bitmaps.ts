// Persistent bitmaps in an image, the parts that are the same wherever they run: reading the
// directory, loading a bitmap's data (QEMU's load_bitmap_data), storing a bitmap's data and table
// through an allocator (store_bitmap_data, store_bitmap), and freeing them (free_bitmap_clusters).
// QEMU's order is kept: a bitmap's data clusters in ascending order, then its table; a table's
// data clusters are freed in table order, then the table. guest/bitmaps.ts runs these in
// QEMU's open and close sequence; ops/amend.ts runs them inside an all-or-nothing plan.

import { invalidImage } from '../../model/errors';
import {
  BME_FLAG_AUTO, BME_FLAG_IN_USE, BME_TABLE_ENTRY_FLAG_ALL_ONES, BME_TABLE_ENTRY_OFFSET_MASK, BitmapEntry, bitmapTableSize,
  decodeBitmapDirectory, tableEntryValid,
} from '../spec/bitmaps';
import { Header } from '../spec/header';
import { DirtyBitmap } from './dirty-bitmap';
import { safeOffset } from './image';

/** Reads bytes of the image file. */
export type ReadAt = (offset: number, length: number) => Uint8Array;

/** The bitmap directory of an image (QEMU's bitmap_list_load), [] without one. */
export function readBitmapDirectory(h: Header, clusterSize: number, read: ReadAt): BitmapEntry[] {
  const ext = h.bitmaps;
  if (ext === undefined || ext.nbBitmaps === 0) return [];
  const off = safeOffset(ext.bitmapDirectoryOffset);
  const dir = read(off, Number(ext.bitmapDirectorySize));
  return decodeBitmapDirectory(dir, ext.nbBitmaps, off, clusterSize, h.size, { strict: true });
}

/** A bitmap table's entries, each checked as QEMU's bitmap_table_load checks them. */
export function readBitmapTable(e: { name: string; tableOffset: bigint; tableSize: number }, clusterSize: number, read: ReadAt): bigint[] {
  const off = safeOffset(e.tableOffset);
  const bytes = read(off, e.tableSize * 8);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const table: bigint[] = [];
  for (let i = 0; i < e.tableSize; i++) {
    const entry = i * 8 + 8 <= bytes.length ? dv.getBigUint64(i * 8) : 0n;
    if (!tableEntryValid(entry, clusterSize)) {
      throw invalidImage(`Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`, off + i * 8);
    }
    table.push(entry);
  }
  return table;
}

/**
 * An entry as a bitmap in memory: its data loaded (load_bitmap), or, for an `in-use` entry, an
 * inconsistent bitmap without data. `size` is the disk's size.
 */
export function loadBitmap(e: BitmapEntry, size: bigint, clusterSize: number, read: ReadAt): DirtyBitmap {
  const b = new DirtyBitmap(e.name, e.granularityBits, size, clusterSize, (e.rawFlags & BME_FLAG_AUTO) !== 0);
  if (e.rawFlags & BME_FLAG_IN_USE) {
    b.inconsistent = true;
    return b;
  }
  const table = readBitmapTable(e, clusterSize, read);
  if (table.length !== bitmapTableSize(size, e.granularityBits, clusterSize)) {
    throw invalidImage(`Could not read bitmap '${e.name}' from image: Invalid argument`, e.tableOffset);
  }
  table.forEach((entry, i) => {
    const data = entry & BME_TABLE_ENTRY_OFFSET_MASK;
    if (data === 0n) {
      if (entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) b.loadAllOnes(i);
      return;
    }
    b.loadChunk(i, read(safeOffset(data), clusterSize));
  });
  return b;
}

/** Where bitmap clusters come from and go (the image's refcounts and file, or a plan's). */
export interface BitmapClusterIo {
  readonly clusterSize: number;
  /** qcow2_alloc_clusters: `n` contiguous clusters; the first one's index. */
  alloc(n: number): number;
  /** qcow2_free_clusters; `discard` for data clusters (QCOW2_DISCARD_ALWAYS), not for tables. */
  free(firstCluster: number, n: number, discard: boolean): void;
  write(offset: number, data: Uint8Array): void;
  read: ReadAt;
}

/** store_bitmap: data clusters that hold a set bit (ascending), then the table. */
export function storeBitmapData(b: DirtyBitmap, io: BitmapClusterIo): { tableOffset: bigint; tableSize: number } {
  const cs = io.clusterSize;
  const tableSize = bitmapTableSize(b.size, b.granularityBits, cs);
  const table = new Uint8Array(tableSize * 8);
  const dv = new DataView(table.buffer);
  for (const i of b.dirtyChunks()) {
    const c = io.alloc(1);
    io.write(c * cs, b.chunkData(i));
    dv.setBigUint64(i * 8, BigInt(c) * BigInt(cs));
  }
  // QEMU always writes every entry; a table of all-zero entries is written too.
  const t = io.alloc(Math.ceil(table.length / cs));
  io.write(t * cs, table);
  return { tableOffset: BigInt(t) * BigInt(cs), tableSize };
}

/** free_bitmap_clusters: the table's data clusters in table order (discarded), then the table. */
export function freeBitmapClusters(e: { name: string; tableOffset: bigint; tableSize: number }, io: BitmapClusterIo): void {
  if (e.tableSize === 0) return;
  let table: bigint[];
  try {
    table = readBitmapTable(e, io.clusterSize, io.read);
  } catch {
    return; // as QEMU: an unreadable table is left (its clusters leak; check -r reclaims them)
  }
  const cs = BigInt(io.clusterSize);
  for (const entry of table) {
    const off = entry & BME_TABLE_ENTRY_OFFSET_MASK;
    if (off !== 0n) io.free(Number(off / cs), 1, true);
  }
  io.free(Number(e.tableOffset / cs), Math.ceil((e.tableSize * 8) / io.clusterSize), false);
}

/** The bitmaps of an image, read-only (QEMU opening it read-only: nothing is marked in-use). */
export function loadBitmaps(h: Header, clusterSize: number, read: ReadAt): DirtyBitmap[] {
  return readBitmapDirectory(h, clusterSize, read).map((e) => loadBitmap(e, h.size, clusterSize, read));
}

