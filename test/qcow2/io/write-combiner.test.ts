// WriteCombiner (io/blockfile.ts): writes that continue the previous one go to the file as one;
// every other operation writes what is gathered first, so reads, sizes and the file's bytes are
// those of the writes made one by one.

import * as crypto from 'crypto';
import { describe, expect, it } from 'vitest';
import { MemoryBlockFile, WriteCombiner } from '../../../provider/qcow2/io/blockfile';

describe('WriteCombiner', () => {
  it('gathers_sequential_writes_and_keeps_the_bytes', () => {
    const plain = new MemoryBlockFile(), inner = new MemoryBlockFile();
    const w = new WriteCombiner(inner, 64 << 10);
    let at = 4096;
    for (let i = 0; i < 100; i++) {
      const d = crypto.randomBytes(1000 + ((i * 37) % 3000));
      plain.write(at, d);
      w.write(at, d);
      at += d.length;
    }
    // A write elsewhere, a read over gathered bytes, one larger than half the buffer.
    for (const [o, d] of [[10, crypto.randomBytes(100)], [at + 512, crypto.randomBytes(40 << 10)]] as const) {
      plain.write(o, d);
      w.write(o, d);
    }
    expect(w.read(4096, 2000).equals(plain.read(4096, 2000))).toBe(true);
    expect(w.size()).toBe(plain.size());
    w.flush();
    expect(inner.bytes().equals(plain.bytes())).toBe(true);
    // About 250 KiB of small writes in 64 KiB pieces: a handful of writes, not 102.
    expect(inner.writes).toBeLessThan(12);
    expect(plain.writes).toBe(102);
  });

  it('writes_what_is_gathered_before_a_truncate_and_on_close', () => {
    const inner = new MemoryBlockFile();
    const w = new WriteCombiner(inner, 4096);
    w.write(0, Buffer.alloc(100, 1));
    w.write(100, Buffer.alloc(100, 2));
    expect(inner.writes).toBe(0);
    w.truncate(150);
    expect(inner.bytes()).toEqual(Buffer.concat([Buffer.alloc(100, 1), Buffer.alloc(50, 2)]));
    w.write(150, Buffer.alloc(10, 3));
    w.close();
    expect(inner.size()).toBe(160);
    expect(inner.writes).toBe(2);
  });
});
