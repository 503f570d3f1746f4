// The create options of the format engine, as typed values (the qemu-img `-o` text form is
// parsed by the CLI). Validation of combinations lives in provider/rules, not here.

export type Compat = '0.10' | '1.1';
export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';
export type CompressionType = 'zlib' | 'zstd';

/** Options of `create`, one per qemu-img 7.2 qcow2 create option (encryption excepted). */
export interface CreateOptions {
  /** Virtual size in bytes; rounded up to a multiple of 512 as qemu-img does. Default 0, or the adopted data file's size. */
  size?: bigint;
  /** Compatibility level: '0.10' writes a version 2 header, '1.1' (default) version 3. */
  compat?: Compat;
  /** Cluster size in bytes, a power of two from 512 to 2 MiB. Default 65536. */
  clusterSize?: number;
  /** Refcount width in bits, a power of two from 1 to 64. Default 16. */
  refcountBits?: number;
  /** Set the lazy-refcounts compatible feature (compat 1.1 only). */
  lazyRefcounts?: boolean;
  /** 128-bit L2 entries with 32 subclusters (cluster size >= 16 KiB). */
  extendedL2?: boolean;
  /** Compression type for compressed clusters. Default 'zlib'. */
  compressionType?: CompressionType;
  /** Preallocation mode. Default 'off'; data-file-raw forces at least 'metadata'. */
  preallocation?: Preallocation;
  /** Backing file name, stored as given. */
  backingFile?: string;
  /** Backing file format (`qcow2`, `raw`, ...). */
  backingFormat?: string;
  /** External data file name, stored as given. Created sparse unless adopted. */
  dataFile?: string;
  /** Keep the data file a valid raw image (autoclear bit 1). Needs dataFile. */
  dataFileRaw?: boolean;
  /**
   * Wrap an existing data file instead of creating one: it is opened, never truncated or
   * written, and its size gives the virtual size when `size` is not given. Without this an
   * existing data file is an error (qemu-img would truncate it).
   */
  adoptDataFile?: boolean;
}

/** Options of `create -f raw`: a size and a preallocation mode (validated by provider/rules). */
export interface RawCreateOptions {
  size?: bigint;
  /** As written; rules/create.ts decides which modes raw allows (not metadata). */
  preallocation?: string;
}

/** Create options with every default filled in and the size rounded as qemu-img does. */
export interface ResolvedCreateOptions {
  size: bigint;
  compat: Compat;
  version: 2 | 3;
  clusterSize: number;
  clusterBits: number;
  refcountBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: CompressionType;
  /** The preallocation that will actually run (data-file-raw forces at least metadata). */
  preallocation: Preallocation;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  adoptDataFile: boolean;
}
