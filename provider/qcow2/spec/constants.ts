// qcow2 spec constants, named as QEMU's block/qcow2.h names them: bit number beside mask,
// plus the known-set masks that decide what a reader refuses and a writer must clear.

export const QCOW_MAGIC = 0x514649fb;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_SIZE = 65536;
export const MAX_REFCOUNT_ORDER = 6;

/** v2 header length; v3 headers QEMU writes are 112 bytes (104 + compression type + padding). */
export const QCOW2_V2_HEADER_LENGTH = 72;
export const QCOW2_V3_MIN_HEADER_LENGTH = 104;
export const QCOW2_V3_HEADER_LENGTH = 112;

/** QEMU's limits (block/qcow2.h). */
export const QCOW_MAX_L1_SIZE = 0x2000000; // bytes: 32 MiB of L1 entries
export const QCOW_MAX_REFTABLE_SIZE = 0x800000; // bytes
export const MAX_BACKING_FILE_NAME = 1023;
export const MAX_BACKING_FORMAT_NAME = 15; // < 16 bytes
export const QCOW2_MAX_BITMAPS = 65535;

// Incompatible features
export const QCOW2_INCOMPAT_DIRTY_BITNR = 0;
export const QCOW2_INCOMPAT_CORRUPT_BITNR = 1;
export const QCOW2_INCOMPAT_DATA_FILE_BITNR = 2;
export const QCOW2_INCOMPAT_COMPRESSION_BITNR = 3;
export const QCOW2_INCOMPAT_EXTL2_BITNR = 4;
export const QCOW2_INCOMPAT_DIRTY = 1n << 0n;
export const QCOW2_INCOMPAT_CORRUPT = 1n << 1n;
export const QCOW2_INCOMPAT_DATA_FILE = 1n << 2n;
export const QCOW2_INCOMPAT_COMPRESSION = 1n << 3n;
export const QCOW2_INCOMPAT_EXTL2 = 1n << 4n;
export const QCOW2_INCOMPAT_MASK =
  QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |
  QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2;

// Compatible features
export const QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR = 0;
export const QCOW2_COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const QCOW2_COMPAT_FEAT_MASK = QCOW2_COMPAT_LAZY_REFCOUNTS;

// Autoclear features: a writer that does not know one of these must clear it before writing.
export const QCOW2_AUTOCLEAR_BITMAPS_BITNR = 0;
export const QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR = 1;
export const QCOW2_AUTOCLEAR_BITMAPS = 1n << 0n;
export const QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const QCOW2_AUTOCLEAR_MASK = QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;

export const QCOW2_COMPRESSION_TYPE_ZLIB = 0;
export const QCOW2_COMPRESSION_TYPE_ZSTD = 1;

export const QCOW_CRYPT_NONE = 0;
export const QCOW_CRYPT_AES = 1;
export const QCOW_CRYPT_LUKS = 2;

// Header extension magics
export const QCOW2_EXT_MAGIC_END = 0x00000000;
export const QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xe2792aca;
export const QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803f857;
export const QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537be77;
export const QCOW2_EXT_MAGIC_BITMAPS = 0x23852875;
export const QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441;

/** Feature name table entry types. */
export const QCOW2_FEAT_TYPE_INCOMPATIBLE = 0;
export const QCOW2_FEAT_TYPE_COMPATIBLE = 1;
export const QCOW2_FEAT_TYPE_AUTOCLEAR = 2;

/** The feature table QEMU 7.2 writes, in its order (type, bit, name). */
export const QEMU_FEATURE_TABLE: ReadonlyArray<readonly [number, number, string]> = [
  [QCOW2_FEAT_TYPE_INCOMPATIBLE, QCOW2_INCOMPAT_DIRTY_BITNR, 'dirty bit'],
  [QCOW2_FEAT_TYPE_INCOMPATIBLE, QCOW2_INCOMPAT_CORRUPT_BITNR, 'corrupt bit'],
  [QCOW2_FEAT_TYPE_INCOMPATIBLE, QCOW2_INCOMPAT_DATA_FILE_BITNR, 'external data file'],
  [QCOW2_FEAT_TYPE_INCOMPATIBLE, QCOW2_INCOMPAT_COMPRESSION_BITNR, 'compression type'],
  [QCOW2_FEAT_TYPE_INCOMPATIBLE, QCOW2_INCOMPAT_EXTL2_BITNR, 'extended L2 entries'],
  [QCOW2_FEAT_TYPE_COMPATIBLE, QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR, 'lazy refcounts'],
  [QCOW2_FEAT_TYPE_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS_BITNR, 'bitmaps'],
  [QCOW2_FEAT_TYPE_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR, 'raw external data'],
];

// Table entry flags (64-bit: kept as bigint so bits 62/63 are exact).
export const QCOW_OFLAG_COPIED = 1n << 63n;
export const QCOW_OFLAG_COMPRESSED = 1n << 62n;
export const QCOW_OFLAG_ZERO = 1n << 0n;
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
export const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
export const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
export const L1E_RESERVED_MASK = 0x7f000000000001ffn;
export const L2E_STD_RESERVED_MASK = 0x3f000000000001fen;
export const REFT_RESERVED_MASK = 0x1ffn;
/** Largest host offset a table entry can hold. */
export const QCOW_MAX_CLUSTER_OFFSET = (1n << 56n) - 1n;

export const L1E_SIZE = 8;
export const L2E_SIZE_NORMAL = 8;
export const L2E_SIZE_EXTENDED = 16;
export const REFTABLE_ENTRY_SIZE = 8;
