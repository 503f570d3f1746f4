// Refcount table and refcount blocks: entry codecs for every width from 1 to 64 bits.
// Widths >= 8 bits are big-endian; sub-byte widths pack LSB-first within each byte.

import * as C from './constants';
import { putU32be, u32be } from './struct';

/**
 * Refcount `index` of a refcount block with 2^order-bit entries, as a number: exact up to 2^53
 * (a 64-bit entry above that comes back rounded, still non-zero; getRefcount is exact).
 */
export function readRefcount(block: Uint8Array, order: number, index: number): number {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 1 << order;
      const bit = index * bits;
      return (block[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
    }
    case 3: return block[index]!;
    case 4: return (block[index * 2]! << 8) | block[index * 2 + 1]!;
    case 5: return u32be(block, index * 4);
    case 6: return u32be(block, index * 8) * 0x100000000 + u32be(block, index * 8 + 4);
    default: throw new RangeError(`refcount order ${order}`);
  }
}

/** Write refcount `index` from a number (< 2^53; callers check against refcountMax). */
export function writeRefcount(block: Uint8Array, order: number, index: number, value: number): void {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 1 << order;
      const bit = index * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const byte = bit >> 3;
      block[byte] = (block[byte]! & ~mask) | ((value << (bit & 7)) & mask);
      return;
    }
    case 3: block[index] = value; return;
    case 4: block[index * 2] = value >> 8; block[index * 2 + 1] = value & 0xff; return;
    case 5: putU32be(block, index * 4, value); return;
    case 6: putU32be(block, index * 8, Math.floor(value / 0x100000000)); putU32be(block, index * 8 + 4, value >>> 0); return;
    default: throw new RangeError(`refcount order ${order}`);
  }
}

/** Read refcount `index` exactly (64-bit entries as bigint). */
export function getRefcount(block: Uint8Array, order: number, index: number): bigint {
  if (order === 6) return (BigInt(u32be(block, index * 8)) << 32n) | BigInt(u32be(block, index * 8 + 4));
  return BigInt(readRefcount(block, order, index));
}

/** Write refcount `index` exactly; the value must fit the width (callers check against refcountMax). */
export function setRefcount(block: Uint8Array, order: number, index: number, value: bigint): void {
  if (order === 6) {
    putU32be(block, index * 8, Number(value >> 32n));
    putU32be(block, index * 8 + 4, Number(value & 0xffffffffn));
    return;
  }
  writeRefcount(block, order, index, Number(value));
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
    if (c !== 0) writeRefcount(block, order, i, c);
  }
  return block;
}

/** Decode a refcount table entry: the refblock offset, and whether reserved bits are set. */
export function decodeReftableEntry(e: bigint): { offset: bigint; reserved: bigint } {
  return { offset: e & C.REFT_OFFSET_MASK, reserved: e & C.REFT_RESERVED_MASK };
}

