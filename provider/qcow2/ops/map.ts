// `map`: qemu-img map's extents (img_map / get_block_status): each range's status is asked of
// the top layer and, while unallocated there, of each backing layer below (depth); adjacent
// ranges with equal status and contiguous offsets are merged (can_merge). The text forms are the
// CLI's (provider/cli/render/map.ts).

import { GuestSource } from '../guest/dataio';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** File the offset refers to (not printed in JSON; merging compares it, as qemu-img does). */
  filename?: string;
}

function statusAt(top: GuestSource, offset: number, bytes: number): MapEntry {
  let layer: GuestSource = top;
  let depth = 0;
  for (;;) {
    const st = layer.blockStatus(offset, bytes);
    bytes = st.length;
    const stop = st.data || st.zero || !layer.backing;
    if (stop) {
      const e: MapEntry = { start: offset, length: bytes, depth, present: st.allocated, zero: st.zero, data: st.data };
      if (st.offset !== undefined) {
        e.offset = st.offset;
        if (st.file !== undefined) e.filename = st.file;
      }
      return e;
    }
    layer = layer.backing!;
    depth++;
  }
}

function canMerge(a: MapEntry, b: MapEntry): boolean {
  if (a.length === 0) return false;
  if (a.zero !== b.zero || a.data !== b.data || a.depth !== b.depth || a.present !== b.present) return false;
  if ((a.offset !== undefined) !== (b.offset !== undefined) || a.filename !== b.filename) return false;
  if (a.offset !== undefined && a.offset + a.length !== b.offset) return false;
  return true;
}

/** The merged extents of a guest view, as qemu-img map computes them. */
export function mapSource(top: GuestSource, onEntry?: (e: MapEntry) => void): MapEntry[] {
  const out: MapEntry[] = [];
  const size = top.size;
  let curr: MapEntry = { start: 0, length: 0, depth: 0, present: false, zero: false, data: false };
  while (curr.start + curr.length < size) {
    const off = curr.start + curr.length;
    const next = statusAt(top, off, size - off);
    if (canMerge(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr.length > 0) {
      out.push(curr);
      onEntry?.(curr);
    }
    curr = next;
  }
  out.push(curr);
  onEntry?.(curr);
  return out;
}
