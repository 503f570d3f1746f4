// Mapping as data: what the guest bytes at an offset of one image layer are, looked up in its
// metadata without doing any I/O on guest data (as Cloud Hypervisor's qcow metadata.rs separates
// lookup from I/O). Readers, block status and writers act on mappings.
//
// A mapping is one run: from the asked offset, the bytes whose clusters (extended L2:
// subclusters) have the same kind and, where they have a host offset, lie at consecutive host
// offsets, across L2 tables. So a host-contiguous run is read with one pread however many
// clusters it spans. Standard L2 tables are scanned on the entries' u32 halves.

import * as C from '../spec/constants';
import {
  L2Halves, SubclusterType, clusterTypeOf, entryHi, entryLo, entryOf, hostOffsetIsSafe, hostOffsetOf, subclusterTypeOf,
} from '../spec/l2';
import { Qcow2Metadata } from './metadata';

export type MappingKind =
  /** Guest data at `host` in the data file (or the image file without one). */
  | 'allocated'
  /** Reads as zeros (the ZERO flag); `host` is the cluster a zero-alloc entry keeps. */
  | 'zero'
  /** One compressed cluster: `entry` is its descriptor, `within` the offset inside the cluster. */
  | 'compressed'
  /** Not allocated in this layer, over a backing file: the backing file's bytes. */
  | 'backing'
  /** Not allocated in this layer, and nothing below (no backing file, or past its end): zeros. */
  | 'unallocated';

export interface Mapping {
  kind: MappingKind;
  /** Guest bytes from the asked offset that this mapping covers (> 0). */
  length: number;
  /** Host offset of the first byte, where the entry has one (allocated, zero-alloc, and the unallocated subclusters of an allocated cluster). */
  host?: number;
  entry?: bigint;
  within?: number;
}

/** One cluster's (or subcluster's) unit: its type, where it ends in the guest, its host offset. */
interface Unit { type: SubclusterType; end: number; host?: number }

/**
 * The mapping of the guest bytes of `meta`'s image from `offset`, at most `length` of them
 * (length > 0, within the virtual size). `backingSize` is the backing file's virtual size, or
 * null without one.
 */
export function lookup(meta: Qcow2Metadata, offset: number, length: number, backingSize: number | null): Mapping {
  const first = unitAt(meta, offset);
  let n = Math.min(length, first.end - offset);
  if (first.type !== 'compressed') {
    while (n < length) {
      if (!meta.fmt.extendedL2) {
        const adv = runLength(meta, offset + n, length - n, first.type, first.host !== undefined ? first.host + n : undefined);
        if (adv > 0) {
          n += adv;
          continue;
        }
      }
      const next = unitAt(meta, offset + n);
      if (next.type !== first.type || (first.host !== undefined ? next.host !== first.host + n : next.host !== undefined)) break;
      n = Math.min(length, next.end - offset);
    }
  }
  const m: Mapping = { kind: kindOf(first.type), length: n };
  if (first.host !== undefined) m.host = first.host;
  if (first.type === 'compressed') {
    const e = meta.entry(Math.floor(offset / meta.cs));
    m.entry = entryOf(e.hi, e.lo);
    m.within = offset % meta.cs;
  }
  if (m.kind === 'unallocated' && backingSize !== null && offset < backingSize) {
    m.kind = 'backing';
    m.length = Math.min(m.length, backingSize - offset);
  }
  return m;
}

function kindOf(t: SubclusterType): MappingKind {
  switch (t) {
    case 'normal': return 'allocated';
    case 'zero-plain': case 'zero-alloc': return 'zero';
    case 'compressed': return 'compressed';
    default: return 'unallocated';
  }
}

/** The unit at guest offset `p`. */
function unitAt(meta: Qcow2Metadata, p: number): Unit {
  const cs = meta.cs;
  const gc = Math.floor(p / cs);
  const inC = p - gc * cs;
  const e: L2Halves = meta.entry(gc);
  const ext = meta.fmt.extendedL2;
  const unit = cs / meta.g.subclustersPerCluster;
  const sc = Math.floor(inC / unit);
  const type = subclusterTypeOf(clusterTypeOf(e.hi, e.lo, meta.fmt), e.allocBits, e.zeroBits, sc, meta.fmt, e.hi, e.lo);
  const u: Unit = { type, end: type === 'compressed' || !ext ? (gc + 1) * cs : gc * cs + (sc + 1) * unit };
  if (type === 'normal' || type === 'zero-alloc' || type === 'unallocated-alloc') u.host = meta.hostOf(e) + inC;
  return u;
}

/**
 * Bytes from cluster-aligned `p` (at most `max`, within one L2 table) whose standard L2 entries
 * have `type` and, where `host` is given, continue the host range from it. 0 means "ask
 * unitAt" (another type, or what only the slow path reports, such as misalignment).
 */
function runLength(meta: Qcow2Metadata, p: number, max: number, type: SubclusterType, host: number | undefined): number {
  const cs = meta.cs;
  const gc = Math.floor(p / cs);
  const per = meta.g.l2Entries;
  let k = gc % per;
  const t = meta.l2Table(Math.floor(gc / per));
  if (t === undefined) return type === 'unallocated-plain' ? Math.min(max, (per - k) * cs) : 0;
  let bytes = 0;
  for (; k < per && bytes < max; k++) {
    const hi = entryHi(t.view, k * C.L2E_SIZE_NORMAL);
    const lo = entryLo(t.view, k * C.L2E_SIZE_NORMAL);
    const ty = subclusterTypeOf(clusterTypeOf(hi, lo, meta.fmt), 0, 0, 0, meta.fmt);
    if (ty !== type) break;
    if (host !== undefined) {
      // Only what unitAt accepts continues a run: a safe, aligned host offset right after it.
      if (!hostOffsetIsSafe(hi)) break;
      const o = hostOffsetOf(hi, lo);
      if (o % cs !== 0 || o !== host + bytes) break;
    }
    bytes += cs;
  }
  return Math.min(bytes, max);
}
