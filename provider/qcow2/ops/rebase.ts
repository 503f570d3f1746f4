// Safe rebase (qemu-img rebase without -u): every range the image does not allocate itself is
// read through the old backing chain and through the new one; where they differ, the old
// content is written into the image (copy-on-write brings whole clusters along). Then the
// backing reference changes, with the header, as the last write of the commit. The guest view
// is the same before and after.

import { Qcow2Image } from '../guest/qcow2';
import { GuestSource, ProgressFn } from '../guest/source';
import { isZeroBuffer } from '../io/sparse';

const CHUNK = 1 << 20;

/** Copy what differs between `img`'s current backing chain and `next`, then point at `next`. */
export function rebaseSafe(img: Qcow2Image, next: GuestSource | null, backingFile: string, backingFormat: string | undefined, progress?: ProgressFn): { copiedBytes: number } {
  const size = img.size;
  const old = img.backing;
  let copied = 0;
  const readOld = (p: number, n: number) => (old ? old.read(p, n) : Buffer.alloc(n));
  const readNew = (p: number, n: number) => (next ? next.read(p, n) : Buffer.alloc(n));
  let p = 0;
  while (p < size) {
    const n0 = Math.min(CHUNK, size - p);
    const st = img.allocatedHere(p);
    const n = Math.min(n0, st.length);
    if (!st.allocated) {
      const a = readOld(p, n);
      const b = readNew(p, n);
      // Compare in 512-byte sectors as qemu-img does and write the differing runs.
      let runStart = -1;
      for (let q = 0; q <= n; q += 512) {
        const differs = q < n && a.compare(b, q, Math.min(n, q + 512), q, Math.min(n, q + 512)) !== 0;
        if (differs && runStart < 0) runStart = q;
        if (!differs && runStart >= 0) {
          const stop = Math.min(q, n);
          // As qemu-img: a differing run the old chain reads as zeros becomes a zero write
          // (a zero cluster where it covers one), not a data cluster full of zeros.
          const run = a.subarray(runStart, stop);
          if (isZeroBuffer(run)) img.writeZeroes(p + runStart, stop - runStart);
          else img.write(p + runStart, run);
          copied += stop - runStart;
          runStart = -1;
        }
      }
      img.maybeCommit();
    }
    p += n;
    progress?.(p, size);
  }
  img.setBacking(backingFile, backingFormat);
  img.commit();
  return { copiedBytes: copied };
}
