// A guest range as the I/O that produces it, through the whole backing chain, with no guest
// data read: zeros (holes, zero clusters, unallocated with nothing below), host-contiguous runs
// of data in some layer's file (one pread each, however many clusters and L2 tables they span),
// and compressed clusters (where they are stored). A bulk reader (import) plans a window with
// this, then does the I/O as it likes: in parallel, batched, on other threads.

import { type BlockFile, readIntoAsync } from '../io/blockfile';
import { parseCompressedEntry } from '../spec/l2';
import { safeOffset } from '../meta/image';
import { Qcow2Image } from './qcow2';
import { RawSource } from './sources/raw';
import { ConcatSource } from './sources/concat';
import type { GuestSource } from './source';

export type Extent =
  /** Reads as zeros. */
  | { kind: 'zero'; offset: number; length: number }
  /** `length` guest bytes stored at `host` in `file`. */
  | { kind: 'data'; offset: number; length: number; file: BlockFile; host: number }
  /**
   * Part of one compressed cluster: its stream is `size` bytes at `host` in `file` (sector
   * padding included, possibly past the end of the file); the guest bytes are [within,
   * within + length) of the decoded cluster.
   */
  | { kind: 'compressed'; offset: number; length: number; file: BlockFile; host: number; size: number; within: number; clusterSize: number; compressionType: number; entry: bigint }
  /** Anything else: read through the source itself (readInto). */
  | { kind: 'read'; offset: number; length: number; source: GuestSource };

function push(out: Extent[], e: Extent): void {
  const last = out[out.length - 1];
  if (last !== undefined && last.kind === 'zero' && e.kind === 'zero' && last.offset + last.length === e.offset) last.length += e.length;
  else out.push(e);
}

/** Append to `out` the extents of [offset, offset + length) of `src`'s guest view. */
export function guestExtents(src: GuestSource, offset: number, length: number, out: Extent[] = []): Extent[] {
  const end = offset + length;
  const inside = Math.min(end, src.size);
  if (src instanceof Qcow2Image) {
    for (let p = offset; p < inside;) {
      const m = src.lookup(p, inside - p);
      switch (m.kind) {
        case 'allocated': {
          const file = src.dataFile ?? src.file;
          // A metadata-preallocated image's clusters may be holes in its file: those read as
          // zeros, and are not read (QEMU's BDRV_BLOCK_RECURSE).
          const st = src.blockStatus(p, m.length);
          const n = Math.min(m.length, st.length);
          push(out, st.zero ? { kind: 'zero', offset: p, length: n } : { kind: 'data', offset: p, length: n, file, host: m.host! });
          p += n;
          continue;
        }
        case 'compressed': {
          const r = parseCompressedEntry(m.entry!, src.g.clusterBits);
          out.push({
            kind: 'compressed', offset: p, length: m.length, file: src.file, host: safeOffset(r.offset), size: r.size, within: m.within!,
            clusterSize: src.cs, compressionType: src.header.compressionType, entry: m.entry!,
          });
          break;
        }
        case 'backing':
          guestExtents(src.backing!, p, m.length, out);
          break;
        default:
          push(out, { kind: 'zero', offset: p, length: m.length });
      }
      p += m.length;
    }
  } else if (src instanceof RawSource) {
    for (let p = offset; p < inside;) {
      const st = src.blockStatus(p, inside - p);
      push(out, st.data ? { kind: 'data', offset: p, length: st.length, file: src.file, host: p } : { kind: 'zero', offset: p, length: st.length });
      p += st.length;
    }
  } else if (src instanceof ConcatSource) {
    // Each part's extents, moved to where the part starts.
    for (let p = offset; p < inside;) {
      const part = src.partAt(p);
      const n = Math.min(inside, part.start + part.span) - p;
      for (const e of guestExtents(part.source, p - part.start, n)) {
        push(out, e.kind === 'read' ? { ...e, offset: e.offset + part.start, source: src } : { ...e, offset: e.offset + part.start });
      }
      p += n;
    }
  } else if (inside > offset) {
    out.push({ kind: 'read', offset, length: inside - offset, source: src });
  }
  if (end > inside) push(out, { kind: 'zero', offset: Math.max(offset, inside), length: end - Math.max(offset, inside) });
  return out;
}

/**
 * Guest bytes of `src` into `target` from `offset`: every run of data in a file read at once
 * off this thread where the file can (readIntoAsync), zeros filled, anything else (compressed
 * clusters, other sources) read here through the source.
 */
export async function readGuestAsync(src: GuestSource, target: Uint8Array, offset: number): Promise<void> {
  const reads: Array<Promise<void>> = [];
  for (const e of guestExtents(src, offset, target.length)) {
    const at = target.subarray(e.offset - offset, e.offset - offset + e.length);
    if (e.kind === 'zero') {
      at.fill(0);
    } else if (e.kind === 'data') {
      const r = readIntoAsync(e.file, at, e.host);
      if (r) reads.push(r);
    } else {
      src.readInto(at, e.offset);
    }
  }
  await Promise.all(reads);
}
