// Refcount table and refcount blocks: entry codecs for every width from 1 to 64 bits.
// Widths >= 8 bits are big-endian; sub-byte widths pack LSB-first within each byte.

import * as C from './constants';

/** Read refcount `index` of a refcount block with 2^order-bit entries. Exact for 64 bits. */
export function getRefcount(block: Uint8Array, order: number, index: number): bigint {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 1 << order;
      const bit = index * bits;
      return BigInt((block[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1));
    }
    case 3: return BigInt(block[index]!);
    case 4: return BigInt((block[index * 2]! << 8) | block[index * 2 + 1]!);
    case 5: return BigInt(dv(block).getUint32(index * 4));
    case 6: return dv(block).getBigUint64(index * 8);
    default: throw new RangeError(`refcount order ${order}`);
  }
}

/** Write refcount `index`; the value must fit the width (callers check against refcountMax). */
export function setRefcount(block: Uint8Array, order: number, index: number, value: bigint): void {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 1 << order;
      const bit = index * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const byte = bit >> 3;
      block[byte] = (block[byte]! & ~mask) | ((Number(value) << (bit & 7)) & mask);
      return;
    }
    case 3: block[index] = Number(value); return;
    case 4: block[index * 2] = Number(value) >> 8; block[index * 2 + 1] = Number(value) & 0xff; return;
    case 5: dv(block).setUint32(index * 4, Number(value)); return;
    case 6: dv(block).setBigUint64(index * 8, value); return;
    default: throw new RangeError(`refcount order ${order}`);
  }
}

export function refcountMax(order: number): bigint {
  return (1n << BigInt(1 << order)) - 1n;
}

/**
 * Fill a refcount block from a per-cluster count array (create and rebuild paths write
 * whole blocks). `counts[i]` is the refcount of cluster `first + i`.
 */
export function encodeRefblock(clusterSize: number, order: number, counts: ArrayLike<number>, first: number, n: number): Uint8Array {
  const block = new Uint8Array(clusterSize);
  for (let i = 0; i < n; i++) {
    const c = counts[first + i] ?? 0;
    if (c !== 0) setRefcount(block, order, i, BigInt(c));
  }
  return block;
}

/** Decode a refcount table entry: the refblock offset, and whether reserved bits are set. */
export function decodeReftableEntry(e: bigint): { offset: bigint; reserved: bigint } {
  return { offset: e & C.REFT_OFFSET_MASK, reserved: e & C.REFT_RESERVED_MASK };
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
