// convert -c: the copy loop of qemu-img convert for compressed output (convert_iteration_sectors
// and convert_co_write with BDRV_REQ_WRITE_COMPRESSED), so the clusters compressed, their order
// and the file's end are qemu-img's:
//
// - the source is walked by block status (through its backing chain): zero ranges are skipped
//   (a new image reads as zeros), data ranges are copied in requests of at most qemu-img's
//   buffer (2 MiB, or a cluster when larger), cut to whole clusters; a range shorter than a
//   cluster counts as data (compressed clusters are written whole) (convert-sparse.ts);
// - a cluster that is all zeros is skipped (qemu-img writes compressed data a cluster at a time
//   and leaves zero ones out), except with -S 0, where zero ranges are requests too and every
//   cluster is compressed; every other one is compressed, the last one padded with zeros past
//   the image end; a cluster whose compressed form does not fit in cluster size - 1 bytes is
//   written uncompressed, as QEMU does (-ENOMEM);
// - compressed clusters are placed in guest order (QEMU places them in the order its threads
//   finish, which is guest order when they finish in order), packed by qcow2_alloc_bytes;
// - at the end the file is extended to a multiple of 512 bytes (qemu-img's "signal EOF to
//   align" write).

import type { ClusterCompressor, CompressSlot } from '../io/compressor';
import { isZeroBuffer } from '../io/sparse';
import { Qcow2Image } from '../guest/qcow2';
import { GuestSource, ProgressFn } from '../guest/source';
import { convertRequests } from './convert-sparse';

/**
 * Requests read into one slot of the compressor: its data clusters' guest offsets, the zeros to
 * write among them (-B: at the index of the cluster they come before), and the progress each
 * request completes.
 */
interface Batch { slot: CompressSlot; at: number[]; zeros: Array<{ before: number; offset: number; length: number }>; marks: number[] }

/**
 * Copy the guest view of `src` into a new, empty image as compressed clusters. `progress` counts
 * the bytes of the data requests, as qemu-img's progress counts them.
 *
 * Requests are read into the compressor's two slots in turn, as many as a slot holds: while one
 * slot's clusters are compressed by the codec threads, this thread reads the next requests into
 * the other, then places the first slot's results (joining in the compression of what is left of
 * it first), so the reads and writes overlap the compression.
 */
export function copyGuestCompressed(src: GuestSource, dst: Qcow2Image, compressor: ClusterCompressor, progress?: ProgressFn, sparse?: number,
  over?: { backingSize?: number }): void {
  const size = Math.min(src.size, dst.size);
  const cs = dst.cs;
  // -S 0: every cluster is written, zeros too; any other -S changes nothing here.
  const full = sparse === 0;
  // -B: what the source's top layer does not hold is left to the backing file; its zeros are
  // written as zeros (the backing file may hold data there), as qemu-img does when the target
  // has a backing file (no zero-init).
  const requests = convertRequests(src, size, cs, {
    compressed: true, ...(sparse !== undefined ? { sparse } : {}), ...(over ? { topLayer: true, ...(over.backingSize !== undefined ? { backingSize: over.backingSize } : {}) } : {}),
  }).filter((r) => r.kind === 'data' || (r.kind === 'zero' && (full || over !== undefined)));
  const copied = (r: (typeof requests)[number]) => r.kind === 'data' || full;
  const total = requests.reduce((t, r) => t + (copied(r) ? r.n : 0), 0);
  let done = 0;
  progress?.(0, total);
  const place = (b: Batch): void => {
    const input = Buffer.from(b.slot.input.buffer, b.slot.input.byteOffset, b.slot.input.length);
    const results = b.slot.finish();
    // In guest order: each cluster after the zeros that come before it.
    let z = 0;
    const zerosBefore = (i: number) => {
      for (; z < b.zeros.length && b.zeros[z]!.before <= i; z++) dst.writeZeroes(b.zeros[z]!.offset, b.zeros[z]!.length, { unmap: true });
    };
    results.forEach((c, i) => {
      zerosBefore(i);
      if (c) dst.writeCompressed(b.at[i]! / cs, c);
      else dst.write(b.at[i]!, input.subarray(i * cs, i * cs + Math.min(cs, size - b.at[i]!)));
    });
    zerosBefore(Infinity);
    dst.maybeCommit();
    for (const m of b.marks) progress?.(m, total);
  };
  let started: Batch | undefined;
  let cur: Batch | undefined;
  const flush = (): void => {
    if (cur === undefined) return;
    cur.slot.start(cur.at.length);
    if (started !== undefined) place(started);
    started = cur;
    cur = undefined;
  };
  try {
    for (const r of requests) {
      if (!copied(r)) {
        cur ??= { slot: compressor.slot(), at: [], zeros: [], marks: [] };
        cur.zeros.push({ before: cur.at.length, offset: r.pos, length: r.n });
        continue;
      }
      const whole = Math.ceil(r.n / cs) * cs;
      if (cur !== undefined && (cur.at.length * cs + whole) > cur.slot.capacity * cs) flush();
      cur ??= { slot: compressor.slot(), at: [], zeros: [], marks: [] };
      // A request (at most max(2 MiB, one cluster)) always fits an empty slot (at least 4 MiB, or one cluster).
      const base = cur.at.length * cs;
      const view = Buffer.from(cur.slot.input.buffer, cur.slot.input.byteOffset + base, whole);
      src.readInto(view.subarray(0, r.n), r.pos);
      view.fill(0, r.n); // the last cluster past the image end: zeros, as QEMU pads it
      // The clusters with data, moved together to be compressed in one batch.
      let kept = 0;
      for (let q = 0; q < whole; q += cs) {
        if (!full && isZeroBuffer(view, q, q + cs)) {
          // A zero cluster: left out of a new image; written as zeros over a backing file.
          if (over) cur.zeros.push({ before: cur.at.length, offset: r.pos + q, length: Math.min(cs, size - r.pos - q) });
          continue;
        }
        if (q !== kept * cs) view.copy(view, kept * cs, q, q + cs);
        cur.at.push(r.pos + q);
        kept++;
      }
      done += r.n;
      cur.marks.push(done);
    }
    flush();
    if (started !== undefined) place(started);
    started = undefined;
  } finally {
    // A failure midway: the started slots' claims end before anything else happens.
    for (const b of [started, cur]) {
      if (b === undefined || !b.slot.busy) continue;
      try {
        b.slot.finish();
      } catch {
        // the first failure is the one reported
      }
    }
  }
  // qemu-img's last compressed write (of no bytes) aligns the end of the file to a sector.
  const len = dst.file.size();
  if (len % 512) dst.file.truncate(len + 512 - (len % 512));
}
