// validateCreate / validateAdoption: every refusal with qemu-img 7.2's words and order, the
// defaults it fills in, and the combinations we refuse where qemu-img would lose data. The
// differential blocks run the same options through a real `qemu-img create` in a temp dir.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { CreateOptions } from '../../provider/model/options';
import { validateAdoption, validateCreate, withCreateWayForward } from '../../provider/rules/create';
import { runQemuImg } from '../helpers/qemu';
import { GiB, INPUT_NAME, KiB, MiB, WAY_FORWARD, describeWithQemu, makeTempRoot, qemuCreateArgs, qemuMessage, removeTree, show } from './support';

const IMG = 'img.qcow2';
const BDRV_MAX_LENGTH = 9223372035781033984n;

const M = {
  extL2V2: 'Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)',
  clusterSize: 'Cluster size must be a power of two between 512 and 2048k',
  extL2Small: 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes',
  backingPrealloc: 'Backing file and preallocation can only be used at the same time if extended_l2 is on',
  fmtNoFile: 'Backing format cannot be used without backing file',
  lazyV2: 'Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)',
  refcountWidth: 'Refcount width must be a power of two and may not exceed 64 bits',
  refcountV2: 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)',
  rawNoFile: 'data-file-raw requires data-file',
  rawBacking: 'Backing file and data-file-raw cannot be used at the same time',
  dataFileV2: 'External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)',
  zstdV2: 'Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)',
  tooLarge: "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
  overMax: (size: bigint) => `Could not resize image: offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})`,
};

interface RefusalCase {
  name: string;
  options: CreateOptions;
  property: string;
  message: string | RegExp;
  /** qemu-img accepts this (we are stricter) or has no such option: not compared with qemu-img. */
  oursOnly?: string;
}

const BACKING = { backingFile: 'base.qcow2', backingFormat: 'qcow2' } as const;
const DATA = { dataFile: 'img.raw' } as const;

/** One fault each: the refusal that must come out, in qemu-img's words. */
const SINGLE_FAULTS: RefusalCase[] = [
  { name: 'extended_l2 on compat 0.10', options: { size: MiB, compat: '0.10', extendedL2: true }, property: 'extended_l2', message: M.extL2V2 },
  { name: 'cluster size 1000 (not a power of two)', options: { size: MiB, clusterSize: 1000 }, property: 'cluster_size', message: M.clusterSize },
  { name: 'cluster size 256 (below 512)', options: { size: MiB, clusterSize: 256 }, property: 'cluster_size', message: M.clusterSize },
  { name: 'cluster size 4 MiB (above 2 MiB)', options: { size: MiB, clusterSize: 4 * 1024 * 1024 }, property: 'cluster_size', message: M.clusterSize },
  { name: 'extended_l2 with 8 KiB clusters', options: { size: MiB, extendedL2: true, clusterSize: 8192 }, property: 'extended_l2', message: M.extL2Small },
  { name: 'backing file with preallocation=metadata', options: { size: MiB, ...BACKING, preallocation: 'metadata' }, property: 'preallocation', message: M.backingPrealloc },
  { name: 'backing file with preallocation=falloc', options: { size: MiB, ...BACKING, preallocation: 'falloc' }, property: 'preallocation', message: M.backingPrealloc },
  { name: 'backing file with preallocation=full', options: { size: MiB, ...BACKING, preallocation: 'full' }, property: 'preallocation', message: M.backingPrealloc },
  { name: 'backing format without backing file', options: { size: MiB, backingFormat: 'qcow2' }, property: 'backing_fmt', message: M.fmtNoFile },
  { name: 'lazy refcounts on compat 0.10', options: { size: MiB, compat: '0.10', lazyRefcounts: true }, property: 'lazy_refcounts', message: M.lazyV2 },
  { name: 'refcount_bits=3', options: { size: MiB, refcountBits: 3 }, property: 'refcount_bits', message: M.refcountWidth },
  { name: 'refcount_bits=0', options: { size: MiB, refcountBits: 0 }, property: 'refcount_bits', message: M.refcountWidth },
  { name: 'refcount_bits=128', options: { size: MiB, refcountBits: 128 }, property: 'refcount_bits', message: M.refcountWidth },
  { name: 'refcount_bits=8 on compat 0.10', options: { size: MiB, compat: '0.10', refcountBits: 8 }, property: 'refcount_bits', message: M.refcountV2 },
  { name: 'data_file_raw without data_file', options: { size: MiB, dataFileRaw: true }, property: 'data_file_raw', message: M.rawNoFile },
  { name: 'data_file_raw with a backing file', options: { size: MiB, ...DATA, dataFileRaw: true, ...BACKING }, property: 'backing_file', message: M.rawBacking },
  { name: 'data file on compat 0.10', options: { size: MiB, compat: '0.10', ...DATA }, property: 'data_file', message: M.dataFileV2 },
  { name: 'zstd on compat 0.10', options: { size: MiB, compat: '0.10', compressionType: 'zstd' }, property: 'compression_type', message: M.zstdV2 },
  { name: 'size beyond what 64 KiB clusters can map (4 PiB)', options: { size: 1n << 52n }, property: 'size', message: M.tooLarge },
  { name: 'size beyond what 512 B clusters can map (1 PiB)', options: { size: 1n << 50n, clusterSize: 512 }, property: 'size', message: M.tooLarge },
  { name: 'size above BDRV_MAX_LENGTH once rounded up', options: { size: BDRV_MAX_LENGTH + 1n }, property: 'size', message: M.overMax(BDRV_MAX_LENGTH + 512n) },
  { name: 'size near INT64_MAX', options: { size: 9223372036854775000n, clusterSize: 2 * 1024 * 1024 }, property: 'size', message: M.overMax(9223372036854775296n) },
  {
    name: 'extended_l2 with data_file_raw (stricter than qemu-img: it would read zeros)',
    options: { size: MiB, extendedL2: true, ...DATA, dataFileRaw: true },
    property: 'extended_l2',
    message: /extended_l2.*data_file_raw/s,
    oursOnly: 'qemu-img 7.2 accepts it and preallocates entries with empty subcluster bitmaps',
  },
  {
    name: 'adopting a data file without naming it',
    options: { size: MiB, adoptDataFile: true },
    property: 'data_file',
    message: /data_file=NAME/,
    oursOnly: 'adoption is not a qemu-img option',
  },
];

/** Two faults at once: the one qemu-img reports first must be the one we report. */
const TWO_FAULTS: RefusalCase[] = [
  { name: 'extended_l2 on 0.10 beats a bad cluster size', options: { size: MiB, compat: '0.10', extendedL2: true, clusterSize: 1000 }, property: 'extended_l2', message: M.extL2V2 },
  { name: 'a bad cluster size beats extended_l2 needing 16 KiB', options: { size: MiB, extendedL2: true, clusterSize: 1000 }, property: 'cluster_size', message: M.clusterSize },
  { name: 'extended_l2 cluster minimum beats backing format without file', options: { size: MiB, extendedL2: true, clusterSize: 4096, backingFormat: 'qcow2' }, property: 'extended_l2', message: M.extL2Small },
  { name: 'backing+preallocation beats lazy refcounts on 0.10', options: { size: MiB, ...BACKING, preallocation: 'metadata', compat: '0.10', lazyRefcounts: true }, property: 'preallocation', message: M.backingPrealloc },
  { name: 'backing+preallocation beats backing+data_file_raw', options: { size: MiB, ...BACKING, preallocation: 'metadata', ...DATA, dataFileRaw: true }, property: 'preallocation', message: M.backingPrealloc },
  { name: 'backing format without file beats lazy refcounts on 0.10', options: { size: MiB, backingFormat: 'qcow2', compat: '0.10', lazyRefcounts: true }, property: 'backing_fmt', message: M.fmtNoFile },
  { name: 'lazy refcounts on 0.10 beats refcount_bits=3', options: { size: MiB, compat: '0.10', lazyRefcounts: true, refcountBits: 3 }, property: 'lazy_refcounts', message: M.lazyV2 },
  { name: 'refcount width beats refcount_bits on 0.10', options: { size: MiB, compat: '0.10', refcountBits: 3 }, property: 'refcount_bits', message: M.refcountWidth },
  { name: 'refcount_bits=8 on 0.10 beats data_file_raw without data file', options: { size: MiB, compat: '0.10', refcountBits: 8, dataFileRaw: true }, property: 'refcount_bits', message: M.refcountV2 },
  { name: 'data_file_raw without data file beats zstd on 0.10', options: { size: MiB, compat: '0.10', dataFileRaw: true, compressionType: 'zstd' }, property: 'data_file_raw', message: M.rawNoFile },
  { name: 'data_file_raw with backing beats data file on 0.10', options: { size: MiB, compat: '0.10', ...DATA, dataFileRaw: true, ...BACKING }, property: 'backing_file', message: M.rawBacking },
  { name: 'data file on 0.10 beats zstd on 0.10', options: { size: MiB, compat: '0.10', ...DATA, compressionType: 'zstd' }, property: 'data_file', message: M.dataFileV2 },
  { name: 'zstd on 0.10 beats a size too large', options: { size: 1n << 52n, compat: '0.10', compressionType: 'zstd' }, property: 'compression_type', message: M.zstdV2 },
  { name: 'the maximum length beats a size too large for the clusters', options: { size: BDRV_MAX_LENGTH + 1n, clusterSize: 512 }, property: 'size', message: M.overMax(BDRV_MAX_LENGTH + 512n) },
  { name: 'too large beats nothing else: with 2 MiB clusters 4 PiB fits', options: { size: 1n << 52n, clusterSize: 2 * 1024 * 1024, compat: '0.10', lazyRefcounts: true }, property: 'lazy_refcounts', message: M.lazyV2 },
  {
    name: 'extended_l2+data_file_raw beats a size too large (ours; qemu-img reports the size)',
    options: { size: 1n << 52n, extendedL2: true, ...DATA, dataFileRaw: true },
    property: 'extended_l2',
    message: /extended_l2.*data_file_raw/s,
    oursOnly: 'qemu-img accepts extended_l2 with data_file_raw',
  },
];

function refusalOf(o: CreateOptions): { property: string; message: string } | undefined {
  const r = validateCreate(o);
  return r.ok ? undefined : r.refusal;
}

describe('validateCreate refuses', () => {
  it.each(SINGLE_FAULTS.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const r = refusalOf(c.options);
    expect(r, 'must be refused').toBeDefined();
    expect(r!.property).toBe(c.property);
    if (typeof c.message === 'string') expect(r!.message).toBe(c.message);
    else expect(r!.message).toMatch(c.message);
  });
});

describe('the Image resource adds a way forward in the program to each create refusal', () => {
  const refusals = [...SINGLE_FAULTS, ...TWO_FAULTS].map((c) => [c.name, refusalOf(c.options)!] as const);
  it.each(refusals)('%s', (_n, r) => {
    const text = withCreateWayForward(r);
    expect(text.startsWith(r.message.replace(/\. (Create the image with extended_l2=off|Omit the size to use the file's own size)$/, '').replace(/\.$/, '')), 'keeps the reason').toBe(true);
    expect(text, 'a way forward').toMatch(WAY_FORWARD);
    expect(text, 'in the program: an Image input named').toMatch(INPUT_NAME);
  });

  it('a backing file together with data-file-raw on a new image: remove one of them', () => {
    const r = refusalOf({ size: MiB, ...DATA, dataFileRaw: true, backingFile: 'base.qcow2', backingFormat: 'qcow2' })!;
    expect(withCreateWayForward(r)).toBe(
      'Backing file and data-file-raw cannot be used at the same time. A data-file-raw image keeps its data file a complete raw disk, ' +
        'which a backing file would contradict. Remove backingFile (the data file is the whole disk), or remove dataFileRaw to make an overlay',
    );
  });

  it('adoption refusals too', () => {
    expect(withCreateWayForward(validateAdoption('/d/img.raw', 4n * KiB, MiB)!)).toMatch(/never resized\. Remove size \(the file's own size is used\)$/);
    expect(withCreateWayForward(validateAdoption('/d/img.raw', 1000n, 512n)!)).toMatch(/Extend the file to a multiple of 512 bytes first, or remove adopt/);
  });
});

describe('validateCreate reports the first fault in qemu-img order when several apply', () => {
  it.each(TWO_FAULTS.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const r = refusalOf(c.options);
    expect(r, 'must be refused').toBeDefined();
    expect(r!.property).toBe(c.property);
    if (typeof c.message === 'string') expect(r!.message).toBe(c.message);
    else expect(r!.message).toMatch(c.message);
  });
});

describe('validateCreate refuses extended_l2 with data_file_raw, naming both', () => {
  it.each([
    ['64 KiB clusters', { size: MiB, extendedL2: true, ...DATA, dataFileRaw: true }],
    ['explicit preallocation=metadata', { size: MiB, extendedL2: true, ...DATA, dataFileRaw: true, preallocation: 'metadata' }],
    ['2 MiB clusters, 1 GiB', { size: GiB, clusterSize: 2 * 1024 * 1024, extendedL2: true, ...DATA, dataFileRaw: true }],
  ] as Array<[string, CreateOptions]>)('%s', (_n, o) => {
    const r = refusalOf(o);
    expect(r).toBeDefined();
    expect(r!.message).toMatch(/extended[ _-]?l2/i);
    expect(r!.message).toMatch(/data[ _-]?file[ _-]?raw/i);
    expect(r!.message, 'gives the reason').toMatch(/zeros/);
    expect(r!.message, 'gives the way forward').toMatch(/extended_l2=off/);
  });

  it('accepts each of them alone', () => {
    expect(validateCreate({ size: MiB, extendedL2: true }).ok).toBe(true);
    expect(validateCreate({ size: MiB, ...DATA, dataFileRaw: true }).ok).toBe(true);
    expect(validateCreate({ size: MiB, extendedL2: true, ...DATA }).ok).toBe(true);
  });
});

describe('validateCreate fills in defaults', () => {
  it('everything qemu-img defaults to', () => {
    const r = validateCreate({ size: MiB });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.options).toEqual({
      size: MiB, compat: '1.1', version: 3, clusterSize: 65536, clusterBits: 16, refcountBits: 16, refcountOrder: 4,
      lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', preallocation: 'off', dataFileRaw: false,
      adoptDataFile: false,
    });
  });

  it.each([
    [0n, 0n], [1n, 512n], [511n, 512n], [512n, 512n], [513n, 1024n], [1000n, 1024n], [MiB + 1n, MiB + 512n],
  ])('size %s is rounded up to %s (a multiple of 512)', (asked, want) => {
    const r = validateCreate({ size: asked });
    expect(r.ok && r.options.size).toBe(want);
  });

  it('an omitted size resolves to 0 (the caller derives it and calls again)', () => {
    const r = validateCreate({});
    expect(r.ok && r.options.size).toBe(0n);
  });

  it.each([
    [undefined, 'metadata'], ['off', 'metadata'], ['metadata', 'metadata'], ['falloc', 'falloc'], ['full', 'full'],
  ] as const)('data_file_raw with preallocation=%s runs preallocation %s', (asked, want) => {
    const r = validateCreate({ size: MiB, ...DATA, dataFileRaw: true, ...(asked ? { preallocation: asked } : {}) });
    expect(r.ok && r.options.preallocation).toBe(want);
  });

  it('without data_file_raw preallocation stays off', () => {
    const r = validateCreate({ size: MiB, ...DATA });
    expect(r.ok && r.options.preallocation).toBe('off');
  });

  it.each([
    [undefined, '1.1', 3], ['1.1', '1.1', 3], ['0.10', '0.10', 2],
  ] as const)('compat %s resolves to %s (version %s)', (asked, compat, version) => {
    const r = validateCreate({ size: MiB, ...(asked ? { compat: asked } : {}) });
    expect(r.ok).toBe(true);
    if (r.ok) expect([r.options.compat, r.options.version]).toEqual([compat, version]);
  });

  it.each([[512, 9], [4096, 12], [65536, 16], [2 * 1024 * 1024, 21]])('cluster size %s has %s cluster bits', (cs, bits) => {
    const r = validateCreate({ size: MiB, clusterSize: cs });
    expect(r.ok && r.options.clusterBits).toBe(bits);
  });

  it.each([[1, 0], [2, 1], [8, 3], [16, 4], [64, 6]])('refcount_bits %s has refcount order %s', (bits, order) => {
    const r = validateCreate({ size: MiB, refcountBits: bits });
    expect(r.ok && r.options.refcountOrder).toBe(order);
  });

  it('keeps the names it was given and nothing else', () => {
    const r = validateCreate({ size: MiB, ...DATA });
    expect(r.ok && r.options.dataFile).toBe('img.raw');
    expect(r.ok && 'backingFile' in r.options).toBe(false);
    const b = validateCreate({ size: MiB, ...BACKING });
    expect(b.ok && [b.options.backingFile, b.options.backingFormat]).toEqual(['base.qcow2', 'qcow2']);
  });

  it.each([
    ['backing file with preallocation when extended_l2 is on', { size: MiB, ...BACKING, extendedL2: true, preallocation: 'metadata' }],
    ['refcount_bits=16 on compat 0.10', { size: MiB, compat: '0.10', refcountBits: 16 }],
    ['lazy_refcounts=off on compat 0.10', { size: MiB, compat: '0.10', lazyRefcounts: false }],
    ['zlib on compat 0.10', { size: MiB, compat: '0.10', compressionType: 'zlib' }],
    ['data_file_raw=off without data file', { size: MiB, dataFileRaw: false }],
    ['adopting a named data file', { size: MiB, ...DATA, adoptDataFile: true }],
    ['4 PiB with 2 MiB clusters', { size: 1n << 52n, clusterSize: 2 * 1024 * 1024 }],
    ['1 TiB with the default clusters', { size: 1n << 40n }],
  ] as Array<[string, CreateOptions]>)('accepts %s', (_n, o) => {
    const r = validateCreate(o);
    expect(r.ok, r.ok ? '' : r.refusal.message).toBe(true);
  });
});

describe('validateAdoption', () => {
  it.each([
    ['a file of exactly the size', 1048576n, MiB],
    ['a larger file', 2n * MiB, MiB],
    ['an empty file for a size-0 image', 0n, 0n],
    ['a file whose size is a multiple of 512 but not of the cluster size', MiB + 512n, MiB],
  ])('accepts %s', (_n, fileSize, size) => {
    expect(validateAdoption('/d/img.raw', fileSize, size)).toBeUndefined();
  });

  it.each([
    ['a file that is not a multiple of 512', 1000n, 512n, 'data_file', /1000 bytes, not a multiple of 512/],
    ['a file one byte short of a sector', MiB - 1n, MiB - 512n, 'data_file', /not a multiple of 512/],
    ['a file smaller than the requested size', MiB, 2n * MiB, 'size', /smaller than the requested size 2097152/],
  ])('refuses %s', (_n, fileSize, size, property, message) => {
    const r = validateAdoption('/d/img.raw', fileSize, size);
    expect(r).toBeDefined();
    expect(r!.property).toBe(property);
    expect(r!.message).toMatch(message);
    expect(r!.message, 'names the file').toContain("'/d/img.raw'");
    expect(r!.message, 'says why: never resized').toMatch(/never resized/);
  });

  it('a file too small points the way forward: omit the size', () => {
    expect(validateAdoption('/d/img.raw', 4n * KiB, MiB)!.message).toMatch(/Omit the size/);
  });
});

// ------------------------------------------------------------------------------------------------
// Differential: the same options through a real qemu-img create
// ------------------------------------------------------------------------------------------------

/** Faults to combine pairwise; qemu-img is the oracle for which one wins. */
const PAIR_FAULTS: Array<[string, CreateOptions]> = [
  ['extL2 on 0.10', { compat: '0.10', extendedL2: true }],
  ['cluster 1000', { clusterSize: 1000 }],
  ['extL2 with 4K clusters', { extendedL2: true, clusterSize: 4096 }],
  ['backing+prealloc', { ...BACKING, preallocation: 'metadata' }],
  ['backing_fmt only', { backingFormat: 'qcow2' }],
  ['lazy on 0.10', { compat: '0.10', lazyRefcounts: true }],
  ['refcount 3', { refcountBits: 3 }],
  ['refcount 8 on 0.10', { compat: '0.10', refcountBits: 8 }],
  ['raw without data file', { dataFileRaw: true }],
  ['raw with backing', { ...DATA, dataFileRaw: true, ...BACKING }],
  ['data file on 0.10', { compat: '0.10', ...DATA }],
  ['zstd on 0.10', { compat: '0.10', compressionType: 'zstd' }],
  ['4 PiB', { size: 1n << 52n }],
  ['over max', { size: 9223372036854775000n }],
];

function pairs(): Array<[string, CreateOptions]> {
  const out: Array<[string, CreateOptions]> = [];
  for (let i = 0; i < PAIR_FAULTS.length; i++) {
    for (let j = i + 1; j < PAIR_FAULTS.length; j++) {
      const [na, a] = PAIR_FAULTS[i]!;
      const [nb, b] = PAIR_FAULTS[j]!;
      const shared = Object.keys(a).filter((k) => k in b && !(k === 'compat' && a.compat === b.compat));
      if (shared.length) continue;
      out.push([`${na} + ${nb}`, { size: MiB, ...a, ...b }]);
    }
  }
  return out;
}

const VALID_FOR_QEMU: Array<[string, CreateOptions]> = [
  ['defaults, 1000 bytes (rounded up)', { size: 1000n }],
  ['size 0', { size: 0n }],
  ['compat 0.10', { size: MiB, compat: '0.10' }],
  ['512 B clusters', { size: MiB, clusterSize: 512 }],
  ['2 MiB clusters', { size: MiB, clusterSize: 2 * 1024 * 1024 }],
  ['refcount_bits=1', { size: MiB, refcountBits: 1 }],
  ['refcount_bits=64', { size: MiB, refcountBits: 64 }],
  ['lazy refcounts', { size: MiB, lazyRefcounts: true }],
  ['zstd', { size: MiB, compressionType: 'zstd' }],
  ['extended L2', { size: MiB, extendedL2: true }],
  ['data file', { size: MiB, ...DATA }],
  ['data_file_raw (forces metadata preallocation)', { size: MiB, ...DATA, dataFileRaw: true }],
  ['data_file_raw, 1000 bytes', { size: 1000n, ...DATA, dataFileRaw: true }],
  ['backing with preallocation and extended L2', { size: MiB, ...BACKING, extendedL2: true, preallocation: 'metadata' }],
];

interface QemuInfo {
  'virtual-size': number;
  'cluster-size': number;
  'format-specific': { data: Record<string, unknown> };
}

describeWithQemu('validateCreate against qemu-img create 7.2', () => {
  let root = '';
  let n = 0;
  beforeAll(() => {
    root = makeTempRoot('create');
  });
  afterAll(() => removeTree(root));

  function qemuCreate(o: CreateOptions): { dir: string; status: number | null; message: string } {
    const dir = join(root, String(++n));
    mkdirSync(dir);
    const r = runQemuImg(qemuCreateArgs(o, IMG), { cwd: dir });
    return { dir, status: r.status, message: qemuMessage(r.stderr, IMG) };
  }

  const compared = (cases: RefusalCase[]) => cases.filter((c) => !c.oursOnly).map((c) => [c.name, c] as const);

  describe('single faults: same refusal, same words', () => {
    it.each(compared(SINGLE_FAULTS))('%s', (_n, c) => {
      const q = qemuCreate(c.options);
      expect(q.status, 'qemu-img must refuse too').not.toBe(0);
      expect(refusalOf(c.options)?.message).toBe(q.message);
    });
  });

  describe('two faults (hand-picked): the same one wins', () => {
    it.each(compared(TWO_FAULTS))('%s', (_n, c) => {
      const q = qemuCreate(c.options);
      expect(q.status).not.toBe(0);
      expect(refusalOf(c.options)?.message).toBe(q.message);
    });
  });

  describe('two faults (every compatible pair): the same one wins', () => {
    it.each(pairs())('%s', (_n, o) => {
      const q = qemuCreate(o);
      expect(q.status, `qemu-img accepted ${show(o)}`).not.toBe(0);
      expect(refusalOf(o)?.message).toBe(q.message);
    });
  });

  describe('ours-only refusals: qemu-img accepts them (documents why we are stricter)', () => {
    it('qemu-img 7.2 accepts extended_l2 with data_file_raw', () => {
      expect(qemuCreate({ size: MiB, extendedL2: true, ...DATA, dataFileRaw: true }).status).toBe(0);
    });
  });

  describe('accepted configurations: qemu-img writes what validateCreate resolved', () => {
    it.each(VALID_FOR_QEMU)('%s', (_n, o) => {
      const r = validateCreate(o);
      expect(r.ok, r.ok ? '' : r.refusal.message).toBe(true);
      if (!r.ok) return;
      const q = qemuCreate(o);
      expect(q.status, q.message).toBe(0);
      const info = JSON.parse(runQemuImg(['info', '--output=json', IMG], { cwd: q.dir }).stdout) as QemuInfo;
      const d = info['format-specific'].data;
      expect({
        size: BigInt(info['virtual-size']), cluster: info['cluster-size'], compat: d.compat, refcountBits: d['refcount-bits'],
        lazy: d['lazy-refcounts'] ?? false, extL2: d['extended-l2'] ?? false, compression: d['compression-type'],
        raw: d['data-file-raw'] ?? false,
      }).toEqual({
        size: r.options.size, cluster: r.options.clusterSize, compat: r.options.compat, refcountBits: r.options.refcountBits,
        lazy: r.options.lazyRefcounts, extL2: r.options.extendedL2, compression: r.options.compressionType,
        raw: r.options.dataFileRaw,
      });
      if (r.options.dataFileRaw && r.options.size > 0n) {
        // Metadata preallocation: every guest cluster is allocated (mapped 1:1 onto the data file).
        const check = JSON.parse(runQemuImg(['check', '--output=json', IMG], { cwd: q.dir }).stdout) as Record<string, number>;
        expect(r.options.preallocation).toBe('metadata');
        expect(check['allocated-clusters']).toBe(check['total-clusters']);
      }
    });
  });
});
