// What a size may be, as a value and as an image size: the Engine API and the resource take
// sizes from programs (a bigint, or a number), so each entry point checks its own: never
// negative, fractional, NaN or infinite, never a number past 2^53 where it is no longer exact.
// And the limits qemu-img enforces on a virtual size, with its words.

import type { Refusal } from './types';

/** QEMU's BDRV_MAX_LENGTH: INT64_MAX aligned down to the largest request size (1 GiB). */
export const BDRV_MAX_LENGTH = 9223372035781033984n;
/** QCOW_MAX_L1_SIZE / 8: the most L1 entries an image may have (32 MiB of table). */
export const MAX_L1_ENTRIES = 0x2000000 / 8;
const INT64_MAX = (1n << 63n) - 1n;

/**
 * A size given as a value. `signed` allows a negative value (a relative resize). Returns the
 * refusal naming `property`, or undefined when `v` is a whole number of bytes.
 */
export function validateSizeValue(v: unknown, property = 'size', signed = false): Refusal | undefined {
  const refuse = (why: string): Refusal => ({
    property,
    message: `${property}: ${why}; a size is a whole number of bytes${signed ? '' : ', 0 or more'} (a bigint, an integer number below 2^53, or text such as "20G")`,
  });
  if (typeof v === 'bigint') {
    if (v < 0n && !signed) return refuse(`${v} is negative`);
    if (v > INT64_MAX || v < -INT64_MAX) return refuse(`${v} is beyond 2^63`);
    return undefined;
  }
  if (typeof v === 'number') {
    if (Number.isNaN(v)) return refuse('NaN is not a number of bytes');
    if (!Number.isFinite(v)) return refuse(`${v} is not a finite number of bytes`);
    if (!Number.isInteger(v)) return refuse(`${v} is not a whole number of bytes`);
    if (v < 0 && !signed) return refuse(`${v} is negative`);
    if (!Number.isSafeInteger(v)) return refuse(`${v} is beyond 2^53, where a number no longer holds every integer exactly: pass a bigint or text`);
    return undefined;
  }
  return refuse(`a ${v === null ? 'null' : typeof v} is not a size`);
}

/** The size as a bigint, once validateSizeValue accepted it. */
export function sizeValue(v: bigint | number): bigint {
  return typeof v === 'bigint' ? v : BigInt(v);
}

/**
 * A new virtual size for an existing image (resize, amend -o size), in qemu-img's order and
 * words: the block layer's limit, then the L1 table's (qcow2_grow_l1_table). Checked before
 * any table is planned, so an absurd size costs nothing.
 */
export function validateVirtualSize(size: bigint, clusterSize: number, extendedL2: boolean): Refusal | undefined {
  if (size > BDRV_MAX_LENGTH) return { property: 'size', message: `offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})` };
  const l2Coverage = BigInt(clusterSize / (extendedL2 ? 16 : 8)) * BigInt(clusterSize);
  if ((size + l2Coverage - 1n) / l2Coverage > BigInt(MAX_L1_ENTRIES)) {
    return { property: 'size', message: 'Failed to grow the L1 table: File too large' };
  }
  return undefined;
}
