// The table cache (meta/tables.ts): read on first use, bounded by its budget with buffers
// reused, dirty tables kept until written back in offset order, copy-on-write.

import { describe, expect, it } from 'vitest';
import { BlockFile, MemoryBlockFile } from '../../../provider/qcow2/io/blockfile';
import { TableCache } from '../../../provider/qcow2/meta/tables';

const CS = 512;

/** A file whose cluster i is filled with byte i, counting the reads that reach it. */
function clusters(n: number): MemoryBlockFile & { reads: number } {
  const f = new MemoryBlockFile() as MemoryBlockFile & { reads: number };
  for (let i = 0; i < n; i++) f.write(i * CS, Buffer.alloc(CS, i));
  f.reads = 0;
  const readInto = f.readInto.bind(f);
  f.readInto = (t: Uint8Array, o: number) => { f.reads++; readInto(t, o); };
  return f;
}

describe('table cache', () => {
  it('reads_a_table_once_while_it_is_cached', () => {
    const f = clusters(8);
    const c = new TableCache(f, CS);
    expect(c.get(3 * CS).buf[0]).toBe(3);
    expect(c.get(3 * CS).buf[0]).toBe(3);
    c.get(4 * CS);
    c.get(3 * CS);
    expect(f.reads).toBe(2);
  });

  it('evicts_the_least_recently_used_clean_table_beyond_its_budget_and_reuses_its_buffer', () => {
    const f = clusters(16);
    const c = new TableCache(f, CS, 4 * CS); // at least 4 tables
    const first = c.get(0).buf;
    for (let i = 1; i < 4; i++) c.get(i * CS);
    c.get(0); // 0 is now the most recently used; 1 the least
    const fifth = c.get(4 * CS);
    expect(fifth.buf[0]).toBe(4);
    expect(f.reads).toBe(5);
    c.get(0);
    expect(f.reads).toBe(5); // 0 stayed
    c.get(CS);
    expect(f.reads).toBe(6); // 1 was evicted
    expect(first[0]).toBe(0);
  });

  it('keeps_dirty_tables_however_many_and_writes_them_back_in_offset_order', () => {
    const f = clusters(16);
    const c = new TableCache(f, CS, 4 * CS);
    for (const i of [9, 2, 7, 5, 12, 1]) {
      c.get(i * CS).buf[1] = 0xee;
      c.markDirty(i * CS);
    }
    for (let i = 13; i < 16; i++) c.get(i * CS); // pressure: only clean tables may go
    const written: number[] = [];
    expect(c.writeBack((off, t) => { written.push(off / CS); expect(t[1]).toBe(0xee); })).toBe(6);
    expect(written).toEqual([1, 2, 5, 7, 9, 12]);
    expect(c.dirtyCount).toBe(0);
  });

  it('copy_on_write_leaves_the_old_table_as_it_was', () => {
    const f = clusters(8);
    const c = new TableCache(f, CS);
    const t = c.copy(2 * CS, 6 * CS);
    t.buf[0] = 0xaa;
    expect(c.get(2 * CS).buf[0]).toBe(2);
    expect(c.isDirty(6 * CS)).toBe(true);
    expect(c.isDirty(2 * CS)).toBe(false);
    const priv = c.clone(2 * CS);
    priv.buf[0] = 0xbb;
    expect(c.get(2 * CS).buf[0]).toBe(2);
    expect(c.dirtyOffsets()).toEqual([6 * CS]);
    expect(c.clone(null).buf.every((b) => b === 0)).toBe(true);
  });

  it('a_new_image_reads_unknown_tables_as_zeros_and_creates_the_rest', () => {
    const c = new TableCache(null as BlockFile | null, CS);
    expect(c.get(7 * CS).buf.every((b) => b === 0)).toBe(true);
    c.create(3 * CS).buf[0] = 1;
    expect(c.dirtyOffsets()).toEqual([3 * CS]);
  });
});
