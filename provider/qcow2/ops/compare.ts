// `compare`: qemu-img compare's walk over two guest views (img_compare): block status through
// each backing chain (bdrv_block_status_above), chunks of at most 2 MiB read only where a side
// holds data (a few chunks ahead, on libuv's thread pool), sector-granular comparison (an equal
// chunk in one comparison), and qemu-img's verdicts and words. Read-only.

import { GuestSource } from '../guest/source';
import { readGuestAsync } from '../guest/extents';

/** QEMU's BDRV_BLOCK_* flags, the ones block status above a chain can carry. */
export const DATA = 0x01;
export const ZERO = 0x02;
const OFFSET_VALID = 0x04;
const ALLOCATED = 0x10;
const EOF = 0x20;

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE. */
const CHUNK = 2 << 20;

export interface CompareOptions {
  /** -s: sizes and block status (allocation) must match too. */
  strict?: boolean;
  progress?: (done: number, total: number) => void;
}

/** What qemu-img compare decided: its exit status and what it printed. */
export interface CompareResult {
  /** 0 identical, 1 different. */
  status: 0 | 1;
  /** Lines qemu-img prints on stdout (without -q), in order. */
  lines: string[];
}

export interface Status { flags: number; length: number }

/** bdrv_block_status_above(bs, NULL, ...) with want_zero: the status through the chain. */
export function statusAbove(top: GuestSource, offset: number, bytes: number): Status {
  const own = (layer: GuestSource, at: number, n: number): Status => {
    const st = layer.blockStatus(at, Math.min(n, layer.size - at));
    let flags = (st.data ? DATA : 0) | (st.zero ? ZERO : 0) | (st.offset !== undefined ? OFFSET_VALID : 0) | (st.allocated ? ALLOCATED : 0);
    if (at + st.length === layer.size) flags |= EOF;
    return { flags, length: st.length };
  };
  let s = own(top, offset, bytes);
  if (s.flags & ALLOCATED) return s;
  const eof = s.flags & EOF ? offset + s.length : -1;
  let n = s.length;
  for (let p = top.backing; p; p = p.backing) {
    if (offset >= p.size) {
      // The layer is short: the zeros past its end count as allocated there.
      s = { flags: ZERO | ALLOCATED, length: n };
      break;
    }
    s = own(p, offset, n);
    if (s.flags & ALLOCATED) {
      s.flags &= ~EOF;
      break;
    }
    n = s.length;
  }
  if (offset + s.length === eof) s.flags |= EOF;
  return s;
}

/**
 * The length of the longest prefix of whole sectors (the last one may be short) for which
 * `same(from, to)` holds, from sector 0: a binary search, as `same` holds for a range exactly
 * when it holds for each of its sectors.
 */
function samePrefix(bytes: number, same: (from: number, to: number) => boolean): number {
  if (same(0, bytes)) return bytes;
  // lo: a prefix known to hold (in sectors); hi: one known not to.
  let lo = 0, hi = Math.ceil(bytes / SECTOR);
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (same(lo * SECTOR, mid * SECTOR)) lo = mid; else hi = mid;
  }
  return lo * SECTOR;
}

/**
 * compare_buffers: whether the first sector differs, and how far that stays so. The caller
 * needs the extent only when the first sector is equal (where the first difference is), so an
 * equal run is one comparison of the whole range, then a binary search when it is not.
 */
function compareBuffers(a: Buffer, b: Buffer, bytes: number): { differ: boolean; length: number } {
  const first = Math.min(bytes, SECTOR);
  if (a.compare(b, 0, first, 0, first) !== 0) return { differ: true, length: first };
  return { differ: false, length: samePrefix(bytes, (from, to) => a.compare(b, from, to, from, to) === 0) };
}

/** Zeros to compare guest data with, one chunk long. */
let zeros: Buffer | undefined;

/** find_nonzero: the first sector holding a non-zero byte, or -1. */
function findNonzero(buf: Buffer, n: number): number {
  const z = (zeros ??= Buffer.alloc(CHUNK));
  const len = samePrefix(n, (from, to) => buf.compare(z, 0, to - from, from, to) === 0);
  return len >= n ? -1 : len;
}

/**
 * One step of qemu-img compare's walk, decided from block status alone (no guest data read):
 * a range to skip (both sides read as zeros, or neither side has it allocated), to read on
 * both sides and compare, or to read on one side (the other reads as zeros) and check for
 * zeros; a line printed on the way; or the verdict that the images differ.
 */
export type CompareStep =
  | { kind: 'skip'; offset: number; length: number }
  | { kind: 'both'; offset: number; length: number }
  | { kind: 'one'; side: GuestSource; offset: number; length: number }
  | { kind: 'line'; text: string }
  | { kind: 'differ'; text: string };

/** img_compare's walk as steps (ranges of data ones at most CHUNK long), in guest order. */
export function* compareSteps(a: GuestSource, b: GuestSource, strict = false): Generator<CompareStep> {
  const size1 = a.size, size2 = b.size;
  const total = Math.min(size1, size2);
  const progressBase = Math.max(size1, size2);
  if (strict && size1 !== size2) {
    yield { kind: 'differ', text: 'Strict mode: Image size mismatch!' };
    return;
  }
  let offset = 0;
  while (offset < total) {
    const s1 = statusAbove(a, offset, size1 - offset);
    const s2 = statusAbove(b, offset, size2 - offset);
    let chunk = Math.min(s1.length, s2.length);
    if (strict && s1.flags !== s2.flags) {
      yield { kind: 'differ', text: `Strict mode: Offset ${offset} block status mismatch!` };
      return;
    }
    const alloc1 = (s1.flags & ALLOCATED) !== 0, alloc2 = (s2.flags & ALLOCATED) !== 0;
    if ((s1.flags & ZERO && s2.flags & ZERO) || (!alloc1 && !alloc2)) {
      yield { kind: 'skip', offset, length: chunk };
    } else {
      chunk = Math.min(chunk, CHUNK);
      yield alloc1 && alloc2 ? { kind: 'both', offset, length: chunk } : { kind: 'one', side: alloc1 ? a : b, offset, length: chunk };
    }
    offset += chunk;
  }
  if (size1 === size2) return;
  yield { kind: 'line', text: 'Warning: Image size mismatch!' };
  const over = size1 > size2 ? a : b;
  while (offset < progressBase) {
    const s = statusAbove(over, offset, progressBase - offset);
    let chunk = s.length;
    if (s.flags & ALLOCATED && !(s.flags & ZERO)) {
      chunk = Math.min(chunk, CHUNK);
      yield { kind: 'one', side: over, offset, length: chunk };
    } else {
      yield { kind: 'skip', offset, length: chunk };
    }
    offset += chunk;
  }
}

/** A data step with its buffers, being read. */
interface Pending { step: Extract<CompareStep, { kind: 'both' | 'one' }>; bufs: Buffer[]; ready: Promise<unknown> }

/** Data steps read ahead of the one being compared: their reads overlap the comparison. */
const AHEAD = 4;

/** The mismatch line of a data step whose buffers are read, if any. */
function verdict(p: Pending): string | undefined {
  const { step, bufs } = p;
  const n = step.length;
  if (step.kind === 'both') {
    const c = compareBuffers(bufs[0]!.subarray(0, n), bufs[1]!.subarray(0, n), n);
    return c.differ || c.length !== n ? `Content mismatch at offset ${step.offset + (c.differ ? 0 : c.length)}!` : undefined;
  }
  const idx = findNonzero(bufs[0]!.subarray(0, n), n); // check_empty_sectors
  return idx >= 0 ? `Content mismatch at offset ${step.offset + idx}!` : undefined;
}

/**
 * Compare two guest views as qemu-img compare does: compareSteps, each data step's reads issued
 * a few steps ahead (off this thread where the files allow, guest/extents.ts) while this thread
 * compares the one before. Reads past a difference are waited for, never used.
 */
export async function compareSources(a: GuestSource, b: GuestSource, opts: CompareOptions = {}): Promise<CompareResult> {
  const lines: string[] = [];
  const progressBase = Math.max(a.size, b.size);
  let done = 0;
  const free: Buffer[] = [];
  const take = () => free.pop() ?? Buffer.allocUnsafe(CHUNK);
  /** Steps in guest order: skips and lines wait behind the data steps before them. */
  const queue: Array<Exclude<CompareStep, { kind: 'both' | 'one' }> | Pending> = [];
  let dataAhead = 0;
  const steps = compareSteps(a, b, opts.strict);
  let more = true;
  const fill = () => {
    while (more && dataAhead < AHEAD) {
      const r = steps.next();
      if (r.done) { more = false; break; }
      const step = r.value;
      if (step.kind !== 'both' && step.kind !== 'one') { queue.push(step); continue; }
      const sides = step.kind === 'both' ? [a, b] : [step.side];
      const bufs = sides.map(take);
      const ready = Promise.all(sides.map((src, k) => readGuestAsync(src, bufs[k]!.subarray(0, step.length), step.offset)));
      ready.catch(() => undefined); // observed in order below
      queue.push({ step, bufs, ready });
      dataAhead++;
    }
  };
  try {
    for (;;) {
      fill();
      const next = queue.shift();
      if (next === undefined) break;
      if ('step' in next) {
        dataAhead--;
        await next.ready;
        const line = verdict(next);
        free.push(...next.bufs);
        if (line !== undefined) return { status: 1, lines: [...lines, line] };
        done += next.step.length;
      } else if (next.kind === 'skip') {
        done += next.length;
      } else if (next.kind === 'line') {
        lines.push(next.text);
        continue;
      } else {
        return { status: 1, lines: [...lines, next.text] };
      }
      opts.progress?.(done, progressBase);
    }
  } finally {
    await Promise.allSettled(queue.map((q) => ('step' in q ? q.ready : undefined)));
  }
  lines.push('Images are identical.');
  return { status: 0, lines };
}
