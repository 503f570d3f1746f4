// Persistent dirty bitmaps as every ring sees them: QEMU's limits (block/qcow2-bitmap.c, qcow2.h),
// the default granularity, the bitmap's size in bits, and the constraints a bitmap must meet to be
// stored (check_constraints_on_bitmap). No I/O.

/** Bytes of bitmap data QEMU keeps for one bitmap (512 MiB). */
export const BME_MAX_PHYS_SIZE = 0x20000000;
export const BME_MAX_TABLE_SIZE = 0x8000000;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MAX_NAME_SIZE = 1023;
/** QCOW2_MAX_BITMAPS. */
export const MAX_BITMAPS = 65535;
/** QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
export const MAX_BITMAP_DIRECTORY_SIZE = 1024 * 65535;
/** The fixed part of a directory entry. */
export const DIR_ENTRY_FIXED_SIZE = 24;

/** calc_dir_entry_size: the fixed part, extra data and name, padded to 8 bytes. */
export function dirEntrySize(nameBytes: number, extraData = 0): number {
  return Math.ceil((DIR_ENTRY_FIXED_SIZE + nameBytes + extraData) / 8) * 8;
}

/** Bytes of a name as stored (UTF-8, no NUL). */
export function nameBytes(name: string): number {
  return Buffer.byteLength(name, 'utf8');
}

/** bdrv_get_default_bitmap_granularity for qcow2: the cluster size, clamped to 4 KiB..64 KiB. */
export function defaultBitmapGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize));
}

/** Bits of a bitmap over `size` guest bytes at 2^granularityBits bytes per bit. */
export function bitmapBits(size: bigint, granularityBits: number): number {
  return Number((size + (1n << BigInt(granularityBits)) - 1n) >> BigInt(granularityBits));
}

/** Why a bitmap of this size and granularity cannot be stored (check_constraints_on_bitmap), or undefined. */
export function bitmapConstraintError(size: bigint, granularityBits: number, clusterSize: number, name: string): string | undefined {
  if (granularityBits > BME_MAX_GRANULARITY_BITS) return `Granularity exceeds maximum (${2 ** BME_MAX_GRANULARITY_BITS} bytes)`;
  if (granularityBits < BME_MIN_GRANULARITY_BITS) return `Granularity is under minimum (${2 ** BME_MIN_GRANULARITY_BITS} bytes)`;
  const bytes = (size + (1n << BigInt(granularityBits)) - 1n) >> BigInt(granularityBits);
  const dataBytes = (bytes + 7n) / 8n;
  if (dataBytes > BigInt(BME_MAX_PHYS_SIZE) || dataBytes > BigInt(BME_MAX_TABLE_SIZE) * BigInt(clusterSize)) {
    return 'Too much space will be occupied by the bitmap. Use larger granularity';
  }
  if (nameBytes(name) > BME_MAX_NAME_SIZE) return `Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`;
  return undefined;
}

/** One action of `qemu-img bitmap` on a named bitmap, in command-line order. */
export type BitmapAction =
  | { op: 'add'; granularity?: number }
  | { op: 'remove' }
  | { op: 'clear' }
  | { op: 'enable' }
  | { op: 'disable' }
  /** OR the bitmap `source` into the target; from the image named by -b when `external`. */
  | { op: 'merge'; source: string; external?: boolean };
