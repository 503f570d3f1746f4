// Several guest views one after another, as qemu-img convert reads its source files when it is
// given more than one (`convert a b c dst`): each part starts where the one before it ends,
// rounded up to a 512-byte sector (QEMU counts every image in whole sectors), and the whole is
// their sum. Block status never crosses a part's end (QEMU asks one source at a time); reads do.

import { readNew } from '../../io/blockfile';
import { Qcow2Image } from '../qcow2';
import { BlockStatus, GuestSource, chainZero } from '../source';

/** One part of the concatenation: where it starts, and the sector-rounded length it takes. */
export interface ConcatPart { source: GuestSource; start: number; span: number }

export class ConcatSource implements GuestSource {
  readonly format = 'raw' as const;
  readonly backing = null;
  readonly size: number;
  readonly fileName: string;
  readonly parts: readonly ConcatPart[];

  constructor(sources: readonly GuestSource[]) {
    let start = 0;
    this.parts = sources.map((source) => {
      const span = Math.ceil(source.size / 512) * 512;
      const part = { source, start, span };
      start += span;
      return part;
    });
    this.size = start;
    this.fileName = sources[0]?.fileName ?? '';
  }

  /** The part holding guest offset `offset` (< size). */
  partAt(offset: number): ConcatPart {
    let lo = 0, hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.parts[mid]!.start <= offset) lo = mid; else hi = mid - 1;
    }
    return this.parts[lo]!;
  }

  /**
   * The request alignment of the part at `offset` in bytes (qemu-img's src_alignment: a qcow2
   * image's cluster, a raw file's sector).
   */
  alignmentAt(offset: number): number {
    return sourceAlignment(this.partAt(offset).source);
  }

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    let p = offset;
    const end = offset + target.length;
    while (p < end && p < this.size) {
      const part = this.partAt(p);
      const n = Math.min(end, part.start + part.span) - p;
      part.source.readInto(target.subarray(p - offset, p - offset + n), p - part.start);
      p += n;
    }
    if (p < end) target.fill(0, p - offset);
  }

  isZeroFast(offset: number, length: number): boolean {
    let p = offset;
    const end = Math.min(offset + length, this.size);
    while (p < end) {
      const part = this.partAt(p);
      const n = Math.min(end, part.start + part.span) - p;
      if (!part.source.isZeroFast(p - part.start, n)) return false;
      p += n;
    }
    return true;
  }

  /** The status of the whole chain of the part at `offset` (this view has no backing of its own), up to that part's end. */
  blockStatus(offset: number, length: number): BlockStatus {
    const part = this.partAt(offset);
    const at = offset - part.start;
    const n = Math.max(1, Math.min(length, part.span - at));
    const zero = chainZero(part.source, at, n);
    return { length: zero.length, data: !zero.zero, zero: zero.zero, allocated: true };
  }

  close(): void {
    for (const p of this.parts) p.source.close();
  }
}

/** qemu-img convert's source request alignment: a qcow2 image's cluster size, else a sector. */
export function sourceAlignment(src: GuestSource): number {
  return src instanceof Qcow2Image ? Math.max(512, src.cs) : 512;
}
