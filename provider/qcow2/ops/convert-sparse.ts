// qemu-img convert's request loop and its -S (minimum sparse size), as qemu-img 7.2 runs them
// (qemu-img.c: convert_iteration_sectors, convert_co_write, is_allocated_sectors[_min]):
//
// - the source is walked by block status through its chain (one source file at a time when
//   there are several); each status run is cut to the source's cluster (its request alignment),
//   a data run into requests of at most the copy buffer (2 MiB, or the target's cluster when
//   larger); with -c a request is whole target clusters, and a run shorter than one is data;
//   with -S 0 zero runs are cut into buffers too, as they are written;
// - a data request is written as qemu-img writes it: with -S 0 all of it; otherwise its sectors
//   are split into runs of data and runs of zeros (sparseRuns): a zero run is left out only when
//   it is at least -S long (shorter ones are written with the data around them), and the ends
//   of the runs are moved to multiples of -S (rounded down to a power of two) the way
//   is_allocated_sectors moves them.
//
// The copies decide what to do with each run (ops/convert.ts): a new image leaves zeros out,
// an existing one (-n) or an overlay (-B) has them written as zeros.

import { isZeroBuffer } from '../io/sparse';
import { GuestSource, chainZero } from '../guest/source';
import { ConcatSource, sourceAlignment } from '../guest/sources/concat';

/** qemu-img convert's default -S: 4 KiB of zeros are needed to leave a hole. */
export const DEFAULT_SPARSE = 4096;
/** qemu-img convert's IO_BUF_SIZE and MAX_BUF_SECTORS (in bytes). */
export const IO_BUF = 2 << 20;
export const MAX_BUF = 16 << 20;

/**
 * One request of qemu-img convert's copy loop: `n` bytes at guest offset `pos`, which are data
 * to read, zeros, or (-B) left to the target's backing file.
 */
export interface ConvertRequest { pos: number; n: number; kind: 'data' | 'zero' | 'backing' }

/** The copy buffer of qemu-img convert for a target of cluster size `cs`. */
export function copyBuffer(cs: number): number {
  return Math.min(MAX_BUF, Math.max(IO_BUF, cs));
}

export interface RequestOptions {
  /** -c: whole target clusters. */
  compressed?: boolean;
  /** -S in bytes (default 4096). */
  sparse?: number;
  /**
   * -B (target_has_backing): the status of the source's top layer alone; what it does not hold
   * is left to the target's backing file, and so are zeros from `backingSize` (the target's
   * backing file's size, when known) on.
   */
  topLayer?: boolean;
  backingSize?: number;
}

/**
 * The requests qemu-img convert makes over `size` bytes of `src` for a target of cluster size
 * `cs` (512 for raw), as RequestOptions say.
 */
export function convertRequests(src: GuestSource, size: number, cs: number, opts: RequestOptions = {}): ConvertRequest[] {
  const buf = copyBuffer(cs);
  const full = opts.sparse === 0;
  const out: ConvertRequest[] = [];
  let pos = 0, statusEnd = 0;
  let kind: ConvertRequest['kind'] = 'zero';
  while (pos < size) {
    let n = size - pos;
    const postBacking = opts.backingSize !== undefined && pos >= opts.backingSize;
    // Requests are split where the target's backing file ends (zeros are handled apart past it).
    if (opts.backingSize !== undefined && !postBacking) n = Math.min(n, opts.backingSize - pos);
    if (statusEnd <= pos) {
      const st: { zero: boolean; data?: boolean; length: number } = opts.topLayer ? src.blockStatus(pos, Math.min(n, 1 << 30)) : chainZero(src, pos, Math.min(n, 1 << 30));
      kind = st.zero ? (postBacking ? 'backing' : 'zero') : st.data === true || !opts.topLayer ? 'data' : 'backing';
      // The next status query stays aligned to the source's cluster (src_alignment).
      const part = src instanceof ConcatSource ? src.partAt(pos) : undefined;
      const align = sourceAlignment(part?.source ?? src);
      const len = Math.min(st.length, n);
      const tail = (pos - (part?.start ?? 0) + len) % align;
      statusEnd = pos + (len > tail ? len - tail : len);
    }
    n = Math.min(n, statusEnd - pos);
    if (kind === 'data' || (full && kind === 'zero')) n = Math.min(n, buf);
    if (opts.compressed) {
      // Compressed clusters are written whole: a shorter run counts as data.
      if (n < cs) {
        n = Math.min(cs, size - pos);
        kind = 'data';
      } else {
        n -= n % cs;
      }
    }
    out.push({ pos, n, kind });
    pos += n;
  }
  return out;
}

/** A run of a data request: written as data, or zeros that -S lets the copy leave out. */
export interface SparseRun { start: number; length: number; data: boolean }

/**
 * How qemu-img convert writes the data request `view` (guest bytes at `at`, a sector multiple)
 * with -S `sparse` (bytes, > 0): runs of data to write and runs of zeros, in order, covering it.
 */
export function sparseRuns(view: Uint8Array, at: number, sparse: number): SparseRun[] {
  const min = Math.floor(sparse / 512);
  let alignment = 1;
  while (alignment * 2 <= min) alignment *= 2;
  const sectors = Math.ceil(view.length / 512);
  const zero = (i: number) => isZeroBuffer(view, i * 512, Math.min(view.length, i * 512 + 512));
  const first = Math.floor(at / 512);

  // is_allocated_sectors: the sectors from `i` (of `n`) in the state of sector i, the run's end aligned.
  const allocated = (i: number, n: number): { data: boolean; count: number } => {
    let isZero = zero(i);
    let k = 1;
    while (k < n && zero(i + k) === isZero) k++;
    if (k === n) return { data: !isZero, count: k };
    const tail = (first + i + k) % alignment;
    if (tail) {
      // A zero run inside the aligned block where data follows: written with the data.
      if (isZero && k <= tail) isZero = false;
      if (!isZero) k = Math.min(n, k + alignment - tail);
      else k -= tail;
    }
    return { data: !isZero, count: k };
  };

  // is_allocated_sectors_min: from data, zero runs shorter than -S are taken in.
  const allocatedMin = (i: number, n: number): { data: boolean; count: number } => {
    const least = Math.min(min, n);
    const r = allocated(i, n);
    if (!r.data) return r;
    let used = r.count, checked = r.count;
    for (let j = i + r.count, left = n - r.count; left > 0;) {
      const q = allocated(j, left);
      j += q.count;
      left -= q.count;
      checked += q.count;
      if (q.data) used = checked;
      else if (q.count >= least) break;
    }
    return { data: true, count: used };
  };

  const runs: SparseRun[] = [];
  for (let i = 0; i < sectors;) {
    const r = allocatedMin(i, sectors - i);
    const start = at + i * 512;
    const length = Math.min(view.length, (i + r.count) * 512) - i * 512;
    const last = runs[runs.length - 1];
    if (last !== undefined && last.data === r.data) last.length += length;
    else runs.push({ start, length, data: r.data });
    i += r.count;
  }
  return runs;
}
