// L2 table entries: the one definition every path uses (QEMU's get_l2_entry,
// qcow2_get_cluster_type, qcow2_get_subcluster_type, qcow2_parse_compressed_l2_entry).
// Standard entries are 64 bits: bit 63 COPIED, bit 62 COMPRESSED, bit 0 ZERO (v3), bits 9..55
// the host cluster offset. Extended entries (extended_l2) add a 64-bit subcluster bitmap: bits
// 0..31 "allocated", bits 32..63 "reads as zeros". A compressed entry holds a descriptor instead.
//
// Entries are read and written as their two 32-bit halves (hi = bits 32..63, lo = bits 0..31)
// through a DataView of the table: no BigInt per entry where a 1 TiB image has 16M of them
// (check, map, block status, create); entryOf gives the 64-bit value for messages.
//
// The word accessors (entryHi, entryLo, ...) return the bits as a signed int32, which is what
// JS bitwise operators see anyway: a value the JIT always holds as a small integer, so a scan
// is not deoptimized when offsets pass 2 GiB. Test masks with `!== 0`, never `=== MASK`; decoded
// entries (L2Halves) hold them as unsigned numbers.

import * as C from './constants';
import { invalidImage } from '../../model/errors';

export type ClusterType = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

/** QEMU's QCow2SubclusterType (without INVALID: that is thrown). */
export type SubclusterType = 'unallocated-plain' | 'unallocated-alloc' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

/** What decides an entry's meaning besides its bits. */
export interface L2Format { dataFile: boolean; extendedL2: boolean }

// QEMU's 64-bit masks split into the halves they fall in. Module-local constants, exported by
// list: the accessors below then read them as constants, not as properties of `exports`
// (which costs a third of check's time over 16M entries).
/** QCOW_OFLAG_COPIED, in the high half. */
const L2_HI_COPIED = 0x80000000;
/** QCOW_OFLAG_COMPRESSED, in the high half. */
const L2_HI_COMPRESSED = 0x40000000;
/** QCOW_OFLAG_ZERO, in the low half. */
const L2_LO_ZERO = 0x1;
/** L2E_OFFSET_MASK, high half (bits 32..55) and low half (bits 9..31). */
const L2_HI_OFFSET = 0x00ffffff;
const L2_LO_OFFSET = 0xfffffe00;
/** L2E_STD_RESERVED_MASK, split. */
const L2_HI_RESERVED = 0x3f000000;
const L2_LO_RESERVED = 0x1fe;
/** Offset bits 53..55: a host offset with any of them set is beyond a safe JS number. */
const L2_HI_UNSAFE = 0x00e00000;
/** QCOW_L2_BITMAP_ALL_ALLOC / ALL_ZERO, each a whole half of the bitmap. */
const SUBCLUSTERS_ALL = 0xffffffff;

export {
  L2_HI_COPIED, L2_HI_COMPRESSED, L2_LO_ZERO, L2_HI_OFFSET, L2_LO_OFFSET, L2_HI_RESERVED, L2_LO_RESERVED,
  SUBCLUSTERS_ALL,
};

const TWO_32 = 0x100000000;

/** The view a table's entries are read and written through. */
export function tableView(t: Uint8Array): DataView {
  return new DataView(t.buffer, t.byteOffset, t.byteLength);
}

/** The high half of the entry at byte `at` of a table (as int32). */
export function entryHi(v: DataView, at: number): number {
  return v.getInt32(at);
}

/** The low half of the entry at byte `at` of a table (as int32). */
export function entryLo(v: DataView, at: number): number {
  return v.getInt32(at + 4);
}

/** Extended L2: the subcluster "allocated" bits (bitmap bits 0..31) of the entry at `at` (as int32). */
export function entryAllocBits(v: DataView, at: number): number {
  return v.getInt32(at + 12);
}

/** Extended L2: the subcluster "reads as zeros" bits (bitmap bits 32..63) of the entry at `at` (as int32). */
export function entryZeroBits(v: DataView, at: number): number {
  return v.getInt32(at + 8);
}

/** An entry as a table holds it: its halves and, with extended L2, its subcluster bits (unsigned). */
export interface L2Halves { hi: number; lo: number; allocBits: number; zeroBits: number }

/** The entry of a cluster with no L2 table: all zero bits (unallocated). Shared: never changed. */
export const NO_L2_ENTRY: L2Halves = Object.freeze({ hi: 0, lo: 0, allocBits: 0, zeroBits: 0 });

/** Entry `k` of a table. */
export function readL2Entry(t: DataView, k: number, extendedL2: boolean): L2Halves {
  const at = k * (extendedL2 ? C.L2E_SIZE_EXTENDED : C.L2E_SIZE_NORMAL);
  return {
    hi: entryHi(t, at) >>> 0, lo: entryLo(t, at) >>> 0,
    allocBits: extendedL2 ? entryAllocBits(t, at) >>> 0 : 0, zeroBits: extendedL2 ? entryZeroBits(t, at) >>> 0 : 0,
  };
}

/** Write entry `k` of a table (and, extended, its subcluster bits). */
export function writeL2Entry(t: DataView, k: number, extendedL2: boolean, e: L2Halves): void {
  const at = k * (extendedL2 ? C.L2E_SIZE_EXTENDED : C.L2E_SIZE_NORMAL);
  putHalves(t, at, e.hi, e.lo);
  if (extendedL2) putHalves(t, at + 8, e.zeroBits, e.allocBits);
}

/** The 64-bit value of two halves (for messages). */
export function entryOf(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** qcow2_get_cluster_type on the halves of an entry. */
export function clusterTypeOf(hi: number, lo: number, f: L2Format): ClusterType {
  if (hi & L2_HI_COMPRESSED) return 'compressed';
  const hasOffset = (hi & L2_HI_OFFSET) !== 0 || (lo & L2_LO_OFFSET) !== 0;
  if ((lo & L2_LO_ZERO) !== 0 && !f.extendedL2) return hasOffset ? 'zero-alloc' : 'zero-plain';
  // Offset 0 is a valid mapping of guest cluster 0 in an external data file, where every
  // cluster has refcount 1: COPIED tells it from unallocated (QEMU's comment says the same).
  if (!hasOffset && !(f.dataFile && (hi & L2_HI_COPIED) !== 0)) return 'unallocated';
  return 'normal';
}

/** True when the entry's host offset is below 2^53 (hostOffsetOf is exact). */
export function hostOffsetIsSafe(hi: number): boolean {
  return (hi & L2_HI_UNSAFE) === 0;
}

/** The host offset (bits 9..55) of a standard entry; exact when hostOffsetIsSafe(hi). */
export function hostOffsetOf(hi: number, lo: number): number {
  return (hi & L2_HI_OFFSET) * TWO_32 + ((lo & L2_LO_OFFSET) >>> 0);
}

/** The host cluster index of a standard entry: exact for every entry (at most 2^47). */
export function hostClusterOf(hi: number, lo: number, clusterBits: number): number {
  return (hi & L2_HI_OFFSET) * (1 << (32 - clusterBits)) + ((lo & L2_LO_OFFSET) >>> clusterBits);
}

/** Reserved bits of the standard layout are set (not meaningful for compressed entries). */
export function hasReservedBits(hi: number, lo: number): boolean {
  return (hi & L2_HI_RESERVED) !== 0 || (lo & L2_LO_RESERVED) !== 0;
}

/**
 * qcow2_get_subcluster_type for subcluster `sc` of an entry of type `type`; with standard L2
 * the cluster is one subcluster. The bitmap corruptions QEMU reports as -EIO are thrown.
 */
export function subclusterTypeOf(type: ClusterType, allocBits: number, zeroBits: number, sc: number, f: L2Format, hi = 0, lo = 0): SubclusterType {
  if (!f.extendedL2) return type === 'unallocated' ? 'unallocated-plain' : type;
  const bit = (1 << sc) >>> 0;
  switch (type) {
    case 'compressed':
      return 'compressed';
    case 'normal':
      if ((zeroBits & allocBits) !== 0) {
        throw invalidImage(`Invalid subcluster bitmap 0x${bitmapOf(allocBits, zeroBits).toString(16)} for L2 entry 0x${entryOf(hi, lo).toString(16)}`);
      }
      if (zeroBits & bit) return 'zero-alloc';
      return allocBits & bit ? 'normal' : 'unallocated-alloc';
    default:
      if (allocBits !== 0) {
        throw invalidImage(`Unallocated cluster has non-zero subcluster allocation map 0x${bitmapOf(allocBits, zeroBits).toString(16)}`);
      }
      return zeroBits & bit ? 'zero-plain' : 'unallocated-plain';
  }
}

function bitmapOf(allocBits: number, zeroBits: number): bigint {
  return entryOf(zeroBits, allocBits);
}

/**
 * COPIED | host offset (< 2^53): the entry of a cluster this image alone references (extended
 * L2: with `allocBits`, the subclusters that hold data).
 */
export function normalEntry(hostOffset: number, copied = true, allocBits = 0): L2Halves {
  return { hi: normalHi(hostOffset, copied), lo: normalLo(hostOffset), allocBits, zeroBits: 0 };
}

/** normalEntry written straight into a table at byte `at`, making no object (create and amend fill whole tables so). */
export function putNormalEntry(t: DataView, at: number, hostOffset: number, copied = true): void {
  t.setUint32(at, normalHi(hostOffset, copied));
  t.setUint32(at + 4, normalLo(hostOffset));
}

function normalHi(hostOffset: number, copied: boolean): number {
  return ((copied ? L2_HI_COPIED : 0) | (Math.floor(hostOffset / TWO_32) & L2_HI_OFFSET)) >>> 0;
}

function normalLo(hostOffset: number): number {
  return (hostOffset & L2_LO_OFFSET) >>> 0;
}

/** Write an entry's halves at byte `at`. */
function putHalves(t: DataView, at: number, hi: number, lo: number): void {
  t.setUint32(at, hi >>> 0);
  t.setUint32(at + 4, lo >>> 0);
}

// ---------------------------------------------------------------------------------------------
// Compressed cluster descriptors

/** Host bytes of a compressed cluster (qcow2_parse_compressed_l2_entry). */
export interface CompressedRange {
  offset: bigint;
  size: number;
  /** Host clusters the bytes touch: each holds one reference per descriptor. */
  firstCluster: number;
  clusters: number;
}

/**
 * The descriptor of a compressed entry: bits 0..(61 - (cluster_bits - 8)) the host byte offset,
 * the bits above it up to 61 the number of additional 512-byte sectors. COPIED and COMPRESSED
 * lie outside both masks, so the raw entry can be passed as it is.
 */
export function parseCompressedEntry(entry: bigint, clusterBits: number): CompressedRange {
  const csizeShift = BigInt(62 - (clusterBits - 8));
  const offset = entry & ((1n << csizeShift) - 1n);
  const sectors = Number((entry >> csizeShift) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
  const size = sectors * 512 - Number(offset & 511n);
  const bits = BigInt(clusterBits);
  const firstCluster = offset >> bits;
  return { offset, size, firstCluster: Number(firstCluster), clusters: Number(((offset + BigInt(size) - 1n) >> bits) - firstCluster) + 1 };
}

/**
 * The entry of a compressed cluster whose `size` bytes start at host byte `offset`, as
 * qcow2_alloc_compressed_cluster_offset writes it: COMPRESSED, never COPIED, the count of
 * 512-byte sectors after the first one the bytes touch. Extended L2: no subcluster bits.
 */
export function compressedEntry(offset: number, size: number, clusterBits: number): L2Halves {
  const csizeShift = BigInt(62 - (clusterBits - 8));
  const extra = BigInt(Math.floor((offset + size - 1) / 512) - Math.floor(offset / 512));
  const e = BigInt(offset) | (extra << csizeShift) | C.QCOW_OFLAG_COMPRESSED;
  return { hi: Number(e >> 32n), lo: Number(e & 0xffffffffn), allocBits: 0, zeroBits: 0 };
}
