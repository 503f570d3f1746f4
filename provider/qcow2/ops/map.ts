// `map`: qemu-img map's extents (img_map / get_block_status): each range's status is asked of
// the top layer and, while unallocated there, of each backing layer below (depth); adjacent
// ranges with equal status and contiguous offsets are merged (can_merge). Output text as qemu-img.

import { GuestSource } from '../guest/dataio';
import { Qcow2Error } from '../../model/errors';

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

function jsonEntry(e: MapEntry): string {
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
    (e.offset !== undefined ? `, "offset": ${e.offset}` : '') + '}';
}

/** `qemu-img map --output=json` text, byte for byte. */
export function mapJsonText(entries: MapEntry[]): string {
  return '[' + entries.map(jsonEntry).join(',\n') + ']\n';
}

const hex = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`);

/** `qemu-img map` human text; refuses data without an offset (compressed clusters) as qemu-img does. */
export function mapHumanText(entries: MapEntry[]): string {
  let s = `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
  for (const e of entries) {
    if (e.data && e.offset === undefined) {
      throw new Qcow2Error('UNSUPPORTED', 'File contains external, encrypted or compressed clusters.');
    }
    if (e.data && !e.zero) s += `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset ?? 0).padEnd(16)}${e.filename ?? ''}\n`;
  }
  return s;
}
