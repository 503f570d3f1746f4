// Properties of classifyChange over generated (consistent) images and arbitrary desired specs:
// it never throws, gives at most one entry per property, and never plans in place what cannot be
// done in place: create-only properties, enabling data-file-raw, a backing file on a raw image.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { classifyChange } from '../../provider/rules/change';
import type { Change, DesiredSpec, ImageFacts, WorldFacts } from '../../provider/rules/types';
import { MiB, show } from './support';

const SIZES = [0n, 512n, 1000n, 65536n, MiB - 512n, MiB, MiB + 1n, 2n * MiB, 1n << 30n];

/** Images as qemu-img can make them: v2 has none of the v3 features, raw needs a data file and no backing. */
const imageState: fc.Arbitrary<ImageFacts> = fc
  .record({
    v3: fc.boolean(),
    virtualSize: fc.constantFrom(...SIZES.filter((s) => s % 512n === 0n)),
    clusterSize: fc.constantFrom(512, 4096, 65536, 2 * 1024 * 1024),
    refcountBits: fc.constantFrom(1, 8, 16, 64),
    lazyRefcounts: fc.boolean(),
    extendedL2: fc.boolean(),
    zstd: fc.boolean(),
    hasDataFile: fc.boolean(),
    dataFileRaw: fc.boolean(),
    backing: fc.option(fc.constantFrom('base.qcow2', 'other.qcow2'), { nil: undefined }),
    backingFormat: fc.option(fc.constantFrom('qcow2', 'raw'), { nil: undefined }),
    dirty: fc.boolean(),
    snapshots: fc.nat(2),
    bitmaps: fc.nat(2),
    hasCompressedClusters: fc.option(fc.boolean(), { nil: undefined }),
    preallocation: fc.option(fc.constantFrom('off', 'metadata', 'falloc', 'full' as const), { nil: undefined }),
  })
  .map((g): ImageFacts => {
    const v3 = g.v3;
    const hasDataFile = v3 && g.hasDataFile;
    const dataFileRaw = hasDataFile && g.dataFileRaw;
    const s: ImageFacts = {
      virtualSize: g.virtualSize,
      clusterSize: g.clusterSize,
      compat: v3 ? '1.1' : '0.10',
      refcountBits: v3 ? g.refcountBits : 16,
      lazyRefcounts: v3 && g.lazyRefcounts,
      extendedL2: v3 && g.extendedL2 && g.clusterSize >= 16384 && !dataFileRaw,
      compressionType: v3 && g.zstd ? 'zstd' : 'zlib',
      hasDataFile,
      dataFileRaw,
      dirty: g.dirty,
      corrupt: false,
      snapshots: g.snapshots,
      bitmaps: v3 ? Array.from({ length: g.bitmaps }, (_, i) => `b${i}`) : [],
      actualSize: 0n,
    };
    if (hasDataFile) s.dataFile = 'img.raw';
    if (!dataFileRaw && g.backing !== undefined) {
      s.backingFile = g.backing;
      if (g.backingFormat !== undefined) s.backingFormat = g.backingFormat;
    }
    if (g.hasCompressedClusters !== undefined) s.hasCompressedClusters = g.hasCompressedClusters;
    if (g.preallocation !== undefined) s.preallocation = dataFileRaw && g.preallocation === 'off' ? 'metadata' : g.preallocation;
    return s;
  });

/** Anything a program may declare, legal or not; every key may be absent. */
const desiredSpec: fc.Arbitrary<DesiredSpec> = fc.record(
  {
    size: fc.constantFrom(...SIZES),
    compat: fc.constantFrom('0.10', '1.1' as const),
    clusterSize: fc.constantFrom(512, 4096, 65536, 1000),
    refcountBits: fc.constantFrom(1, 3, 8, 16, 64, 128),
    lazyRefcounts: fc.boolean(),
    extendedL2: fc.boolean(),
    compressionType: fc.constantFrom('zlib', 'zstd' as const),
    preallocation: fc.constantFrom('off', 'metadata', 'falloc', 'full' as const),
    backingFile: fc.constantFrom('', 'base.qcow2', 'other.qcow2'),
    backingFormat: fc.constantFrom('qcow2', 'raw'),
    dataFile: fc.constantFrom('', 'img.raw', 'moved.raw'),
    dataFileRaw: fc.boolean(),
    allowShrink: fc.boolean(),
    allowReplace: fc.boolean(),
  },
  { requiredKeys: [] },
);

const worldFacts: fc.Arbitrary<WorldFacts> = fc.oneof(
  fc.constant({}),
  fc.record({
    desiredDataFile: fc.record({ exists: fc.boolean(), size: fc.constantFrom(...SIZES) }, { requiredKeys: ['exists'] }),
  }),
);

const CREATE_ONLY: Array<keyof DesiredSpec> = ['clusterSize', 'extendedL2', 'compressionType', 'preallocation'];

const RUNS = 500;

describe('classifyChange (property-based, fast-check)', () => {
  const run = (check: (current: ImageFacts, desired: DesiredSpec, changes: Change[]) => void): void => {
    fc.assert(
      fc.property(imageState, desiredSpec, worldFacts, (current, desired, facts) => {
        check(current, desired, classifyChange(current, desired, facts));
      }),
      { numRuns: RUNS, seed: Number(process.env.FC_SEED ?? 20240607) },
    );
  };

  it('never throws', () => {
    fc.assert(
      fc.property(imageState, desiredSpec, worldFacts, (current, desired, facts) => {
        expect(() => classifyChange(current, desired, facts)).not.toThrow();
      }),
      { numRuns: RUNS },
    );
  });

  it('returns at most one entry per property', () => {
    run((_c, _d, changes) => {
      const props = changes.map((x) => x.property);
      expect(new Set(props).size, show(changes)).toBe(props.length);
    });
  });

  it('never plans an in-place change of clusterSize, extendedL2, compressionType or preallocation', () => {
    run((_c, _d, changes) => {
      for (const x of changes) if (CREATE_ONLY.includes(x.property)) expect(x.action, show(x)).not.toBe('amend');
    });
  });

  it('never plans an amend that enables dataFileRaw', () => {
    run((current, desired, changes) => {
      for (const x of changes) {
        if (x.property === 'dataFileRaw' && x.action === 'amend') {
          expect(x.to, show(x)).not.toBe(true);
          expect(desired.dataFileRaw === true && !current.dataFileRaw, show(x)).toBe(false);
        }
      }
    });
  });

  it('never plans an amend that sets a backing file while the image is data-file-raw', () => {
    run((current, _d, changes) => {
      if (!current.dataFileRaw) return;
      for (const x of changes) {
        if (x.property === 'backingFile' && x.action === 'amend') expect(typeof x.to === 'string' && x.to !== '', show(x)).toBe(false);
      }
    });
  });

  it('plans a rebase only onto a named backing file (never onto "" or a format alone)', () => {
    run((_c, _d, changes) => {
      for (const x of changes) {
        if (x.operation === 'rebase' && x.action === 'amend') expect(typeof x.to === 'string' && x.to !== '', show(x)).toBe(true);
      }
    });
  });

  it('replaces only with allowReplace, and every refusal has a reason', () => {
    run((_c, desired, changes) => {
      for (const x of changes) {
        if (x.action === 'replace') expect(desired.allowReplace, show(x)).toBe(true);
        if (x.action === 'refuse') expect(x.reason.trim(), show(x)).not.toBe('');
      }
    });
  });
});
