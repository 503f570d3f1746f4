// The refcount component (meta/refcount.ts): QEMU's first fit, refcount blocks placed as QEMU
// places them, refcount-table growth, the free policies, and amend's rebuild. create's byte
// identity with qemu-img (test/qcow2/ops/create-conformance.test.ts) covers the placement in
// detail; these check the invariants on their own.

import { describe, expect, it } from 'vitest';
import * as C from '../../../provider/qcow2/spec/constants';
import { Geometry } from '../../../provider/qcow2/spec/geometry';
import { getRefcount } from '../../../provider/qcow2/spec/refcount';
import { CountRefcounts, TableRefcounts } from '../../../provider/qcow2/meta/refcount';
import { TableCache } from '../../../provider/qcow2/meta/tables';

/** An empty image's refcounts as qcow2_co_create leaves them: header, table, one block, all counted. */
function fresh(g: Geometry, frees: 'immediate' | 'deferred'): TableRefcounts {
  const cs = g.clusterSize;
  const table = new BigUint64Array(cs / 8);
  table[0] = BigInt(2 * cs);
  const blocks = new TableCache(null, cs);
  blocks.create(2 * cs);
  const rc = new TableRefcounts(g, frees, blocks, table, cs);
  expect(rc.alloc(3)).toBe(0);
  return rc;
}

describe('TableRefcounts', () => {
  it('allocates_first_fit_from_the_free_cluster_index', () => {
    const rc = fresh(Geometry.forClusterSize(65536), 'immediate');
    expect(rc.alloc(1)).toBe(3);
    expect(rc.alloc(4)).toBe(4);
    rc.free(4, 2);
    expect(rc.get(4)).toBe(0);
    expect(rc.alloc(1)).toBe(4); // immediate: reused at once
  });

  it('deferred_frees_are_not_reused_before_they_are_applied', () => {
    const rc = fresh(Geometry.forClusterSize(65536), 'deferred');
    const a = rc.alloc(2);
    rc.free(a, 2);
    expect(rc.get(a)).toBe(1);
    expect(rc.pendingFrees).toBe(2);
    expect(rc.alloc(1)).toBe(a + 2);
    rc.applyFrees();
    expect([rc.get(a), rc.get(a + 1)]).toEqual([0, 0]);
    expect(rc.alloc(1)).toBe(a);
  });

  it('a_refcount_outside_the_width_is_refused', () => {
    const rc = fresh(Geometry.forClusterSize(65536, 1), 'immediate');
    expect(() => rc.free(5)).toThrow(/cluster 5 would become -1: out of range for 1-bit refcounts/);
    expect(rc.get(5)).toBe(0);
  });

  it('grows_blocks_and_table_and_every_cluster_is_counted_once', () => {
    // 512-byte clusters, 16-bit refcounts: a block covers 256 clusters, the one-cluster table
    // 64 blocks (16384 clusters). 20000 single allocations need new blocks and a new table.
    const g = Geometry.forClusterSize(512);
    const rc = fresh(g, 'immediate');
    const oldTable = rc.reftableOffset;
    const got = new Set<number>();
    for (let i = 0; i < 20000; i++) {
      const c = rc.alloc(1);
      expect(got.has(c)).toBe(false);
      got.add(c);
    }
    expect(rc.reftableOffset).not.toBe(oldTable);
    expect(rc.reftableMoved).toBe(true);
    // What holds a refcount: our clusters, header, the blocks and the current table.
    const meta = new Set<number>([0]);
    rc.reftable.forEach((e) => { if (e) meta.add(Number(e & C.REFT_OFFSET_MASK) / 512); });
    for (let c = 0; c * 512 < rc.reftable.length * 8; c++) meta.add(rc.reftableOffset / 512 + c);
    const end = Math.max(...got, ...meta) + 1;
    for (let ci = 0; ci < end; ci++) {
      const want = got.has(ci) || meta.has(ci) ? 1 : 0;
      if (rc.get(ci) !== want) throw new Error(`cluster ${ci}: refcount ${rc.get(ci)}, expected ${want}`);
    }
    // The blocks hold what get() says (they are what is written).
    const ti = 70;
    const block = rc.blocks.get(Number(rc.reftable[ti]! & C.REFT_OFFSET_MASK)).buf;
    expect(Number(getRefcount(block, 4, 5))).toBe(rc.get(ti * 256 + 5));
  });
});

describe('CountRefcounts', () => {
  it('rebuild_places_self_covering_structures_after_the_start', () => {
    const g = Geometry.forClusterSize(512); // 256 entries a block at 16 bits
    const counts = new Uint32Array(1000);
    counts.fill(1, 0, 900);
    counts[5] = 3;
    const rc = new CountRefcounts(g, 'deferred', counts);
    const r = rc.rebuild(1000, 6); // 64-bit refcounts: 64 entries a block
    const blocks = r.blocks.length;
    expect(blocks).toBe(Math.ceil((1000 + blocks + r.tableClusters) / 64));
    expect(r.blocks.map((b) => b.offset)).toEqual(Array.from({ length: blocks }, (_, i) => (1000 + i) * 512));
    expect(r.tableOffset).toBe((1000 + blocks) * 512);
    // The new structures count themselves; the old counts are kept.
    for (let k = 0; k < blocks + r.tableClusters; k++) expect(rc.get(1000 + k)).toBe(1);
    expect(getRefcount(r.blocks[0]!.data, 6, 5)).toBe(3n);
    expect(getRefcount(r.blocks[14]!.data, 6, 900 - 14 * 64)).toBe(0n);
    expect(new DataView(r.table.buffer).getBigUint64(8)).toBe(BigInt(1001 * 512));
  });

  it('rebuild_refuses_a_count_the_new_width_cannot_hold', () => {
    const counts = new Uint32Array(10);
    counts[3] = 2;
    expect(() => new CountRefcounts(Geometry.forClusterSize(512), 'deferred', counts).rebuild(10, 0)).toThrow(/does not fit 1 bits/);
  });
});
