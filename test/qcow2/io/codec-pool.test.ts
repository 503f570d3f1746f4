// The codec pool (io/codecs.ts CodecPool): worker threads that compress (io/compressor.ts), and
// decode (ClusterDecoder) where no native decoder is installed, on the same native bindings
// (io/codec-lib.ts); a compressor's two slots compress at once, in any order of finishing, to
// the bytes one thread makes; a slot must be finished before it is used again.

import * as crypto from 'crypto';
import { describe, expect, it } from 'vitest';
import { ClusterDecoder, DecodeJob, codecPool, sharedBuffer } from '../../../provider/qcow2/io/codecs';
import { clusterCompressor } from '../../../provider/qcow2/io/compressor';
import { zstdLib } from '../../../provider/qcow2/io/codec-lib';
import { QCOW2_COMPRESSION_TYPE_ZSTD } from '../../../provider/qcow2/spec/constants';

const CS = 65536;
/** `n` clusters: random (incompressible), text, a repeated byte, in turn. */
function clusters(n: number): Buffer {
  const text = Buffer.from('a compressed cluster of the codec pool test, line after line\n'.repeat(Math.ceil(CS / 60)));
  const out = Buffer.alloc(n * CS);
  for (let i = 0; i < n; i++) {
    const c = out.subarray(i * CS, (i + 1) * CS);
    if (i % 3 === 0) crypto.randomFillSync(c);
    else if (i % 3 === 1) text.copy(c, 0, i, i + CS);
    else c.fill(i);
  }
  return out;
}

const copies = (rs: Array<Uint8Array | undefined>) => rs.map((r) => (r ? Buffer.from(r) : undefined));

describe.skipIf(zstdLib() === undefined)('codec pool', () => {
  it('what_the_pool_compresses_decodes_back_without_more_threads', async () => {
    const input = clusters(24);
    const alone = copies(clusterCompressor('zstd', CS, 1).compress(input, CS));
    // Every cluster left to two workers of the pool.
    const c = clusterCompressor('zstd', CS, 3, false);
    const pooled = copies(c.compress(input, CS));
    expect(c.byWorkers).toBe(24);
    expect(pooled).toEqual(alone);
    const started = codecPool().started;
    expect(started).toBeGreaterThanOrEqual(2);
    // Decoded on koffi's threads (libzstd): no further worker starts.
    const stored = sharedBuffer(pooled.reduce((n, p) => n + (p?.length ?? 0), 0));
    const out = sharedBuffer(input.length);
    const jobs: DecodeJob[] = [];
    let at = 0;
    pooled.forEach((p, i) => {
      if (p === undefined) {
        input.copy(out, i * CS, i * CS, (i + 1) * CS); // stored uncompressed
        return;
      }
      p.copy(stored, at);
      jobs.push({ from: at, size: p.length, to: i * CS, within: 0, length: CS, clusterSize: CS, compressionType: QCOW2_COMPRESSION_TYPE_ZSTD, at });
      at += p.length;
    });
    expect(jobs.length).toBeGreaterThanOrEqual(16);
    await new ClusterDecoder(3).decode(stored, out, jobs);
    expect(out.equals(input)).toBe(true);
    expect(codecPool().started).toBe(started);
  });

  it('two_slots_compress_at_once_to_the_bytes_of_one_thread', () => {
    const a = clusters(10), b = clusters(7).reverse();
    const one = clusterCompressor('zstd', CS, 1);
    const [ea, eb] = [copies(one.compress(a, CS)), copies(one.compress(b, CS))];
    const c = clusterCompressor('zstd', CS, 3, false);
    const sa = c.slot(), sb = c.slot();
    expect(sa === sb).toBe(false); // (not toBe: it would print both slots' megabytes)
    sa.input.set(a);
    sa.start(10);
    sb.input.set(b);
    sb.start(7);
    // Finished in the other order: each slot keeps its own results.
    expect(copies(sb.finish())).toEqual(eb);
    expect(copies(sa.finish())).toEqual(ea);
    expect(c.byWorkers).toBe(17);
  });

  it('a_slot_is_finished_before_it_is_used_again', () => {
    const c = clusterCompressor('zstd', CS, 1);
    const s = c.slot();
    s.input.set(clusters(2));
    s.start(2);
    expect(() => s.start(2)).toThrow(/started twice/);
    c.slot();
    expect(() => c.slot()).toThrow(/busy/);
    expect(s.finish()).toHaveLength(2);
    expect(c.slot() === s).toBe(true);
  });
});
