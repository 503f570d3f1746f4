// `compare`: qemu-img compare's walk over two guest views (img_compare): block status through
// each backing chain (bdrv_block_status_above), chunks of at most 2 MiB read only where a side
// holds data, sector-granular comparison, and qemu-img's verdicts and words. Read-only.

import { GuestSource } from '../guest/source';

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

/** compare_buffers: whether the first sector differs, and how far that stays so. */
function compareBuffers(a: Buffer, b: Buffer, bytes: number): { differ: boolean; length: number } {
  let i = Math.min(bytes, SECTOR);
  const differ = a.compare(b, 0, i, 0, i) !== 0;
  while (i < bytes) {
    const len = Math.min(bytes - i, SECTOR);
    if ((a.compare(b, i, i + len, i, i + len) !== 0) !== differ) break;
    i += len;
  }
  return { differ, length: i };
}

/** find_nonzero: the first sector holding a non-zero byte, or -1. */
function findNonzero(buf: Buffer, n: number): number {
  for (let i = 0; i < n; i += SECTOR) {
    const end = Math.min(n, i + SECTOR);
    for (let k = i; k < end; k++) if (buf[k] !== 0) return i;
  }
  return -1;
}

/** Compare two guest views as qemu-img compare does. */
export function compareSources(a: GuestSource, b: GuestSource, opts: CompareOptions = {}): CompareResult {
  const lines: string[] = [];
  const differ = (line: string): CompareResult => ({ status: 1, lines: [...lines, line] });
  const size1 = a.size, size2 = b.size;
  const total = Math.min(size1, size2);
  const progressBase = Math.max(size1, size2);
  let done = 0;
  const advance = (n: number) => {
    done += n;
    opts.progress?.(done, progressBase);
  };
  if (opts.strict && size1 !== size2) return differ('Strict mode: Image size mismatch!');
  const buf1 = Buffer.allocUnsafe(CHUNK);
  const buf2 = Buffer.allocUnsafe(CHUNK);
  /** check_empty_sectors on `src`; a line when it holds data. */
  const nonEmpty = (src: GuestSource, offset: number, n: number): string | undefined => {
    const view = buf1.subarray(0, n);
    src.readInto(view, offset);
    const idx = findNonzero(view, n);
    return idx >= 0 ? `Content mismatch at offset ${offset + idx}!` : undefined;
  };
  let offset = 0;
  while (offset < total) {
    const s1 = statusAbove(a, offset, size1 - offset);
    const s2 = statusAbove(b, offset, size2 - offset);
    let chunk = Math.min(s1.length, s2.length);
    if (opts.strict && s1.flags !== s2.flags) return differ(`Strict mode: Offset ${offset} block status mismatch!`);
    const alloc1 = (s1.flags & ALLOCATED) !== 0, alloc2 = (s2.flags & ALLOCATED) !== 0;
    if (s1.flags & ZERO && s2.flags & ZERO) {
      // both read as zeros
    } else if (alloc1 === alloc2) {
      if (alloc1) {
        chunk = Math.min(chunk, CHUNK);
        const v1 = buf1.subarray(0, chunk), v2 = buf2.subarray(0, chunk);
        a.readInto(v1, offset);
        b.readInto(v2, offset);
        const c = compareBuffers(v1, v2, chunk);
        if (c.differ || c.length !== chunk) return differ(`Content mismatch at offset ${offset + (c.differ ? 0 : c.length)}!`);
      }
    } else {
      chunk = Math.min(chunk, CHUNK);
      const line = nonEmpty(alloc1 ? a : b, offset, chunk);
      if (line) return differ(line);
    }
    offset += chunk;
    advance(chunk);
  }
  if (size1 !== size2) {
    lines.push('Warning: Image size mismatch!');
    const over = size1 > size2 ? a : b;
    while (offset < progressBase) {
      const s = statusAbove(over, offset, progressBase - offset);
      let chunk = s.length;
      if (s.flags & ALLOCATED && !(s.flags & ZERO)) {
        chunk = Math.min(chunk, CHUNK);
        const line = nonEmpty(over, offset, chunk);
        if (line) return differ(line);
      }
      offset += chunk;
      advance(chunk);
    }
  }
  lines.push('Images are identical.');
  return { status: 0, lines };
}
