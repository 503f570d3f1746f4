// Import preflight: before a new image is created from a source, every guest cluster mapping
// of each qcow2 layer must lie inside its files, so a truncated or corrupt source fails before
// anything is written rather than halfway through.

import * as C from '../../spec/constants';
import { invalidImage } from '../../../model/errors';
import { clusterTypeOf, entryHi, entryLo, entryOf, hostOffsetOf, parseCompressedEntry } from '../../spec/l2';
import { Qcow2Image } from '../qcow2';
import { GuestSource } from '../source';

/** Every guest cluster mapping of an image lies inside its files: catches truncated images early. */
export function validateMappings(img: Qcow2Image): void {
  const fileSize = img.file.size();
  const cs = img.cs;
  const g = img.g;
  const meta = img.meta;
  for (let i = 0; i < meta.l1.length; i++) {
    const off = meta.l1[i]! & C.L1E_OFFSET_MASK;
    if (off === 0n) continue;
    if (off % BigInt(cs) !== 0n || off + BigInt(cs) > BigInt(fileSize)) {
      throw invalidImage(`'${img.fileName}' is truncated or corrupt: L2 table of L1 entry ${i} at 0x${off.toString(16)} lies outside the file (${fileSize} bytes)`, off);
    }
    const t = meta.l2Table(i)!;
    for (let k = 0; k < g.l2Entries; k++) {
      const at = k * g.l2EntrySize;
      // An entry of all zero bits maps nothing (most of a sparse image's): skipped unread.
      if (t.view.getUint32(at) === 0 && t.view.getUint32(at + 4) === 0) continue;
      const hi = entryHi(t.view, at);
      const lo = entryLo(t.view, at);
      const type = clusterTypeOf(hi, lo, meta.fmt);
      if (type === 'compressed') {
        if (img.hasDataFile) throw invalidImage(`'${img.fileName}': compressed cluster in an image with an external data file`);
        const r = parseCompressedEntry(entryOf(hi, lo), g.clusterBits);
        if (r.offset >= BigInt(fileSize)) {
          throw invalidImage(`'${img.fileName}' is truncated or corrupt: compressed cluster at 0x${r.offset.toString(16)} lies outside the file`, r.offset);
        }
      } else if ((type === 'normal' || type === 'zero-alloc') && !img.hasDataFile) {
        // A cluster starting past the end is lost data; one the file ends inside of is not (QEMU
        // writes only the subclusters it needs, and reads past the end as zeros).
        const host = hostOffsetOf(hi, lo);
        if (host % cs !== 0 || host >= fileSize) {
          if (type === 'zero-alloc') continue; // reads as zeros whatever is there
          throw invalidImage(`'${img.fileName}' is truncated or corrupt: data cluster at 0x${host.toString(16)} lies outside the file (${fileSize} bytes)`, host);
        }
      }
    }
  }
}

/** Validate a whole chain's mappings (qcow2 layers). */
export function validateChain(src: GuestSource): void {
  for (let s: GuestSource | null = src; s; s = s.backing) if (s instanceof Qcow2Image) validateMappings(s);
}
