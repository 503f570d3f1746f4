// The figures `qemu-img amend -p` prints, as QEMU 7.2 computes them. Our amend is one commit,
// so there is no work to measure as it goes: this is QEMU's own accounting of its steps, read
// from the image before the change (block/qcow2.c qcow2_amend_options and
// qcow2_amend_helper_cb; block/qcow2-refcount.c qcow2_change_refcount_order and
// walk_over_reftable; block/qcow2-cluster.c qcow2_expand_zero_clusters):
//
// - an upgrade to v3 reports 0, 1, 2 of 2;
// - a refcount width change walks the reftable until its allocations are stable, then once
//   more to write the new refblocks; each walk reports every reftable index and its end, of
//   max(walk + 2, 3) walks (the last walk: of walk + 1), so an extra walk moves the figure back;
// - a downgrade to v2 reports every L1 entry of the active table and the snapshots' tables;
// - the operations are weighed together as qcow2_amend_helper_cb projects them.
//
// The result is the list of percentages qemu-img's amend_status_cb passes to
// qemu_progress_print (float arithmetic, as in C).

import { Image } from '../meta/image';
import { storedRefcounts } from './amend';

/** What the amend changes, in header terms (only what reports progress). */
export interface AmendProgressChange {
  version?: 2 | 3;
  refcountOrder?: number;
}

type Report = (offset: number, work: number) => void;

/** The percentages qemu-img amend -p computes for `ch` on `img`, in order. */
export function amendProgressFigures(img: Image, ch: AmendProgressChange): number[] {
  const h = img.header;
  const upgrade = ch.version === 3 && h.version === 2;
  const downgrade = ch.version === 2 && h.version === 3;
  const refcount = ch.refcountOrder !== undefined && ch.refcountOrder !== h.refcountOrder;
  const ops: Array<(report: Report) => void> = [];
  if (upgrade) ops.push((r) => { r(0, 2); r(1, 2); r(2, 2); });
  if (refcount) ops.push((r) => refcountWalks(img, ch.refcountOrder!, r));
  if (downgrade) ops.push((r) => expandZeroClustersReports(img, r));
  const total = ops.length;
  const figures: number[] = [];
  // qcow2_amend_helper_cb
  let offsetCompleted = 0, operationsCompleted = 0, lastWork = 0;
  ops.forEach((op, index) => {
    let started = false;
    op((offset, work) => {
      if (!started) {
        started = true;
        if (index > 0 && operationsCompleted < index) {
          offsetCompleted += lastWork;
          operationsCompleted++;
        }
      }
      lastWork = work;
      const current = offsetCompleted + work;
      const projected = Math.trunc((current * (total - operationsCompleted - 1)) / (operationsCompleted + 1));
      // amend_status_cb: 100.f * offset / total_work_size
      figures.push(Math.fround(Math.fround(100 * (offsetCompleted + offset)) / Math.fround(current + projected)));
    });
  });
  return figures;
}

/** qcow2_expand_zero_clusters: one report per L1 entry, active table first, then each snapshot's. */
function expandZeroClustersReports(img: Image, report: Report): void {
  const total = img.header.l1Size + img.readSnapshots().reduce((n, s) => n + s.l1Size, 0);
  for (let visited = 1; visited <= total; visited++) report(visited, total);
}

/**
 * qcow2_change_refcount_order's reports: the allocation walks are simulated on the stored
 * refcounts with QEMU's allocator (first fit from free_cluster_index, which starts at 0 in a
 * freshly opened image), then the writing walk.
 */
function refcountWalks(img: Image, newOrder: number, report: Report): void {
  const g = img.geometry;
  const cs = g.clusterSize;
  const n = (img.header.refcountTableClusters * cs) / 8; // s->refcount_table_size
  const oldBlock = g.refblockEntries;
  const newBlock = (cs * 8) >> newOrder;
  const covered = n * oldBlock;
  // The stored refcounts inside the file, as a plain array: the simulation allocates past its end.
  const counts = Array.from(storedRefcounts(img, Math.ceil(img.file.size() / cs)));
  let freeIndex = 0;
  const isFree = (c: number, k: number) => {
    for (let i = c; i < c + k; i++) if ((counts[i] ?? 0) !== 0) return false;
    return true;
  };
  const alloc = (k: number): number => {
    let c = freeIndex;
    while (!isFree(c, k)) c++;
    for (let i = c; i < c + k; i++) counts[i] = 1;
    freeIndex = c + k;
    return c;
  };
  const free = (c: number, k: number) => {
    for (let i = c; i < c + k; i++) counts[i] = 0;
    if (c < freeIndex) freeIndex = c;
  };
  const chunkEmpty = (first: number) => {
    const end = Math.min(first + newBlock, covered, counts.length);
    for (let i = first; i < end; i++) if (counts[i] !== 0) return false;
    return true;
  };
  const reftable: number[] = [];
  let reftableAt = -1, reftableClusters = 0;
  let walks = 0;
  for (;;) {
    const total = Math.max(walks + 2, 3);
    let allocated = false;
    // The walk reports every reftable index; a new refblock's range is complete (alloc_refblock
    // runs) when the walk reads the next cluster, so each range sees the allocations of the
    // ranges before it: in order, they are simulated exactly whatever the reports between.
    for (let ri = 0; ri < n; ri++) report(walks * n + ri, total * n);
    for (let chunk = 0; chunk * newBlock < covered; chunk++) if (allocRefblock(chunk)) allocated = true;
    report((walks + 1) * n, total * n);
    walks++;
    if (!allocated) break;
    if (reftableAt >= 0) free(reftableAt, reftableClusters);
    reftableClusters = Math.ceil((reftable.length * 8) / cs);
    reftableAt = alloc(reftableClusters);
  }
  // The writing walk: walk index `walks`, of walks + 1.
  for (let ri = 0; ri < n; ri++) report(walks * n + ri, (walks + 1) * n);
  report((walks + 1) * n, (walks + 1) * n);

  function allocRefblock(chunk: number): boolean {
    if (chunkEmpty(chunk * newBlock)) return false;
    if (chunk >= reftable.length) {
      const size = Math.ceil((chunk + 1) / (cs / 8)) * (cs / 8);
      while (reftable.length < size) reftable.push(0);
    }
    if (reftable[chunk] !== 0) return false;
    reftable[chunk] = alloc(1) + 1;
    return true;
  }
}
