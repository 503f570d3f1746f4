// Import (qemu-img convert -O qcow2): stream a guest view (raw file, or qcow2 through its chain)
// into a new image. Sparse-aware: ranges the source reports as holes or zero clusters are not
// read, read clusters that are all zeros are not allocated; with an external data file the data
// goes to the data file at guest offsets. The image is built under temporary names and linked
// into place last, so an existing image or data file is never touched and a failure leaves
// nothing behind. Memory is bounded: one chunk buffer plus the metadata caches.

import * as fs from 'fs';
import * as path from 'path';
import { NodeBlockFile, ioError } from '../io/blockfile';
import { CreatePlan, fsyncDir, writePlan } from './create';
import { GuestSource, ProgressFn, Qcow2Image } from '../guest/dataio';
import { Qcow2Error } from '../../model/errors';
import { lockImage } from '../io/lock';
import { isZeroBuffer, writeZeros } from '../io/sparse';

const CHUNK = 4 << 20;

/** Sub-ranges of [offset, offset+length) the source knows to read as zeros without reading them. */
export function knownZeroRanges(src: GuestSource, offset: number, length: number): Array<{ start: number; length: number; zero: boolean }> {
  const out: Array<{ start: number; length: number; zero: boolean }> = [];
  let p = offset;
  const end = offset + length;
  while (p < end) {
    let layer: GuestSource | null = src;
    let n = end - p;
    let zero = false;
    while (layer) {
      if (p >= layer.size) { zero = true; break; }
      const st = layer.blockStatus(p, n);
      n = Math.min(n, st.length);
      if (st.zero) { zero = true; break; }
      if (st.data) break;
      layer = layer.backing;
      if (!layer) zero = true;
    }
    const last = out[out.length - 1];
    if (last && last.zero === zero && last.start + last.length === p) last.length += n;
    else out.push({ start: p, length: n, zero });
    p += n;
  }
  return out;
}

/** Copy a guest view into an open, empty image: only non-zero clusters are written. */
export function copyGuest(src: GuestSource, dst: Qcow2Image, progress?: ProgressFn): void {
  const size = Math.min(src.size, dst.size);
  const cs = dst.cs;
  const chunk = Math.max(cs, Math.floor(CHUNK / cs) * cs);
  for (let off = 0; off < size; off += chunk) {
    const len = Math.min(chunk, size - off);
    for (const r of knownZeroRanges(src, off, len)) {
      if (r.zero) continue;
      // Whole destination clusters around the data range.
      const a = Math.floor(r.start / cs) * cs;
      const b = Math.min(size, Math.ceil((r.start + r.length) / cs) * cs);
      copyRange(src, dst, a, b);
    }
    dst.maybeCommit();
    progress?.(off + len, size);
  }
  if (size === 0) progress?.(0, 0);
}

let chunkBuf: Buffer | undefined;

function copyRange(src: GuestSource, dst: Qcow2Image, a: number, b: number): void {
  const cs = dst.cs;
  for (let p = a; p < b; p += CHUNK) {
    const n = Math.min(CHUNK, b - p);
    let buf: Buffer;
    if (src.readInto) {
      chunkBuf ??= Buffer.allocUnsafe(CHUNK);
      buf = chunkBuf.subarray(0, n);
      src.readInto(buf, p);
    } else {
      buf = src.read(p, n);
    }
    // Coalesce runs of non-zero clusters into one write.
    let runStart = -1;
    for (let q = 0; q <= n; q += cs) {
      const nonZero = q < n && !isZeroBuffer(buf, q, Math.min(n, q + cs));
      if (nonZero && runStart < 0) runStart = q;
      if (!nonZero && runStart >= 0) {
        const stop = Math.min(q, n);
        dst.write(p + runStart, buf.subarray(runStart, stop));
        runStart = -1;
      }
    }
  }
}

function tempName(target: string, tag: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${tag}-${process.pid}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`);
}

function existsAny(p: string): boolean {
  try { fs.lstatSync(p); return true; } catch { return false; }
}

/**
 * Write a planned image at `imagePath` holding the guest view of `src`. Never overwrites: the
 * image and data file must not exist. On failure nothing new is left behind.
 */
export function writeImportedImage(imagePath: string, plan: CreatePlan, src: GuestSource, progress?: ProgressFn): void {
  const o = plan.options;
  if (existsAny(imagePath)) {
    throw new Qcow2Error('EXISTS', `Image file '${imagePath}' already exists; refusing to overwrite it`, { file: imagePath, property: 'path' });
  }
  if (o.dataFile !== undefined && existsAny(o.dataFile)) {
    throw new Qcow2Error('EXISTS', `Data file '${o.dataFile}' already exists; refusing to overwrite it`, { file: o.dataFile, property: 'data_file' });
  }
  const tmpImg = tempName(imagePath, 'import');
  const tmpData = o.dataFile !== undefined ? tempName(o.dataFile, 'import') : undefined;
  const created: string[] = [];
  let img: Qcow2Image | undefined;
  let df: NodeBlockFile | undefined;
  try {
    const f = NodeBlockFile.createExclusive(tmpImg);
    created.push(tmpImg);
    try {
      writePlan(plan, f);
    } finally {
      f.close();
    }
    if (tmpData !== undefined) {
      df = NodeBlockFile.createExclusive(tmpData);
      created.push(tmpData);
      const dsize = plan.dataFileSize ?? 0;
      if (plan.dataFilePrealloc) writeZeros(df, 0, dsize, true);
      df.truncate(dsize);
    }
    const dataLock = df ? lockImage(df.fd, tmpData!, 'write') : undefined;
    try {
      img = Qcow2Image.open(tmpImg, { writable: true, backing: null, ...(df ? { dataFile: df } : {}) });
      copyGuest(src, img, progress);
      img.close();
      img = undefined;
      df?.flush();
    } finally {
      img?.close();
      dataLock?.release();
      df?.close();
      df = undefined;
    }
    // Link into place: the data file first (the image names it), the image last.
    if (tmpData !== undefined) {
      try { fs.linkSync(tmpData, o.dataFile!); } catch (e) { throw ioError(e, o.dataFile!, 'create'); }
      created.push(o.dataFile!);
    }
    try { fs.linkSync(tmpImg, imagePath); } catch (e) { throw ioError(e, imagePath, 'create'); }
    fs.unlinkSync(tmpImg);
    if (tmpData !== undefined) fs.unlinkSync(tmpData);
    fsyncDir(path.dirname(imagePath));
    if (o.dataFile !== undefined) fsyncDir(path.dirname(o.dataFile));
  } catch (e) {
    df?.close();
    for (const p of created) fs.rmSync(p, { force: true });
    throw e;
  }
}
