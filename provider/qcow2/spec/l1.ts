// L1 table entries: bits 9..55 the L2 table offset, bit 63 COPIED (refcount is exactly 1).

import * as C from './constants';

export interface L1Entry { l2Offset: bigint; copied: boolean; reserved: bigint }

export function decodeL1Entry(e: bigint): L1Entry {
  return { l2Offset: e & C.L1E_OFFSET_MASK, copied: (e & C.QCOW_OFLAG_COPIED) !== 0n, reserved: e & C.L1E_RESERVED_MASK };
}

export function encodeL1Entry(l2Offset: bigint, copied: boolean): bigint {
  return (l2Offset & C.L1E_OFFSET_MASK) | (copied ? C.QCOW_OFLAG_COPIED : 0n);
}

/** Read `n` big-endian u64 entries. */
export function readEntries(buf: Uint8Array, n: number, at = 0): bigint[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = new Array<bigint>(n);
  for (let i = 0; i < n; i++) out[i] = dv.getBigUint64(at + i * 8);
  return out;
}

/** Encode u64 entries big-endian. */
export function writeEntries(entries: readonly bigint[], buf: Uint8Array = new Uint8Array(entries.length * 8), at = 0): Uint8Array {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  entries.forEach((e, i) => dv.setBigUint64(at + i * 8, e));
  return buf;
}
