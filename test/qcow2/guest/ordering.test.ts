// The write-ordering invariant of provider/qcow2/guest/dataio.ts, checked on a write-recording
// BlockFile: refcount blocks (increments) before the L2 tables that use them, L2 before L1,
// header last; freed refcounts after the tables that dropped them; a flush between each step.
// Also an in-memory model test: random guest writes read back as a shadow buffer says.

import { describe, expect, it } from 'vitest';
import { BlockFile, MemoryBlockFile } from '../../../provider/qcow2/io/blockfile';
import { checkImage } from '../../../provider/qcow2/ops/check';
import * as C from '../../../provider/qcow2/spec/constants';
import { writePlan } from '../../../provider/qcow2/ops/create';
import { Qcow2Image } from '../../../provider/qcow2/guest/dataio';
import { Image } from '../../../provider/qcow2/meta/image';
import type { CreateOptions } from '../../../provider/model/options';
import { planFor } from '../../helpers/images';
import { prng } from './harness';

type Ev = { kind: 'write'; offset: number; length: number } | { kind: 'flush' };

class RecordingFile implements BlockFile {
  events: Ev[] = [];
  constructor(readonly inner: BlockFile) {}
  read(o: number, l: number) { return this.inner.read(o, l); }
  write(o: number, d: Uint8Array) { this.events.push({ kind: 'write', offset: o, length: d.length }); this.inner.write(o, d); }
  size() { return this.inner.size(); }
  truncate(n: number) { this.inner.truncate(n); }
  flush() { this.events.push({ kind: 'flush' }); this.inner.flush(); }
  close() { this.inner.close(); }
  allocatedSize() { return this.inner.allocatedSize(); }
}

function memImage(o: CreateOptions): MemoryBlockFile {
  const f = new MemoryBlockFile();
  writePlan(planFor(o), f);
  return f;
}

type Kind = 'header' | 'refblock' | 'reftable' | 'l1' | 'l2' | 'data';

/** Classify each recorded write by the structure it hit, using the final image's tables. */
function classify(file: BlockFile, events: Ev[]): Array<Kind | 'flush'> {
  const img = Image.open(file);
  const cs = img.geometry.clusterSize;
  const refblocks = new Set(img.readReftable().filter((e) => e !== 0n).map((e) => Number(e & C.REFT_OFFSET_MASK)));
  const l2s = new Set(img.readL1().filter((e) => e !== 0n).map((e) => Number(e & C.L1E_OFFSET_MASK)));
  const h = img.header;
  const rt = [Number(h.refcountTableOffset), Number(h.refcountTableOffset) + h.refcountTableClusters * cs];
  const l1 = [Number(h.l1TableOffset), Number(h.l1TableOffset) + h.l1Size * 8];
  return events.map((e) => {
    if (e.kind === 'flush') return 'flush';
    if (e.offset === 0) return 'header';
    if (refblocks.has(e.offset)) return 'refblock';
    if (e.offset >= rt[0]! && e.offset < rt[1]!) return 'reftable';
    if (e.offset >= l1[0]! && e.offset < l1[1]!) return 'l1';
    if (l2s.has(e.offset)) return 'l2';
    return 'data';
  });
}

/** The commit's shape: data, refblocks/reftable (and a moved table's header), L2, L1, header, frees. */
function assertOrdered(seq: Array<Kind | 'flush'>): void {
  const rank: Record<Kind, number> = { data: 0, refblock: 1, reftable: 1, l2: 3, l1: 4, header: 5 };
  let stage = 0;
  let lastKind: Kind | undefined;
  let flushedSinceLast = true;
  for (const k of seq) {
    if (k === 'flush') { flushedSinceLast = true; continue; }
    let r = rank[k];
    // A refcount table that moved is published by a header write inside the refcount step.
    if (k === 'header' && stage <= 1 && lastKind !== undefined && (lastKind === 'reftable' || lastKind === 'refblock')) r = 1;
    // Refcount blocks after the L2/L1 step are the deferred frees (step 6).
    if (k === 'refblock' && stage >= 3) r = 6;
    expect(r, `${k} written after stage ${stage}: ${seq.join(' ')}`).toBeGreaterThanOrEqual(stage);
    if (r > stage && lastKind !== undefined && stage >= 1) {
      expect(flushedSinceLast, `no flush between ${lastKind} and ${k}: ${seq.join(' ')}`).toBe(true);
    }
    stage = r;
    lastKind = k;
    flushedSinceLast = false;
  }
}

describe('write ordering', () => {
  it('refblocks_before_l2_before_l1_header_last_frees_after', () => {
    const mem = memImage({ size: 8n << 20n, clusterSize: 4096 });
    const rec = new RecordingFile(mem);
    const img = Qcow2Image.over(rec, { writable: true });
    img.write(0, Buffer.alloc(10000, 1));
    img.write(3 << 20, Buffer.alloc(4096 * 3, 2));
    img.commit();
    const first = classify(mem, rec.events);
    expect(first).toContain('refblock');
    expect(first).toContain('l2');
    expect(first).toContain('l1');
    assertOrdered(first);
    // Frees: discard and compressed-free paths decrement after the tables are written.
    rec.events = [];
    img.discard(0, 8192);
    img.write(4096 * 100, Buffer.alloc(4096, 3));
    img.close();
    const second = classify(mem, rec.events);
    assertOrdered(second);
    const lastL = Math.max(second.lastIndexOf('l2'), second.lastIndexOf('l1'));
    expect(second.lastIndexOf('refblock')).toBeGreaterThan(lastL);
    expect(checkImage(mem).corruptions).toBe(0);
    expect(checkImage(mem).leaks).toBe(0);
  });

  it('refcount_table_growth_publishes_header_before_l2', () => {
    // 512-byte clusters: one refblock covers 128 KiB, the first table 8 MiB of file.
    const mem = memImage({ size: 16n << 20n, clusterSize: 512 });
    const rec = new RecordingFile(mem);
    const img = Qcow2Image.over(rec, { writable: true });
    const before = Image.open(mem).header.refcountTableOffset;
    for (let off = 0; off < (12 << 20); off += 256 << 10) img.write(off, Buffer.alloc(256 << 10, 7));
    img.close();
    expect(Image.open(mem).header.refcountTableOffset).not.toBe(before);
    const seq = classify(mem, rec.events);
    assertOrdered(seq);
    const r = checkImage(mem);
    expect(r.corruptions, r.messages.join('\n')).toBe(0);
    expect(r.leaks, r.messages.join('\n')).toBe(0);
  });
});

describe('in-memory model', () => {
  for (const [name, opts] of [
    ['64k', { size: 8n << 20n }],
    ['4k refcount_bits=1', { size: 8n << 20n, clusterSize: 4096, refcountBits: 1 }],
    ['512 refcount_bits=64', { size: 2n << 20n, clusterSize: 512, refcountBits: 64 }],
    ['extended_l2', { size: 8n << 20n, extendedL2: true, clusterSize: 65536 }],
    ['v2', { size: 8n << 20n, compat: '0.10' }],
  ] as Array<[string, CreateOptions]>) {
    it(`random_writes_read_back_${name.replace(/\W+/g, '_')}`, () => {
      const mem = memImage(opts);
      const size = Number(opts.size);
      const shadow = Buffer.alloc(size);
      const rand = prng(name.length * 131);
      const img = Qcow2Image.over(mem, { writable: true });
      for (let i = 0; i < 60; i++) {
        const off = Math.floor(rand() * size / 512) * 512;
        const len = Math.min(size - off, 512 * (1 + Math.floor(rand() * 300)));
        const r = rand();
        if (r < 0.5) {
          const b = Buffer.alloc(len, 1 + Math.floor(rand() * 255));
          img.write(off, b);
          b.copy(shadow, off);
        } else if (r < 0.8) {
          img.writeZeroes(off, len, { unmap: rand() < 0.3 });
          shadow.fill(0, off, off + len);
        } else {
          img.discard(off, len);
          const cs = img.cs;
          const a = Math.ceil(off / cs) * cs, b = Math.floor((off + len) / cs) * cs;
          if (b > a) shadow.fill(0, a, b);
        }
        if (i % 17 === 0) img.commit();
      }
      img.close();
      const again = Qcow2Image.over(mem);
      expect(again.read(0, size).equals(shadow)).toBe(true);
      const c = checkImage(mem);
      expect(c.corruptions, c.messages.join('\n')).toBe(0);
      expect(c.leaks, c.messages.join('\n')).toBe(0);
    });
  }
});
