// The header commit (meta/header-commit.ts): one write of at most one page at offset 0, also
// when cluster 0 holds bytes past the first 4 KiB; a header longer than a page writes its tail
// first, where the old header does not look.

import { describe, expect, it } from 'vitest';
import { BlockFile, MemoryBlockFile } from '../../../provider/qcow2/io/blockfile';
import { Image } from '../../../provider/qcow2/meta/image';
import { COMMIT_PAGE } from '../../../provider/qcow2/meta/header-commit';
import { Qcow2Image } from '../../../provider/qcow2/guest/qcow2';
import { applyAmend, planAmend } from '../../../provider/qcow2/ops/amend';
import { checkImage } from '../../../provider/qcow2/ops/check';
import * as C from '../../../provider/qcow2/spec/constants';
import { makeImage, patched, setU64 } from '../../helpers/images';

/** Every write and flush, in order. */
class Recorder implements BlockFile {
  log: Array<{ offset: number; length: number } | 'flush'> = [];
  constructor(readonly inner: MemoryBlockFile) {}
  read(o: number, l: number) { return this.inner.read(o, l); }
  readInto(t: Uint8Array, o: number) { this.inner.readInto(t, o); }
  write(o: number, d: Uint8Array) { this.log.push({ offset: o, length: d.length }); this.inner.write(o, d); }
  size() { return this.inner.size(); }
  truncate(n: number) { this.inner.truncate(n); }
  flush() { this.log.push('flush'); }
  close() {}
  allocatedSize() { return this.inner.allocatedSize(); }
  /** Writes that touch cluster 0. */
  headerWrites(cs: number) { return this.log.filter((w): w is { offset: number; length: number } => w !== 'flush' && w.offset < cs); }
}

/** A fresh image whose cluster 0 holds stale bytes at 8 KiB and at its last byte. */
function withStaleTail(): MemoryBlockFile {
  return new MemoryBlockFile(patched(makeImage({ size: 64n << 20n }), (b) => {
    b.fill(0xab, 8192, 8192 + 100);
    b[65535] = 0xcd;
  }));
}

describe('header commit', () => {
  it('amend_commits_with_one_write_of_one_page_when_cluster_0_holds_bytes_past_4k', () => {
    const rec = new Recorder(withStaleTail());
    const img = Image.open(rec);
    applyAmend(rec, planAmend(img, rec, { lazyRefcounts: true }));
    const writes = rec.headerWrites(65536);
    expect(writes).toEqual([{ offset: 0, length: COMMIT_PAGE }]);
    expect(rec.log).toEqual([{ offset: 0, length: COMMIT_PAGE }, 'flush']);
    const after = Image.open(rec.inner);
    expect(after.header.compatibleFeatures & C.QCOW2_COMPAT_LAZY_REFCOUNTS).toBe(C.QCOW2_COMPAT_LAZY_REFCOUNTS);
    expect(rec.inner.read(8192, 100).every((b) => b === 0xab)).toBe(true); // not part of the header: left
  });

  it('an_amend_that_moves_metadata_still_commits_with_one_page', () => {
    const rec = new Recorder(withStaleTail());
    applyAmend(rec, planAmend(Image.open(rec), rec, { refcountOrder: 6, size: 1n << 30n }));
    expect(rec.headerWrites(65536)).toEqual([{ offset: 0, length: COMMIT_PAGE }]);
    expect(checkImage(rec.inner).corruptions).toBe(0);
  });

  it('a_guest_writes_header_update_is_one_page_too', () => {
    // An unknown autoclear bit: the writer clears it before its first write (a header write).
    const bytes = patched(withStaleTail().bytes(), (b) => setU64(b, 88, 1n << 40n));
    const rec = new Recorder(new MemoryBlockFile(bytes));
    const img = Qcow2Image.over(rec, { writable: true });
    img.write(0, Buffer.alloc(65536, 1));
    img.close();
    for (const w of rec.headerWrites(65536)) expect(w).toEqual({ offset: 0, length: COMMIT_PAGE });
    expect(rec.headerWrites(65536).length).toBeGreaterThan(0);
    expect(Image.open(rec.inner).header.autoclearFeatures).toBe(0n);
  });

  it('a_header_longer_than_a_page_writes_its_tail_first_then_the_page', () => {
    const long = '/' + 'd'.repeat(200) + '/'.concat('x'.repeat(5000));
    const file = new MemoryBlockFile(makeImage({ size: 1n << 20n, dataFile: 'short.raw' }));
    const rec = new Recorder(file);
    applyAmend(rec, planAmend(Image.open(rec), rec, { dataFile: long }));
    expect(rec.log).toEqual([{ offset: COMMIT_PAGE, length: expect.any(Number) }, 'flush', { offset: 0, length: COMMIT_PAGE }, 'flush']);
    expect(Image.open(file).header.dataFile).toBe(long);
  });

  it('a_change_between_two_headers_longer_than_a_page_is_refused_unchanged', () => {
    const long = (c: string) => '/' + c.repeat(5000);
    const file = new MemoryBlockFile(makeImage({ size: 1n << 20n, dataFile: long('a') }));
    const before = file.bytes();
    expect(() => planAmend(Image.open(file), file, { dataFile: long('b') })).toThrow(/cannot be committed with one write/);
    expect(file.bytes().equals(before)).toBe(true);
  });
});
