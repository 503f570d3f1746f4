// `commit`: qemu-img commit's active commit (block/mirror.c with a base): every guest range
// allocated above the base, at the mirror's granularity, is copied into the base (data read
// through the whole chain; ranges that read as zeros become zero writes), then the top image
// is emptied (qcow2_make_empty) unless asked to keep it. The base is written through the
// guest write path (guest/qcow2.ts), whose own commit order keeps it consistent: its new
// clusters placed there (placeNewClusters) and their bytes written here, off the calling
// thread, before any metadata that maps them; the emptying is written in meta/ordered.ts's order.

import { BlockFile, writeAsync } from '../io/blockfile';
import * as C from '../spec/constants';
import { encodeHeader } from '../spec/header';
import { encodeRefblock } from '../spec/refcount';
import { clusterTypeOf, entryOf, hostClusterOf, hostOffsetOf, parseCompressedEntry } from '../spec/l2';
import { encodeL1Entry } from '../spec/l1';
import { Image, safeOffset } from '../meta/image';
import { TableRefcounts } from '../meta/refcount';
import { TableCache } from '../meta/tables';
import { ReferenceTable, writeOrdered } from '../meta/ordered';
import { GuestSource, ProgressFn } from '../guest/source';
import { DATA, ZERO, statusAbove } from './compare';

/** Where commit writes: the base image (qcow2 through its write path, or a raw file). */
export interface CommitTarget {
  /** Cluster size (raw: none, 0), for the mirror's granularity and alignment. */
  readonly clusterSize: number;
  write(offset: number, data: Uint8Array): void;
  /**
   * Where the bytes of [offset, offset + length) go when the caller may write them itself, off
   * this thread (the metadata that maps them changed as write would change it: new clusters of
   * a qcow2 base, a raw file's own range); undefined when write must place them.
   */
  place(offset: number, length: number): { file: BlockFile; host: number } | undefined;
  /** Write zeroes, unmapping where the format can (BDRV_REQ_MAY_UNMAP). */
  writeZeroes(offset: number, length: number): void;
  discard(offset: number, length: number): void;
  /** Whether checkpoint would write metadata now: the data placed before must be written first. */
  checkpointDue(): boolean;
  /** Bound the memory a long copy holds (commit metadata now and then). */
  checkpoint(): void;
}

/** Copies in flight: buffers of MAX_IO + G each, as the mirror keeps several requests going. */
const IN_FLIGHT = 8;

/** mirror's max_io_bytes with the default buffer (16 MiB over 16 requests in flight). */
const MAX_IO = 1 << 20;

/** bdrv_get_default_bitmap_granularity: the target's cluster size within [4 KiB, 64 KiB]. */
function granularityOf(target: CommitTarget): number {
  return target.clusterSize > 0 ? Math.min(65536, Math.max(4096, target.clusterSize)) : 65536;
}

/**
 * Copy into `target` every range of `top` allocated in `above` (the layers from the top down
 * to the one just above the base), as the commit job's mirror does. Returns the bytes copied.
 * Ranges are read here; their writes, where the target places them (CommitTarget.place), run
 * off this thread, several at once, while the next ranges are read and placed. Metadata is
 * written (checkpoint, and the caller's close) only once the data placed before it is written;
 * on a failure the writes in flight settle before it is thrown.
 */
export async function commitInto(top: GuestSource, above: readonly GuestSource[], target: CommitTarget, progress?: ProgressFn): Promise<number> {
  const size = top.size;
  const G = granularityOf(target);
  const chunks = Math.ceil(size / G);
  // The dirty bitmap (mirror_dirty_init): chunks with anything allocated above the base.
  const dirty = new Uint8Array(chunks);
  for (const layer of above) {
    for (let p = 0; p < Math.min(size, layer.size);) {
      const st = layer.blockStatus(p, Math.min(size, layer.size) - p);
      if (st.allocated) dirty.fill(1, Math.floor(p / G), Math.ceil((p + st.length) / G));
      p += st.length;
    }
  }
  const total = dirtyBytes(dirty, G, size);
  let done = 0;
  progress?.(0, total);
  const free: Buffer[] = [];
  let buffers = 0;
  const writing = new Set<Promise<void>>();
  let failure: { e: unknown } | undefined;
  const settle = async () => {
    while (writing.size) await Promise.allSettled([...writing]);
    if (failure) throw failure.e;
  };
  const acquire = async (): Promise<Buffer> => {
    while (free.length === 0 && buffers >= IN_FLIGHT) await Promise.race(writing);
    if (failure) throw failure.e;
    if (free.length) return free.pop()!;
    buffers++;
    return Buffer.allocUnsafe(MAX_IO + G);
  };
  const tcs = target.clusterSize || 512;
  try {
    // Runs of dirty chunks found natively (indexOf): a JS loop over every chunk would make this
    // long function hot, and V8 would compile all of it (on-stack replacement) to scan a bitmap.
    for (let c = dirty.indexOf(1); c >= 0; c = dirty.indexOf(1, c)) {
      let e = dirty.indexOf(0, c);
      if (e < 0) e = chunks;
      const end = Math.min(size, e * G);
      for (let p = c * G; p < end;) {
        const st = statusAbove(top, p, end - p);
        let io = st.length;
        if (st.flags & DATA) io = Math.min(io, MAX_IO);
        io -= io % G;
        let method: 'copy' | 'zero' | 'discard' = 'copy';
        if (io < G) {
          io = G;
        } else if (!(st.flags & DATA) && p % tcs === 0 && io % tcs === 0) {
          method = st.flags & ZERO ? 'zero' : 'discard';
        }
        io = Math.min(io, size - p);
        if (method === 'copy') {
          const buf = await acquire();
          const view = buf.subarray(0, io);
          top.readInto(view, p);
          const at = target.place(p, io);
          if (at === undefined) {
            target.write(p, view);
            free.push(buf);
          } else {
            const w: Promise<void> = Promise.resolve(writeAsync(at.file, at.host, view))
              .catch((err: unknown) => { failure ??= { e: err }; })
              .finally(() => { writing.delete(w); free.push(buf); });
            writing.add(w);
          }
        } else if (method === 'zero') {
          target.writeZeroes(p, io);
        } else {
          target.discard(p, io);
        }
        p += io;
        done += io;
        if (target.checkpointDue()) await settle();
        target.checkpoint();
        progress?.(Math.min(done, total), total);
      }
      c = e;
    }
  } finally {
    // Nothing writes after this returns, or throws.
    await Promise.allSettled([...writing]);
  }
  await settle();
  return total;
}

/** Bytes of the dirty chunks (of G bytes; the last one ends with the image). */
function dirtyBytes(dirty: Uint8Array, G: number, size: number): number {
  let n = 0;
  for (let c = dirty.indexOf(1); c >= 0; c = dirty.indexOf(1, c + 1)) n += Math.min(G, size - c * G);
  return n;
}

/** Layers of a chain from `top` down to (not including) `base`. */
export function layersAbove(top: GuestSource, base: GuestSource): GuestSource[] {
  const out: GuestSource[] = [];
  for (let s: GuestSource | null = top; s && s !== base; s = s.backing) out.push(s);
  return out;
}

export interface EmptyOptions {
  /** Punch a byte range of the image file (QEMU discards the clusters it frees). */
  punch?: (offset: number, length: number) => void;
  /** Punch a byte range of the external data file. */
  punchDataFile?: (offset: number, length: number) => void;
}

/**
 * qcow2_make_empty: a v3 image without snapshots, bitmaps or data file becomes a freshly
 * created one (header, refcount table, one refcount block, an empty L1 table; the file
 * truncated after them), others have every cluster discarded (entries 0, reading through to
 * the backing file). Returns which way it went.
 */
export function emptyImage(file: BlockFile, img: Image, opts: EmptyOptions = {}): 'reset' | 'discarded' {
  const h = img.header;
  const g = img.geometry;
  const cs = g.clusterSize;
  const l1Clusters = Math.ceil(h.l1Size / (cs / 8));
  const eligible = h.version >= 3 && h.nbSnapshots === 0 && !(h.bitmaps && h.bitmaps.nbBitmaps > 0) &&
    3 + l1Clusters <= g.refblockEntries && !img.hasDataFile;
  // QEMU rebuilds the layout in place relying on the dirty bit; this writes the same result in
  // a crash-safe order, which needs the layout create makes (table, block, L1 in clusters 1-3).
  const reftable = img.readReftable();
  const standard = h.refcountTableOffset === BigInt(cs) && h.refcountTableClusters === 1 && reftable[0] === BigInt(2 * cs) &&
    (h.l1Size === 0 || h.l1TableOffset === BigInt(3 * cs));
  if (eligible && standard) {
    resetImage(file, img, l1Clusters);
    return 'reset';
  }
  discardAll(file, img, opts);
  return 'discarded';
}

/** make_completely_empty's result, each step removing references before the refcounts drop. */
function resetImage(file: BlockFile, img: Image, l1Clusters: number): void {
  const g = img.geometry;
  const cs = g.clusterSize;
  const used = 3 + l1Clusters;
  // 1. No references: the L1 table zeroed.
  if (l1Clusters) writeOrdered(file, { tables: [{ offset: 3 * cs, data: new Uint8Array(l1Clusters * cs), step: 8 }] });
  // 2. One refcount block: the table's other entries go (their blocks leak until step 3).
  const table = Buffer.alloc(cs);
  table.writeBigUInt64BE(BigInt(2 * cs), 0);
  file.write(cs, table);
  file.flush();
  // 3. The refcounts: header, table, block, L1.
  const counts = new Uint32Array(used).fill(1);
  file.write(2 * cs, encodeRefblock(cs, g.refcountOrder, counts, 0, g.refblockEntries));
  file.flush();
  file.truncate(used * cs);
  // 4. The header as qcow2_update_header writes it (QEMU marks the image dirty, then clean).
  const h = img.header;
  const header = encodeHeader({ ...h, incompatibleFeatures: h.incompatibleFeatures & ~C.QCOW2_INCOMPAT_DIRTY }, cs);
  if (!Buffer.from(header).equals(file.read(0, cs))) file.write(0, header);
  file.flush();
}

/**
 * qcow2_cluster_discard(0, size, full_discard) over the whole image: each L2 table taken for
 * writing (allocated where there is none, copied where shared, as get_cluster_table does),
 * every entry 0, the clusters freed. Frees are deferred (nothing freed is reused by this
 * change's own allocations, so the old tables stay intact until the new ones are on disk).
 */
function discardAll(file: BlockFile, img: Image, opts: EmptyOptions): void {
  const g = img.geometry;
  const cs = g.clusterSize;
  const fmt = { dataFile: img.hasDataFile, extendedL2: g.extendedL2 };
  const rc = new TableRefcounts(g, 'deferred', new TableCache(file, cs), BigUint64Array.from(img.readReftable()),
    safeOffset(img.header.refcountTableOffset));
  rc.zeroed = [];
  const l2 = new TableCache(file, cs);
  const l1 = BigUint64Array.from(img.readL1());
  const l1Old = BigUint64Array.from(l1);
  const fresh: Array<{ offset: number; data: Uint8Array }> = [];
  const tables: ReferenceTable[] = [];
  const clusters = g.clustersFor(img.header.size);
  const dataRanges: Array<[number, number]> = [];
  for (let i = 0; i * g.l2Entries < clusters; i++) {
    const e = l1[i]!;
    const old = safeOffset(e & C.L1E_OFFSET_MASK);
    let offset = old;
    let t;
    if (old === 0 || (e & C.QCOW_OFLAG_COPIED) === 0n) {
      // l2_allocate: a new table (a copy of a shared one), the old one's reference dropped.
      offset = rc.alloc(1) * cs;
      t = old === 0 ? l2.create(offset) : l2.copy(old, offset);
      if (old !== 0) rc.free(old / cs);
      l1[i] = encodeL1Entry(BigInt(offset), true);
    } else {
      t = l2.get(old);
    }
    const v = t.view;
    const n = Math.min(g.l2Entries, clusters - i * g.l2Entries);
    let changed = false;
    for (let k = 0; k < n; k++) {
      const at = k * g.l2EntrySize;
      const hi = v.getUint32(at), lo = v.getUint32(at + 4);
      const bitmap = g.extendedL2 ? v.getBigUint64(at + 8) : 0n;
      if (hi === 0 && lo === 0 && bitmap === 0n) continue;
      v.setUint32(at, 0);
      v.setUint32(at + 4, 0);
      if (g.extendedL2) v.setBigUint64(at + 8, 0n);
      changed = true;
      // qcow2_free_any_cluster
      const type = clusterTypeOf(hi, lo, fmt);
      if (fmt.dataFile) {
        if (type === 'normal' || type === 'zero-alloc') dataRanges.push([hostOffsetOf(hi, lo), cs]);
      } else if (type === 'compressed') {
        const r = parseCompressedEntry(entryOf(hi, lo), g.clusterBits);
        rc.free(r.firstCluster, r.clusters);
      } else if (type === 'normal' || type === 'zero-alloc') {
        rc.free(hostClusterOf(hi, lo, g.clusterBits));
      }
    }
    if (offset !== old) fresh.push({ offset, data: Buffer.from(t.buf) });
    else if (changed) tables.push({ offset, data: Buffer.from(t.buf), step: g.l2EntrySize });
    if (offset !== old) l2.forget(offset);
  }
  rc.applyFrees();
  const l1Bytes = Buffer.alloc(l1.length * 8);
  l1.forEach((e, i) => l1Bytes.writeBigUInt64BE(e, i * 8));
  if (!l1.every((e, i) => e === l1Old[i])) tables.push({ offset: safeOffset(img.header.l1TableOffset), data: l1Bytes, step: 8 });
  const change: Parameters<typeof writeOrdered>[1] = { fresh, tables, refcounts: rc };
  if (opts.punch) change.discard = { clusters: rc.zeroed, punch: opts.punch };
  writeOrdered(file, change);
  if (opts.punchDataFile) for (const [o, n] of dataRanges) opts.punchDataFile(o, n);
}
