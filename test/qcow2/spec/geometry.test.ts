// Geometry (geometry.ts): cluster size, entries per table, coverage and index helpers for every
// cluster size, refcount width and L2 entry size, with 64-bit sizes kept exact.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { Qcow2Error } from '../../../provider/model/errors';
import { Geometry, assertClusterSize, maxVirtualSize } from '../../../provider/qcow2/spec/geometry';

const BITS = Array.from({ length: 13 }, (_, i) => i + 9);

describe('Geometry', () => {
  it.each(BITS)('cluster_bits_%i_derives_sizes_for_every_refcount_order', (bits) => {
    for (let order = 0; order <= 6; order++) {
      for (const extendedL2 of [false, true]) {
        const g = new Geometry(bits, order, extendedL2);
        const cs = 2 ** bits;
        expect(g.clusterSize).toBe(cs);
        expect(g.l2EntrySize).toBe(extendedL2 ? 16 : 8);
        expect(g.l2Entries).toBe(cs / (extendedL2 ? 16 : 8));
        expect(2 ** g.l2Bits).toBe(g.l2Entries);
        expect(g.refcountBits).toBe(2 ** order);
        expect(g.refblockEntries).toBe((cs * 8) / 2 ** order);
        expect(2 ** g.refblockBits).toBe(g.refblockEntries);
        expect(g.l2Coverage).toBe(BigInt(g.l2Entries) * BigInt(cs));
        expect(g.subclustersPerCluster).toBe(extendedL2 ? 32 : 1);
      }
    }
  });

  it('forClusterSize_matches_the_bits_constructor', () => {
    expect(Geometry.forClusterSize(65536)).toEqual(new Geometry(16, 4, false));
    expect(Geometry.forClusterSize(16384, 64, true)).toEqual(new Geometry(14, 6, true));
  });

  it('l1_entries_for_sizes_from_the_notes', () => {
    const g = Geometry.forClusterSize(65536);
    expect(g.l2Coverage).toBe(512n << 20n);
    expect(g.l1EntriesFor(0n)).toBe(0);
    expect(g.l1EntriesFor(512n)).toBe(1);
    expect(g.l1EntriesFor(1n << 30n)).toBe(2);
    expect(g.l1EntriesFor((1n << 30n) + 512n)).toBe(3);
    expect(g.l1EntriesFor(1n << 40n)).toBe(2048);
    expect(Geometry.forClusterSize(512).l1EntriesFor(1n << 30n)).toBe(32768);
    expect(Geometry.forClusterSize(2 << 20).l1EntriesFor(1n << 40n)).toBe(2);
    expect(Geometry.forClusterSize(65536, 16, true).l1EntriesFor(1n << 30n)).toBe(4);
  });

  it('l1_entries_are_the_ceiling_of_size_over_coverage_for_any_size', () => {
    fc.assert(fc.property(fc.integer({ min: 9, max: 21 }), fc.boolean(), fc.bigInt({ min: 0n, max: 1n << 62n }), (bits, e, size) => {
      const g = new Geometry(bits, 4, e && bits >= 14);
      const n = g.l1EntriesFor(size);
      expect(BigInt(n) * g.l2Coverage >= size).toBe(true);
      if (n > 0) expect(BigInt(n - 1) * g.l2Coverage < size).toBe(true);
    }), { seed: 11, numRuns: 500 });
  });

  it('max_virtual_size_is_32_MiB_of_l1_entries', () => {
    expect(maxVirtualSize(Geometry.forClusterSize(65536))).toBe(4194304n * (512n << 20n)); // 2 PiB
    expect(maxVirtualSize(Geometry.forClusterSize(512))).toBe(4194304n * 32768n);
    expect(maxVirtualSize(Geometry.forClusterSize(2 << 20))).toBe(4194304n * (1n << 39n)); // 2^61
  });

  it('index_helpers_split_a_guest_offset_as_qemu_does', () => {
    const g = Geometry.forClusterSize(65536);
    const off = (5n << 29n) + (17n << 16n) + 1234n;
    expect(g.l1Index(off)).toBe(5);
    expect(g.l2Index(off)).toBe(17);
    expect(g.l1Index((1n << 60n) + 1n)).toBe(2 ** 31); // no 32-bit truncation
    const x = Geometry.forClusterSize(65536, 16, true);
    expect(x.l2Index(4095n << 16n)).toBe(4095);
    expect(x.l1Index(4096n << 16n)).toBe(1);
  });

  it('refcount_indexes_for_host_clusters', () => {
    const g = Geometry.forClusterSize(65536, 16);
    expect(g.refblockEntries).toBe(32768);
    expect(g.reftableIndex(32767)).toBe(0);
    expect(g.reftableIndex(32768)).toBe(1);
    expect(g.refblockIndex(32769)).toBe(1);
    const one = Geometry.forClusterSize(512, 1);
    expect(one.refblockEntries).toBe(4096);
    const wide = Geometry.forClusterSize(512, 64);
    expect(wide.refblockEntries).toBe(64);
  });

  it('rounding_and_cluster_counts_stay_exact_beyond_2_pow_53', () => {
    const g = Geometry.forClusterSize(65536);
    expect(g.roundUp((1n << 60n) + 1n)).toBe((1n << 60n) + 65536n);
    expect(g.roundUp(0n)).toBe(0n);
    expect(g.clustersFor(1)).toBe(1);
    expect(g.clustersFor(65536)).toBe(1);
    expect(g.clustersFor(65537n)).toBe(2);
    expect(g.isClusterAligned((1n << 60n) + 512n)).toBe(false);
    expect(g.isClusterAligned(1n << 60n)).toBe(true);
  });
});

describe('assertClusterSize', () => {
  it.each([512, 1024, 65536, 2 << 20])('accepts_%i', (cs) => {
    expect(() => assertClusterSize(cs)).not.toThrow();
  });

  it.each([0, 256, 511, 513, 3000, 4 << 20, 65535])('refuses_%i_with_qemus_message', (cs) => {
    let err: unknown;
    try { assertClusterSize(cs); } catch (e) { err = e; }
    expect(Qcow2Error.isInstance(err)).toBe(true);
    expect((err as Qcow2Error).code).toBe('INVALID_OPTION');
    expect((err as Qcow2Error).message).toBe('Cluster size must be a power of two between 512 and 2048k');
    expect((err as Qcow2Error).property).toBe('cluster_size');
  });
});
