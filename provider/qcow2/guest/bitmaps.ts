// Persistent dirty bitmaps of an image open for writing, in QEMU 7.2's sequence
// (block/qcow2-bitmap.c), so that what we write is what QEMU writes, byte for byte:
//
//   open   (qcow2_load_dirty_bitmaps): every bitmap not `in-use` is loaded and flagged `in-use`
//          on disk, the directory rewritten in place under autoclear bit 0 cleared, then set
//          again (three header writes); `in-use` ones are loaded as inconsistent, without data.
//   remove (qcow2_co_remove_persistent_dirty_bitmap): at once, a new directory without it, the
//          header, then the old directory and the bitmap's clusters freed.
//   close  (qcow2_store_persistent_dirty_bitmaps): every consistent bitmap stored anew, in the
//          directory's order with new bitmaps appended newest first (QEMU's in-memory list):
//          data clusters and table per bitmap, a new directory, a flush of the refcounts, the
//          header; only then the old directory and the old tables are freed.
//
// Guest writes between open and close mark the enabled bitmaps (QEMU's bdrv_set_dirty), so an
// image written here keeps its bitmaps valid. A writer that dies before close leaves the flags
// `in-use`: the bitmaps are then known inconsistent, never silently wrong.
//
// Allocation is the image's refcount component (QEMU's first-fit from free_cluster_index). With
// immediate frees (the bitmap command) a freed cluster is reusable at once and freed data
// clusters are punched, as QEMU does; with deferred frees (the data path) they are reused after
// the commit that follows.

import { Qcow2Error } from '../../model/errors';
import { bitmapConstraintError } from '../../model/bitmaps';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, BitmapEntry, encodeBitmapDirectory } from '../spec/bitmaps';
import * as C from '../spec/constants';
import { BitmapsExtension } from '../spec/header';
import { BitmapClusterIo, freeBitmapClusters, loadBitmap, readBitmapDirectory, storeBitmapData } from '../meta/bitmaps';
import { DirtyBitmap } from '../meta/dirty-bitmap';
import { Qcow2Metadata } from './metadata';

/** A directory entry while the close-time store is built (QEMU's Qcow2Bitmap). */
interface ListEntry extends Pick<BitmapEntry, 'name' | 'tableOffset' | 'tableSize' | 'rawFlags' | 'granularityBits'> {
  bitmap?: DirtyBitmap;
}

export class ImageBitmaps {
  /** The bitmaps in memory, newest first (QEMU's bs->dirty_bitmaps). */
  readonly list: DirtyBitmap[] = [];
  private readonly io: BitmapClusterIo;

  private constructor(private readonly meta: Qcow2Metadata, private readonly fileName: string) {
    const cs = meta.cs;
    this.io = {
      clusterSize: cs,
      alloc: (n) => meta.allocClusters(n),
      free: (first, n, discard) => {
        meta.refcounts.free(first, n);
        if (!discard || meta.refcounts.frees !== 'immediate') return;
        for (let ci = first; ci < first + n; ci++) if (meta.refcounts.get(ci) === 0) meta.host.punchHole(meta.file, ci * cs, cs);
      },
      write: (offset, data) => meta.file.write(offset, data),
      read: (offset, length) => meta.file.read(offset, length),
    };
  }

  /**
   * Load an image's bitmaps (qcow2_load_dirty_bitmaps). `writable`: flag the consistent ones
   * `in-use` on disk now, as QEMU does when it opens an image read-write.
   */
  static open(meta: Qcow2Metadata, fileName: string, writable: boolean): ImageBitmaps {
    const s = new ImageBitmaps(meta, fileName);
    const entries = s.directory();
    let marked = false;
    for (const e of entries) {
      const b = loadBitmap(e, meta.header.size, meta.cs, s.io.read);
      if (!b.inconsistent) {
        e.rawFlags |= BME_FLAG_IN_USE;
        marked = true;
      }
      s.list.unshift(b);
    }
    if (marked && writable) s.updateInPlace(entries);
    return s;
  }

  /** The directory as it is on disk (QEMU reads it anew each time). */
  private directory(): BitmapEntry[] {
    return readBitmapDirectory(this.meta.header, this.meta.cs, this.io.read);
  }

  find(name: string): DirtyBitmap | undefined {
    return this.list.find((b) => b.name === name);
  }

  /** A new bitmap (block-dirty-bitmap-add): first in memory, stored at close. */
  add(b: DirtyBitmap): void {
    if (this.find(b.name)) throw new Qcow2Error('REFUSED', `Bitmap already exists: ${b.name}`, { file: this.fileName });
    this.list.unshift(b);
  }

  /** Mark guest bytes written in every recording bitmap. */
  markDirty(offset: number | bigint, length: number | bigint): void {
    for (const b of this.list) if (b.enabled) b.setRange(offset, length);
  }

  /** True when some bitmap records writes (the data path marks only then). */
  get recording(): boolean {
    return this.list.some((b) => b.enabled);
  }

  /** block-dirty-bitmap-remove: a bitmap on disk leaves the image at once. */
  remove(name: string): void {
    const i = this.list.findIndex((b) => b.name === name);
    if (i < 0) throw new Qcow2Error('NOT_FOUND', `Dirty bitmap '${name}' not found`, { file: this.fileName });
    const b = this.list[i]!;
    if (b.persistent && this.meta.header.bitmaps) {
      const entries = this.directory();
      const j = entries.findIndex((e) => e.name === name);
      if (j >= 0) {
        const [gone] = entries.splice(j, 1);
        this.updateExtHeaderAndDir(entries);
        freeBitmapClusters(gone!, this.io);
      }
    }
    this.list.splice(i, 1);
  }

  /**
   * Store every consistent bitmap (qcow2_store_persistent_dirty_bitmaps at close). Nothing is
   * written when there is none; inconsistent ones stay as they are on disk.
   */
  store(): void {
    const meta = this.meta;
    const entries: ListEntry[] = meta.header.bitmaps ? this.directory() : [];
    const drop: Array<{ name: string; tableOffset: bigint; tableSize: number }> = [];
    let needWrite = false;
    for (const b of this.list) {
      if (!b.persistent || b.inconsistent) continue;
      needWrite = true;
      const why = bitmapConstraintError(meta.header.size, b.granularityBits, meta.cs, b.name);
      if (why) throw new Qcow2Error('REFUSED', `Bitmap '${b.name}' doesn't satisfy the constraints: ${why}`, { file: this.fileName });
      let e = entries.find((x) => x.name === b.name);
      if (e === undefined) {
        e = { name: b.name, tableOffset: 0n, tableSize: 0, rawFlags: 0, granularityBits: b.granularityBits };
        entries.push(e);
      } else {
        if ((e.rawFlags & BME_FLAG_IN_USE) === 0) {
          throw new Qcow2Error('INVALID_IMAGE', `Bitmap '${b.name}' already exists in the image`, { file: this.fileName });
        }
        drop.push({ name: e.name, tableOffset: e.tableOffset, tableSize: e.tableSize });
        e.tableOffset = 0n;
        e.tableSize = 0;
      }
      e.rawFlags = b.enabled ? BME_FLAG_AUTO : 0;
      e.granularityBits = b.granularityBits;
      e.bitmap = b;
    }
    if (!needWrite) return;
    for (const e of entries) {
      if (e.bitmap === undefined) continue;
      const t = storeBitmapData(e.bitmap, this.io);
      e.tableOffset = t.tableOffset;
      e.tableSize = t.tableSize;
    }
    this.updateExtHeaderAndDir(entries);
    for (const t of drop) freeBitmapClusters(t, this.io);
  }

  /** update_ext_header_and_dir_in_place: the in-use flags, with autoclear bit 0 cleared meanwhile. */
  private updateInPlace(entries: BitmapEntry[]): void {
    const meta = this.meta;
    const ext = meta.header.bitmaps!;
    meta.writeHeaderFields((h) => { h.autoclearFeatures &= ~C.QCOW2_AUTOCLEAR_BITMAPS; });
    meta.file.write(Number(ext.bitmapDirectoryOffset), encodeBitmapDirectory(entries));
    meta.writeHeaderFields(() => undefined);
    meta.writeHeaderFields((h) => { h.autoclearFeatures |= C.QCOW2_AUTOCLEAR_BITMAPS; });
  }

  /**
   * update_ext_header_and_dir: a new directory (or none), the refcounts flushed, the header,
   * then the old directory freed.
   */
  private updateExtHeaderAndDir(entries: ListEntry[]): void {
    const meta = this.meta;
    const old = meta.header.bitmaps;
    let ext: BitmapsExtension | undefined;
    if (entries.length > 0) {
      const dir = encodeBitmapDirectory(entries);
      const c = this.io.alloc(Math.ceil(dir.length / meta.cs));
      meta.file.write(c * meta.cs, dir);
      meta.commit(); // qcow2_flush_caches: the refcounts of what was just written reach the disk first
      ext = { nbBitmaps: entries.length, bitmapDirectorySize: BigInt(dir.length), bitmapDirectoryOffset: BigInt(c) * BigInt(meta.cs) };
    }
    meta.writeHeaderFields((h) => {
      if (ext) {
        h.bitmaps = ext;
        h.autoclearFeatures |= C.QCOW2_AUTOCLEAR_BITMAPS;
      } else {
        delete h.bitmaps;
        h.autoclearFeatures &= ~C.QCOW2_AUTOCLEAR_BITMAPS;
      }
    });
    if (old && old.bitmapDirectorySize > 0n) {
      this.io.free(Number(old.bitmapDirectoryOffset / BigInt(meta.cs)), Math.ceil(Number(old.bitmapDirectorySize) / meta.cs), false);
    }
  }
}

