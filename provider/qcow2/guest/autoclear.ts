// The autoclear policy of a writer (qcow2 spec, "autoclear features"): bits a writer does not
// maintain must be cleared before it writes, so that a reader can tell they went stale. These
// are the only header writes outside a commit, and they come before any guest data.
//
// Bit 1 (data-file-raw) is kept: every write here keeps the data file a valid raw image (host
// offset = guest offset, zeros written on write-zeroes, holes punched on discard). Bit 0
// (bitmaps) is kept too: the data path maintains persistent bitmaps as QEMU does (guest/bitmaps.ts:
// flagged in-use before the first write, every write recorded, stored at close).

import * as C from '../spec/constants';
import { encodeHeader } from '../spec/header';
import type { BlockFile } from '../io/blockfile';
import type { Image } from '../meta/image';
import { Qcow2Metadata } from './metadata';

/**
 * The same for the maintenance operations that write an image file directly (check -r,
 * snapshots, commit): true when the header was rewritten (the caller then reopens the image).
 */
export function clearUnknownAutoclearOf(file: BlockFile, img: Image): boolean {
  const h = img.header;
  const known = h.autoclearFeatures & C.QCOW2_AUTOCLEAR_MASK;
  if (known === h.autoclearFeatures) return false;
  file.write(0, encodeHeader({ ...h, autoclearFeatures: known }, img.geometry.clusterSize));
  file.flush();
  return true;
}

/** QEMU's qcow2_do_open for a read-write open: unknown autoclear bits are cleared at once. */
export function clearUnknownAutoclear(meta: Qcow2Metadata): void {
  const known = meta.header.autoclearFeatures & C.QCOW2_AUTOCLEAR_MASK;
  if (known !== meta.header.autoclearFeatures) {
    meta.header.autoclearFeatures = known;
    meta.writeHeaderNow();
  }
}
