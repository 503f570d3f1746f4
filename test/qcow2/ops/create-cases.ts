// Deterministic configuration tables for the `create` conformance suite (no randomness).
//
// Every valid case is run through `qemu-img create -q -f qcow2 -o <opts> img.qcow2 <bytes>` and
// through our createImage(); see create.test.ts. Relative names are fixed:
//   image        img.qcow2
//   data file    img.data
//   backing      base.qcow2 (a 3 MiB qcow2) or base.raw (a 1 MiB raw file), present in both dirs

import type { CompressionType, Compat, CreateOptions, Preallocation } from '../../../provider/model/options';

export const IMAGE_NAME = 'img.qcow2';
export const DATA_NAME = 'img.data';
export const BACKING_QCOW2 = 'base.qcow2';
export const BACKING_RAW = 'base.raw';
export const BACKING_QCOW2_SIZE = '3M';
export const BACKING_RAW_BYTES = 1024 * 1024;

/** A configuration in qemu-img terms. Undefined fields are not passed at all (defaults apply). */
export interface Config {
  /** Size label: decimal bytes or a binary suffix (K M G T P), optionally `A+B` (e.g. `1G+512`). */
  size: string;
  clusterSize?: number;
  compat?: Compat;
  refcountBits?: number;
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: CompressionType;
  preallocation?: Preallocation;
  /** Backing file with this backing_fmt; 'none-fmt' = backing_fmt alone (failure table only). */
  backing?: 'qcow2' | 'raw' | 'none-fmt';
  dataFile?: boolean;
  dataFileRaw?: boolean;
}

export interface CreateCase {
  /** Test name: the -o string and the size label. */
  name: string;
  config: Config;
  /** `-o` option string, '' for none. */
  opts: string;
  /** Virtual size in bytes as given (qemu-img rounds up to 512; so must we). */
  sizeBytes: bigint;
  /** The same configuration for createImage(). */
  options: CreateOptions;
  /** Our expected layout fits the first refcount block, so the qcow2 file must be byte-identical. */
  byteIdentical: boolean;
  /** Estimated number of clusters in the qcow2 file (for the byteIdentical decision and messages). */
  estimatedClusters: number;
  /** Clusters covered by the first refcount block: cluster_size * 8 / refcount_bits. */
  firstRefblockCovers: number;
  /** The configuration has an external data file. */
  dataFile: boolean;
}

const UNITS: Record<string, bigint> = {
  '': 1n,
  K: 1n << 10n,
  M: 1n << 20n,
  G: 1n << 30n,
  T: 1n << 40n,
  P: 1n << 50n,
  E: 1n << 60n,
};

/** Parse a size label (`1G+512`, `65535`, `2P`). */
export function parseSizeLabel(label: string): bigint {
  let total = 0n;
  for (const part of label.split('+')) {
    const m = /^(\d+)([KMGTPE]?)$/.exec(part.trim());
    if (!m) throw new Error(`bad size label ${label}`);
    total += BigInt(m[1] as string) * (UNITS[m[2] as string] as bigint);
  }
  return total;
}

const onOff = (b: boolean): string => (b ? 'on' : 'off');

/** The qemu-img `-o` string, options in a fixed order. */
export function optString(c: Config): string {
  const o: string[] = [];
  if (c.compat !== undefined) o.push(`compat=${c.compat}`);
  if (c.clusterSize !== undefined) o.push(`cluster_size=${c.clusterSize}`);
  if (c.refcountBits !== undefined) o.push(`refcount_bits=${c.refcountBits}`);
  if (c.lazyRefcounts !== undefined) o.push(`lazy_refcounts=${onOff(c.lazyRefcounts)}`);
  if (c.extendedL2 !== undefined) o.push(`extended_l2=${onOff(c.extendedL2)}`);
  if (c.compressionType !== undefined) o.push(`compression_type=${c.compressionType}`);
  if (c.preallocation !== undefined) o.push(`preallocation=${c.preallocation}`);
  if (c.backing === 'qcow2') o.push(`backing_file=${BACKING_QCOW2}`, 'backing_fmt=qcow2');
  if (c.backing === 'raw') o.push(`backing_file=${BACKING_RAW}`, 'backing_fmt=raw');
  if (c.backing === 'none-fmt') o.push('backing_fmt=qcow2');
  if (c.dataFile) o.push(`data_file=${DATA_NAME}`);
  if (c.dataFileRaw !== undefined) o.push(`data_file_raw=${onOff(c.dataFileRaw)}`);
  return o.join(',');
}

/** The same configuration as CreateOptions (only the fields given). */
export function toCreateOptions(c: Config): CreateOptions {
  const o: CreateOptions = { size: parseSizeLabel(c.size) };
  if (c.compat !== undefined) o.compat = c.compat;
  if (c.clusterSize !== undefined) o.clusterSize = c.clusterSize;
  if (c.refcountBits !== undefined) o.refcountBits = c.refcountBits;
  if (c.lazyRefcounts !== undefined) o.lazyRefcounts = c.lazyRefcounts;
  if (c.extendedL2 !== undefined) o.extendedL2 = c.extendedL2;
  if (c.compressionType !== undefined) o.compressionType = c.compressionType;
  if (c.preallocation !== undefined) o.preallocation = c.preallocation;
  if (c.backing === 'qcow2') {
    o.backingFile = BACKING_QCOW2;
    o.backingFormat = 'qcow2';
  }
  if (c.backing === 'raw') {
    o.backingFile = BACKING_RAW;
    o.backingFormat = 'raw';
  }
  if (c.backing === 'none-fmt') o.backingFormat = 'qcow2';
  if (c.dataFile) o.dataFile = DATA_NAME;
  if (c.dataFileRaw !== undefined) o.dataFileRaw = c.dataFileRaw;
  return o;
}

const ceilDiv = (a: bigint, b: bigint): bigint => (a + b - 1n) / b;

/**
 * Estimated clusters of the qcow2 file qemu-img writes, assuming everything lands in the
 * area the first refblock covers. Layout (QCOW2-NOTES §4): header, reftable, refblock, L1,
 * then (preallocation) every L2 table and, without a data file, every data cluster.
 * falloc/full without a data file move the reftable (qcow2_refcount_area) but reuse the old
 * cluster, so the count is the same. Checked against qemu-img 7.2.22 for every case below: exact
 * whenever the layout fits the first refblock, and never claims a fit that qemu-img overflows.
 */
export function estimateFileClusters(c: Config): { clusters: number; covers: number } {
  const cs = BigInt(c.clusterSize ?? 65536);
  const rb = BigInt(c.refcountBits ?? 16);
  const l2Entries = cs / (c.extendedL2 ? 16n : 8n);
  const vsize = ceilDiv(parseSizeLabel(c.size), 512n) * 512n;
  const l1Size = ceilDiv(vsize, cs * l2Entries);
  const l1Clusters = ceilDiv(l1Size * 8n, cs);
  let prealloc: Preallocation = c.preallocation ?? 'off';
  if (c.dataFileRaw && prealloc === 'off') prealloc = 'metadata';
  let clusters = 3n + l1Clusters;
  if (prealloc !== 'off') {
    clusters += l1Size;
    if (!c.dataFile) {
      clusters += ceilDiv(vsize, cs);
    }
  }
  const covers = (cs * 8n) / rb;
  // Saturate: anything this large is far beyond a refblock anyway.
  const n = clusters > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(clusters);
  return { clusters: n, covers: Number(covers) };
}

export function makeCase(config: Config): CreateCase {
  const opts = optString(config);
  const { clusters, covers } = estimateFileClusters(config);
  return {
    name: `${opts === '' ? '(no -o)' : `-o ${opts}`} ${config.size}`,
    config,
    opts,
    sizeBytes: parseSizeLabel(config.size),
    options: toCreateOptions(config),
    byteIdentical: clusters <= covers,
    estimatedClusters: clusters,
    firstRefblockCovers: covers,
    dataFile: config.dataFile === true,
  };
}

// ----------------------------------------------------------------------------------------------
// Valid configurations
// ----------------------------------------------------------------------------------------------

const K = 1024;
const M = 1024 * 1024;
const ALL_CLUSTER_SIZES = [512, 1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K, 256 * K, 512 * K, 1 * M, 2 * M];
const REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64];
const PREALLOC_ON: Preallocation[] = ['metadata', 'falloc', 'full'];

function validConfigs(): Config[] {
  const out: Config[] = [];
  const add = (c: Config): void => {
    out.push(c);
  };

  // 1. Cluster size x size grid, all other options default. 1 and 65535 are rounded up to 512.
  for (const clusterSize of ALL_CLUSTER_SIZES) {
    for (const size of ['0', '512', '1', '65535', '1M', '1G']) add({ clusterSize, size });
  }
  // Odd sizes with default options.
  for (const size of ['511', '513', '100001', '1G+512', '3G', '64G']) add({ size });
  add({ size: '1G' }); // all defaults, no -o at all

  // 2. Refcount widths (compat 1.1): plain, metadata-preallocated, data-file-raw.
  for (const refcountBits of REFCOUNT_BITS) {
    for (const clusterSize of [512, 4 * K, 64 * K, 2 * M]) add({ clusterSize, refcountBits, size: '1G' });
    add({ clusterSize: 4 * K, refcountBits, preallocation: 'metadata', size: '16M' });
    add({ refcountBits, dataFile: true, dataFileRaw: true, size: '64G' });
    add({ clusterSize: 512, refcountBits, preallocation: 'metadata', size: '64K' });
  }
  // The first refblock of 512 B / 64-bit refcounts covers 64 clusters: overflow it with a plain image.
  add({ clusterSize: 512, refcountBits: 64, size: '128M' });
  add({ clusterSize: 512, refcountBits: 32, size: '256M' });

  // 3. compat=0.10 (version 2 header).
  for (const clusterSize of [512, 4 * K, 64 * K, 2 * M]) {
    for (const size of ['0', '1M', '3G']) add({ compat: '0.10', clusterSize, size });
  }
  for (const preallocation of PREALLOC_ON) add({ compat: '0.10', preallocation, size: '1M' });
  add({ compat: '0.10', backing: 'qcow2', size: '1M' });
  add({ compat: '0.10', refcountBits: 16, size: '1G' });
  add({ compat: '0.10', lazyRefcounts: false, size: '1G' });
  add({ compat: '0.10', compressionType: 'zlib', size: '1G' });
  add({ compat: '0.10', extendedL2: false, size: '1G' });
  add({ compat: '0.10', size: '1G+512' });

  // 4. Other v3 features.
  add({ compat: '1.1', size: '1G' });
  for (const clusterSize of [4 * K, 64 * K]) {
    for (const size of ['1M', '1G']) add({ clusterSize, lazyRefcounts: true, size });
  }
  add({ lazyRefcounts: false, size: '1G' });
  for (const clusterSize of [64 * K, 2 * M]) {
    for (const size of ['0', '1G']) add({ clusterSize, compressionType: 'zstd', size });
  }
  add({ compressionType: 'zlib', size: '1G' });
  add({ lazyRefcounts: true, compressionType: 'zstd', size: '1G' });
  add({ lazyRefcounts: true, dataFile: true, dataFileRaw: true, size: '1G' });
  add({ compressionType: 'zstd', dataFile: true, size: '1G' });
  add({ compressionType: 'zstd', dataFile: true, dataFileRaw: true, size: '1G' });
  add({ extendedL2: false, size: '1G' });
  add({ dataFile: true, dataFileRaw: false, size: '1G' });

  // 5. Extended L2 (>= 16 KiB clusters).
  for (const clusterSize of ALL_CLUSTER_SIZES.filter((s) => s >= 16 * K)) add({ clusterSize, extendedL2: true, size: '1G' });
  for (const size of ['0', '65535', '64G']) add({ extendedL2: true, size });
  for (const clusterSize of [16 * K, 64 * K]) {
    for (const preallocation of PREALLOC_ON) add({ clusterSize, extendedL2: true, preallocation, size: '1M' });
  }
  add({ extendedL2: true, preallocation: 'off', backing: 'qcow2', size: '1M' });
  for (const preallocation of PREALLOC_ON) add({ extendedL2: true, preallocation, backing: 'qcow2', size: '1M' });
  add({ extendedL2: true, backing: 'qcow2', size: '3M' });
  add({ extendedL2: true, dataFile: true, size: '1G' });
  add({ extendedL2: true, preallocation: 'metadata', dataFile: true, size: '4M' });
  add({ extendedL2: true, dataFileRaw: false, dataFile: true, size: '1G' });
  add({ extendedL2: true, refcountBits: 1, size: '1G' });
  add({ extendedL2: true, refcountBits: 64, preallocation: 'metadata', size: '4M' });
  add({ clusterSize: 16 * K, extendedL2: true, size: '32G' });
  add({ clusterSize: 16 * K, extendedL2: true, size: '32G+512' });
  add({ extendedL2: true, lazyRefcounts: true, compressionType: 'zstd', size: '1G' });

  // 6. Preallocation without a data file (kept small: metadata/falloc/full sizes <= 256M).
  for (const preallocation of PREALLOC_ON) {
    for (const clusterSize of [512, 4 * K, 64 * K, 2 * M]) {
      for (const size of ['65535', '3M']) add({ clusterSize, preallocation, size });
    }
  }
  add({ preallocation: 'off', size: '1G' });
  add({ preallocation: 'metadata', size: '256M' });
  add({ preallocation: 'metadata', size: '256M+512', clusterSize: 2 * M });
  add({ preallocation: 'falloc', size: '64M' });
  add({ preallocation: 'full', size: '16M' });
  add({ preallocation: 'metadata', size: '0' });
  add({ preallocation: 'falloc', size: '0' });
  add({ preallocation: 'metadata', refcountBits: 1, clusterSize: 512, size: '1M' });
  add({ preallocation: 'falloc', refcountBits: 2, clusterSize: 4 * K, size: '1M' });
  add({ preallocation: 'full', refcountBits: 8, size: '1M' });
  add({ preallocation: 'metadata', lazyRefcounts: true, size: '1M' });
  // ... with a data file (metadata in the qcow2 file, the truncate forwarded to the data file).
  for (const preallocation of PREALLOC_ON) {
    for (const clusterSize of [4 * K, 64 * K]) add({ clusterSize, preallocation, dataFile: true, size: '3M' });
  }

  // 7. External data file.
  for (const clusterSize of [512, 4 * K, 64 * K, 2 * M]) {
    for (const size of ['0', '1M', '1G']) add({ clusterSize, dataFile: true, size });
  }
  add({ dataFile: true, size: '65535' });
  // data_file_raw=on (forces preallocation=metadata).
  const rawSizes: Array<[number, string[]]> = [
    [512, ['1M', '16M']],
    [1 * K, ['64M']],
    [4 * K, ['1', '1G', '1G+512']],
    [64 * K, ['0', '65535', '1M', '1G', '1G+512', '3G', '64G']],
    [2 * M, ['1G', '3G', '1T']],
  ];
  for (const [clusterSize, sizes] of rawSizes) {
    for (const size of sizes) add({ clusterSize, dataFile: true, dataFileRaw: true, size });
  }
  add({ dataFile: true, dataFileRaw: true, size: '1G' }); // defaults, raw
  for (const preallocation of ['off', ...PREALLOC_ON] as Preallocation[]) {
    add({ preallocation, dataFile: true, dataFileRaw: true, size: '4M' });
  }

  // 8. Backing files (a backing file and a size; create never reads the backing data).
  for (const clusterSize of [512, 64 * K, 2 * M]) {
    for (const size of ['1M', '1G']) add({ clusterSize, backing: 'qcow2', size });
  }
  add({ backing: 'raw', size: '1M' });
  add({ backing: 'raw', size: '1G+512' });
  add({ backing: 'qcow2', dataFile: true, size: '1M' });
  add({ backing: 'qcow2', lazyRefcounts: true, size: '1M' });
  add({ backing: 'qcow2', compressionType: 'zstd', size: '1M' });
  add({ backing: 'qcow2', refcountBits: 8, size: '1M' });
  add({ backing: 'qcow2', preallocation: 'off', size: '1M' });
  add({ backing: 'qcow2', size: '0' });

  // 9. l1_size crossing a cluster boundary: one L1 cluster covers cs^3/64 bytes (extended L2: /128).
  for (const clusterSize of [512, 1 * K, 2 * K, 4 * K, 8 * K, 16 * K]) {
    const edge = (BigInt(clusterSize) ** 3n) / 64n;
    add({ clusterSize, size: edge.toString() });
    add({ clusterSize, size: `${edge}+512` });
  }
  add({ size: '4T' });
  add({ size: '4T+512' });
  add({ clusterSize: 512, dataFile: true, dataFileRaw: true, size: '2M+512' });
  add({ clusterSize: 2 * M, size: '1P' }); // tiny L1
  add({ size: '2P' }); // the largest L1 qemu accepts at 64 KiB: 4 Mi entries, 32 MiB

  // 10. Mixed corners: sub-byte refcounts with raw data files, falloc/full beyond the first refblock.
  add({ clusterSize: 512, refcountBits: 1, dataFile: true, dataFileRaw: true, size: '1M' });
  add({ clusterSize: 512, refcountBits: 4, preallocation: 'falloc', size: '1M' });
  add({ clusterSize: 1 * K, refcountBits: 64, preallocation: 'full', size: '1M' });
  add({ clusterSize: 16 * K, extendedL2: true, refcountBits: 2, preallocation: 'falloc', dataFile: true, size: '16M' });
  add({ compat: '0.10', clusterSize: 512, preallocation: 'metadata', size: '1M' });
  add({ lazyRefcounts: true, extendedL2: true, preallocation: 'metadata', backing: 'qcow2', size: '1M' });
  add({ extendedL2: true, preallocation: 'full', backing: 'raw', size: '2M' });

  return out;
}

function dedupe(cases: CreateCase[]): CreateCase[] {
  const seen = new Set<string>();
  return cases.filter((c) => (seen.has(c.name) ? false : (seen.add(c.name), true)));
}

export const VALID_CASES: CreateCase[] = dedupe(validConfigs().map(makeCase));

// ----------------------------------------------------------------------------------------------
// Configurations qemu-img refuses: its message (stderr minus `qemu-img: img.qcow2: `) is ours.
// ----------------------------------------------------------------------------------------------

const FAILING: Config[] = [
  { clusterSize: 3000, size: '1M' },
  { clusterSize: 256, size: '1M' },
  { clusterSize: 0, size: '1M' },
  { clusterSize: 4 * M, size: '1M' },
  { clusterSize: 4 * K, extendedL2: true, size: '1M' },
  { clusterSize: 8 * K, extendedL2: true, size: '1M' },
  { clusterSize: 3000, extendedL2: true, size: '1M' },
  { compat: '0.10', extendedL2: true, size: '1M' },
  { compat: '0.10', clusterSize: 4 * K, extendedL2: true, lazyRefcounts: true, size: '1M' },
  { backing: 'qcow2', preallocation: 'metadata', size: '1M' },
  { backing: 'qcow2', preallocation: 'falloc', size: '1M' },
  { backing: 'qcow2', preallocation: 'full', size: '1M' },
  { backing: 'qcow2', preallocation: 'falloc', dataFile: true, size: '1M' },
  { backing: 'qcow2', preallocation: 'metadata', compat: '0.10', lazyRefcounts: true, size: '1M' },
  { backing: 'none-fmt', size: '1M' },
  { compat: '0.10', lazyRefcounts: true, size: '1M' },
  { compat: '0.10', lazyRefcounts: true, refcountBits: 8, size: '1M' },
  { refcountBits: 3, size: '1M' },
  { refcountBits: 128, size: '1M' },
  { refcountBits: 0, size: '1M' },
  { compat: '0.10', refcountBits: 1, size: '1M' },
  { compat: '0.10', refcountBits: 8, size: '1M' },
  { compat: '0.10', refcountBits: 64, size: '1M' },
  { dataFileRaw: true, size: '1M' },
  { dataFileRaw: true, preallocation: 'full', size: '1M' },
  { compat: '0.10', dataFileRaw: true, size: '1M' },
  { backing: 'qcow2', dataFile: true, dataFileRaw: true, size: '1M' },
  { compat: '0.10', dataFile: true, size: '1M' },
  { compat: '0.10', dataFile: true, dataFileRaw: true, size: '1M' },
  { compat: '0.10', compressionType: 'zstd', size: '1M' },
  { compat: '0.10', compressionType: 'zstd', dataFile: true, size: '1M' },
  { clusterSize: 512, size: '128G+512' },
  { clusterSize: 512, dataFile: true, size: '128G+512' },
  { size: '2P+512' },
  { clusterSize: 4 * K, extendedL2: true, dataFile: true, dataFileRaw: true, size: '1M' },
  { clusterSize: 2 * M, size: '4611686018427387904' }, // 2^62: qcow2's own L1 limit
  { clusterSize: 2 * M, size: '9223372036854775296' }, // 2^63 - 512: above the block layer's BDRV_MAX_LENGTH
];

export interface FailingCase {
  name: string;
  config: Config;
  opts: string;
  sizeBytes: bigint;
  options: CreateOptions;
}

function makeFailingCase(config: Config): FailingCase {
  const opts = optString(config);
  return {
    name: `${opts === '' ? '(no -o)' : `-o ${opts}`} ${config.size}`,
    config,
    opts,
    sizeBytes: parseSizeLabel(config.size),
    options: toCreateOptions(config),
  };
}

export const FAILING_CASES: FailingCase[] = FAILING.map(makeFailingCase);

/** The deliberate exception: qemu-img 7.2 accepts it (and writes a broken image); we refuse. */
const REFUSED: Config[] = [
  { extendedL2: true, dataFile: true, dataFileRaw: true, size: '1G' },
  { clusterSize: 16 * K, extendedL2: true, dataFile: true, dataFileRaw: true, preallocation: 'metadata', size: '1M' },
];

export const REFUSED_BY_DESIGN: FailingCase[] = REFUSED.map(makeFailingCase);
