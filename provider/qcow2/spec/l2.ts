// L2 table entries, standard (64-bit) and extended (128-bit: entry + subcluster bitmap).
// Bit 63 COPIED, bit 62 COMPRESSED, bit 0 ZERO (v3); bits 9..55 the host cluster offset.

import * as C from './constants';

export type ClusterType = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

export interface L2Entry {
  raw: bigint;
  /** Subcluster bitmap (extended L2 only; 0n otherwise): low 32 bits allocated, high 32 zero. */
  bitmap: bigint;
  type: ClusterType;
  /** Host offset for normal / zero-alloc entries. */
  hostOffset: bigint;
  copied: boolean;
  /** Reserved bits set (standard L2 layout only; compressed entries have their own). */
  reserved: bigint;
}

/**
 * Classify an entry exactly as QEMU's qcow2_get_cluster_type does. With an external data
 * file, offset 0 is a valid mapping of guest cluster 0: COPIED tells it from unallocated.
 */
export function decodeL2Entry(raw: bigint, bitmap: bigint, opts: { dataFile: boolean; extendedL2: boolean }): L2Entry {
  const copied = (raw & C.QCOW_OFLAG_COPIED) !== 0n;
  if ((raw & C.QCOW_OFLAG_COMPRESSED) !== 0n) {
    return { raw, bitmap, type: 'compressed', hostOffset: 0n, copied, reserved: 0n };
  }
  const hostOffset = raw & C.L2E_OFFSET_MASK;
  const reserved = raw & C.L2E_STD_RESERVED_MASK;
  let type: ClusterType;
  if ((raw & C.QCOW_OFLAG_ZERO) !== 0n && !opts.extendedL2) {
    type = hostOffset !== 0n ? 'zero-alloc' : 'zero-plain';
  } else if (hostOffset === 0n && !(opts.dataFile && copied)) {
    type = 'unallocated';
  } else {
    type = 'normal';
  }
  return { raw, bitmap, type, hostOffset, copied, reserved };
}

export function encodeNormalEntry(hostOffset: bigint, copied = true): bigint {
  return (hostOffset & C.L2E_OFFSET_MASK) | (copied ? C.QCOW_OFLAG_COPIED : 0n);
}
