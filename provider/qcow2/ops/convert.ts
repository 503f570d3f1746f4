// Import (qemu-img convert -O qcow2): stream a guest view (raw file, or qcow2 through its chain)
// into a new image. Sparse-aware: ranges the source reports as holes or zero clusters are not
// read, read clusters that are all zeros are not allocated; with an external data file the data
// goes to the data file at guest offsets. The image is built under temporary names and
// published (io/publish.ts) last, so an existing image or data file is never touched and a
// failure leaves nothing behind. Memory is bounded: one chunk buffer plus the metadata caches.

import { BlockFile } from '../io/blockfile';
import { HostFs, localFs } from '../io/hostfs';
import { Publication, existsError } from '../io/publish';
import { isZeroBuffer, writeZeros } from '../io/sparse';
import { CreatePlan, writePlan } from './create';
import { Qcow2Image } from '../guest/qcow2';
import { GuestSource, ProgressFn } from '../guest/source';
import { DirtyBitmap } from '../meta/dirty-bitmap';

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

/** qemu-img convert's request size (its I/O buffer, 2 MiB): how its progress advances. */
const PROGRESS_STEP = 2 << 20;

/**
 * Copy a guest view into an open, empty image: only non-zero clusters are written. `progress`
 * counts data bytes as qemu-img convert counts them (the ranges that are not known zeros, in
 * steps of at most 2 MiB, out of all of them), so a caller can print qemu-img's percentages.
 */
export function copyGuest(src: GuestSource, dst: Qcow2Image, progress?: ProgressFn): void {
  const size = Math.min(src.size, dst.size);
  const cs = dst.cs;
  const chunk = Math.max(cs, Math.floor(CHUNK / cs) * cs);
  let total = 0, done = 0;
  if (progress) {
    for (let off = 0; off < size; off += chunk) {
      for (const r of knownZeroRanges(src, off, Math.min(chunk, size - off))) if (!r.zero) total += r.length;
    }
  }
  for (let off = 0; off < size; off += chunk) {
    const len = Math.min(chunk, size - off);
    for (const r of knownZeroRanges(src, off, len)) {
      if (r.zero) continue;
      // Whole destination clusters around the data range.
      const a = Math.floor(r.start / cs) * cs;
      const b = Math.min(size, Math.ceil((r.start + r.length) / cs) * cs);
      copyRange(src, dst, a, b);
      if (progress) {
        for (let p = r.start; p < r.start + r.length; p += PROGRESS_STEP) {
          done += Math.min(PROGRESS_STEP, r.start + r.length - p);
          progress(done, total);
        }
      }
    }
    dst.maybeCommit();
  }
  progress?.(total, total);
}

let chunkBuf: Buffer | undefined;

function copyRange(src: GuestSource, dst: Qcow2Image, a: number, b: number): void {
  const cs = dst.cs;
  chunkBuf ??= Buffer.allocUnsafe(CHUNK);
  for (let p = a; p < b; p += CHUNK) {
    const n = Math.min(CHUNK, b - p);
    const buf = chunkBuf.subarray(0, n);
    src.readInto(buf, p);
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

/**
 * convert --bitmaps: the bitmaps (in their directory order) added to the new image after its
 * data, as qemu-img adds them (so the copy does not mark them), stored when it closes: same
 * names, granularities, recording flags and bits, the same directory order.
 */
export function copyBitmaps(dst: Qcow2Image, bitmaps: readonly DirtyBitmap[]): void {
  dst.commit();
  const target = dst.bitmaps();
  // QEMU's lists are newest first: adding the source's in reverse keeps its directory order.
  for (const b of [...bitmaps].reverse()) {
    const copy = new DirtyBitmap(b.name, b.granularityBits, BigInt(dst.size), dst.cs, b.enabled);
    copy.merge(b);
    target.add(copy);
  }
}

/**
 * Write a planned image at `imagePath` holding the guest view of `src`. Never overwrites: the
 * image and data file must not exist. On failure nothing new is left behind.
 */
export function writeImportedImage(imagePath: string, plan: CreatePlan, src: GuestSource, progress?: ProgressFn, host: HostFs = localFs,
  bitmaps?: readonly DirtyBitmap[]): void {
  const o = plan.options;
  if (host.lstat(imagePath) !== undefined) throw existsError(imagePath, 'image');
  if (o.dataFile !== undefined && host.lstat(o.dataFile) !== undefined) throw existsError(o.dataFile, 'data file');
  const pub = new Publication(host);
  try {
    // The data file first: the image names it, so it is published first too.
    let df: BlockFile | null = null;
    if (o.dataFile !== undefined) {
      df = pub.create(o.dataFile, 'data file');
      const dsize = plan.dataFileSize ?? 0;
      if (plan.dataFilePrealloc) writeZeros(df, 0, dsize, true);
      df.truncate(dsize);
    }
    const f = pub.create(imagePath, 'image');
    writePlan(plan, f);
    const img = Qcow2Image.over(f, { writable: true, dataFile: df, fileName: imagePath, host });
    copyGuest(src, img, progress);
    if (bitmaps) copyBitmaps(img, bitmaps);
    img.close();
    pub.publish();
  } catch (e) {
    pub.abort();
    throw e;
  }
}
