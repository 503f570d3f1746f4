// convert -c: the copy loop of qemu-img convert for compressed output (convert_iteration_sectors
// and convert_co_write with BDRV_REQ_WRITE_COMPRESSED), so the clusters compressed, their order
// and the file's end are qemu-img's:
//
// - the source is walked by block status (through its backing chain): zero ranges are skipped
//   (a new image reads as zeros), data ranges are copied in requests of at most qemu-img's
//   buffer (2 MiB, or a cluster when larger), cut to whole clusters; a range shorter than a
//   cluster counts as data (compressed clusters are written whole);
// - a cluster that is all zeros is skipped (qemu-img writes compressed data a cluster at a time
//   and leaves zero ones out); every other one is compressed, the last one padded with zeros past
//   the image end; a cluster whose compressed form does not fit in cluster size - 1 bytes is
//   written uncompressed, as QEMU does (-ENOMEM);
// - compressed clusters are placed in guest order (QEMU places them in the order its threads
//   finish, which is guest order when they finish in order), packed by qcow2_alloc_bytes;
// - at the end the file is extended to a multiple of 512 bytes (qemu-img's "signal EOF to
//   align" write).

import type { ClusterCompressor } from '../io/compressor';
import { isZeroBuffer } from '../io/sparse';
import { Qcow2Image } from '../guest/qcow2';
import { GuestSource, ProgressFn } from '../guest/source';
import { knownZeroRanges } from './convert';

/** qemu-img convert's IO_BUF_SIZE and MAX_BUF_SECTORS. */
const IO_BUF = 2 << 20;
const MAX_BUF = 16 << 20;

interface Request { pos: number; n: number; data: boolean }

/** The requests qemu-img convert -c makes over `size` bytes of `src` (cluster size `cs`). */
export function compressedRequests(src: GuestSource, size: number, cs: number): Request[] {
  const buf = Math.min(MAX_BUF, Math.max(IO_BUF, cs));
  const out: Request[] = [];
  let pos = 0, statusEnd = 0, data = false;
  while (pos < size) {
    if (statusEnd <= pos) {
      const first = knownZeroRanges(src, pos, Math.min(size - pos, 1 << 30))[0]!;
      data = !first.zero;
      statusEnd = pos + first.length;
    }
    let n = statusEnd - pos;
    if (data) n = Math.min(n, buf);
    if (n < cs) {
      n = Math.min(cs, size - pos);
      data = true;
    } else {
      n -= n % cs;
    }
    out.push({ pos, n, data });
    pos += n;
  }
  return out;
}

/**
 * Copy the guest view of `src` into a new, empty image as compressed clusters. `progress` counts
 * the bytes of the data requests, as qemu-img's progress counts them.
 */
export function copyGuestCompressed(src: GuestSource, dst: Qcow2Image, compressor: ClusterCompressor, progress?: ProgressFn): void {
  const size = Math.min(src.size, dst.size);
  const cs = dst.cs;
  const requests = compressedRequests(src, size, cs).filter((r) => r.data);
  const total = requests.reduce((t, r) => t + r.n, 0);
  let done = 0;
  progress?.(0, total);
  let buf = Buffer.alloc(0);
  for (const r of requests) {
    const whole = Math.ceil(r.n / cs) * cs;
    // Read straight into the compressor's batch where it fits (no copy on the way to the threads).
    const shared = compressor.input(whole);
    if (shared === undefined && buf.length < whole) buf = Buffer.alloc(whole);
    const view = shared !== undefined ? Buffer.from(shared.buffer, shared.byteOffset, whole) : buf.subarray(0, whole);
    src.readInto(view.subarray(0, r.n), r.pos);
    view.fill(0, r.n); // the last cluster past the image end: zeros, as QEMU pads it
    // The clusters with data, moved together to be compressed in one batch.
    const at: number[] = [];
    for (let q = 0; q < whole; q += cs) {
      if (isZeroBuffer(view, q, q + cs)) continue;
      if (q !== at.length * cs) view.copy(view, at.length * cs, q, q + cs);
      at.push(r.pos + q);
    }
    if (at.length) {
      const packed = compressor.compress(view.subarray(0, at.length * cs), cs);
      packed.forEach((c, i) => {
        if (c) dst.writeCompressed(at[i]! / cs, c);
        else dst.write(at[i]!, view.subarray(i * cs, i * cs + Math.min(cs, size - at[i]!)));
      });
      dst.maybeCommit();
    }
    done += r.n;
    progress?.(done, total);
  }
  // qemu-img's last compressed write (of no bytes) aligns the end of the file to a sector.
  const len = dst.file.size();
  if (len % 512) dst.file.truncate(len + 512 - (len % 512));
}
