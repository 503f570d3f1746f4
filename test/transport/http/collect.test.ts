// Downloads collect the body's dead chunks as they go (transport/http/collect.ts): a young-
// generation collection frees buffers outside V8's heap that nothing references any more, so a
// fast download does not hold tens of MiB of them until V8 gets round to it.

import { describe, expect, it } from 'vitest';
import { COLLECT_EVERY, ChunkCollector, collectYoung } from '../../../provider/transport/http/collect';

const MiB = 2 ** 20;
const arrayBuffers = () => process.memoryUsage().arrayBuffers / MiB;
const tick = () => new Promise((resolve) => setImmediate(resolve));

/** 16 MiB of 64 KiB chunks, as a socket delivers them, dropped at once. */
function deadChunks(): void {
  const chunks: Buffer[] = [];
  for (let i = 0; i < 256; i++) chunks.push(Buffer.alloc(64 << 10, i));
  expect(chunks.reduce((n, c) => n + c.length, 0)).toBe(16 * MiB);
}

describe('collecting dead body chunks', () => {
  it('frees_dead_chunks_outside_the_heap', async () => {
    collectYoung();
    await tick();
    const base = arrayBuffers();
    deadChunks();
    expect(arrayBuffers() - base).toBeGreaterThan(15);
    collectYoung();
    await tick(); // the buffers' memory is swept after the collection
    expect(arrayBuffers() - base).toBeLessThan(2);
  });

  it('collects_once_every_COLLECT_EVERY_bytes_received', () => {
    let collections = 0;
    const c = new ChunkCollector(() => collections++);
    c.received(COLLECT_EVERY - 1);
    expect(collections).toBe(0);
    c.received(1);
    expect(collections).toBe(1);
    for (let i = 0; i < 10; i++) c.received(64 << 10);
    expect(collections).toBe(1);
    c.received(COLLECT_EVERY);
    expect(collections).toBe(2);
  });
});
