// Decoding compressed clusters on koffi's threads (io/codecs.ts ClusterDecoder with libdeflate
// and libzstd): the bytes are those of the one-cluster decoder on this thread (decodeCluster,
// whose semantics are QEMU's), whole clusters and parts of clusters alike, also for streams the
// library does not decode to exactly one cluster (decoded again on this thread); a cluster that
// cannot be decoded rejects the batch with the decoder's error; no worker thread is started for
// any of it.

import * as crypto from 'crypto';
import * as zlib from 'zlib';
import { describe, expect, it } from 'vitest';
import { deflateLib, zstdLib } from '../../../provider/qcow2/io/codec-lib';
import { ClusterDecoder, DecodeJob, codecPool, decodeCluster } from '../../../provider/qcow2/io/codecs';
import { QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD } from '../../../provider/qcow2/spec/constants';

const CS = 65536;

/** Cluster `i`: random bytes, text, or one repeated byte, in turn. */
function cluster(i: number): Buffer {
  const c = Buffer.alloc(CS);
  if (i % 3 === 0) crypto.randomFillSync(c);
  else if (i % 3 === 1) c.write('a cluster decoded on koffi\'s threads, line after line\n'.repeat(CS / 40).slice(i, i + CS));
  else c.fill(i);
  return c;
}

/** A cluster as qemu-img stores it: raw deflate (zlib) or one zstd frame, then padding to a sector. */
function stored(data: Buffer, type: number): Buffer {
  const s = type === QCOW2_COMPRESSION_TYPE_ZSTD ? zstdFrame(data) : zlib.deflateRawSync(data, { windowBits: 12 });
  return Buffer.concat([s, Buffer.alloc(512 - (s.length % 512))]);
}

function zstdFrame(data: Buffer): Buffer {
  const z = zstdLib()!;
  const out = Buffer.alloc(CS + 1024);
  const n = Number(z.compress2(z.createCCtx(), out, out.length, data, data.length));
  return out.subarray(0, n);
}

/** Jobs decoding `streams` (one each) into consecutive clusters of the output, or parts of them. */
function batch(streams: Buffer[], type: number, part?: (i: number) => { within: number; length: number }): { stored: Buffer; jobs: DecodeJob[]; size: number } {
  const jobs: DecodeJob[] = [];
  let from = 0, to = 0;
  for (const [i, s] of streams.entries()) {
    const { within, length } = part?.(i) ?? { within: 0, length: CS };
    jobs.push({ from, size: s.length, to, within, length, clusterSize: CS, compressionType: type, at: from });
    from += s.length;
    to += length;
  }
  return { stored: Buffer.concat(streams), jobs, size: to };
}

/** The same jobs, each decoded on this thread by decodeCluster. */
function oneByOne(b: { stored: Buffer; jobs: DecodeJob[]; size: number }): Buffer {
  const out = Buffer.alloc(b.size);
  for (const j of b.jobs) {
    const c = Buffer.alloc(CS);
    decodeCluster(b.stored.subarray(j.from, j.from + j.size), c, j.compressionType, BigInt(j.at));
    c.copy(out, j.to, j.within, j.within + j.length);
  }
  return out;
}

const types = [
  { name: 'zlib', type: QCOW2_COMPRESSION_TYPE_ZLIB, lib: deflateLib() },
  { name: 'zstd', type: QCOW2_COMPRESSION_TYPE_ZSTD, lib: zstdLib() },
];

describe.skipIf(deflateLib() === undefined || zstdLib() === undefined)('cluster decoding on koffi\'s threads', () => {
  for (const { name, type } of types) {
    it(`${name}_whole_clusters_and_parts_decode_as_on_this_thread`, async () => {
      const plain = Array.from({ length: 24 }, (_, i) => cluster(i));
      const whole = batch(plain.map((c) => stored(c, type)), type);
      const out = Buffer.alloc(whole.size);
      await new ClusterDecoder(2).decode(whole.stored, out, whole.jobs);
      expect(out.equals(Buffer.concat(plain))).toBe(true);
      // Parts of clusters (a guest view's first and last clusters): cut out of the decoded cluster.
      const parts = batch(plain.map((c) => stored(c, type)), type, (i) => ({ within: (i * 4096) % CS, length: CS - ((i * 4096) % CS) - (i % 2) * 512 }));
      const pout = Buffer.alloc(parts.size);
      await new ClusterDecoder(3).decode(parts.stored, pout, parts.jobs);
      expect(pout.equals(oneByOne(parts))).toBe(true);
    });
  }

  it('streams_the_library_refuses_decode_as_on_this_thread', async () => {
    // A deflate stream without its final block (flushed, not finished; no padding after it) that
    // gives exactly one cluster: libdeflate refuses it, zlib's inflate (this thread's decoder) accepts it.
    const plain = [cluster(0), cluster(1), cluster(2)];
    const open = zlib.deflateRawSync(plain[1]!, { windowBits: 12, finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const streams = [stored(plain[0]!, QCOW2_COMPRESSION_TYPE_ZLIB), open, stored(plain[2]!, QCOW2_COMPRESSION_TYPE_ZLIB)];
    const d = deflateLib()!;
    expect(d.decompress(d.decompressor, open, open.length, Buffer.alloc(CS), CS, null)).not.toBe(0);
    const b = batch(streams, QCOW2_COMPRESSION_TYPE_ZLIB);
    const out = Buffer.alloc(b.size);
    await new ClusterDecoder(2).decode(b.stored, out, b.jobs);
    expect(out.equals(Buffer.concat(plain))).toBe(true);
  });

  for (const { name, type } of types) {
    it(`${name}_a_cluster_that_does_not_decode_fails_the_batch`, async () => {
      const streams = Array.from({ length: 12 }, (_, i) => stored(cluster(i), type));
      // Cluster 5 decodes to half a cluster; cluster 8 is not a stream at all.
      streams[5] = stored(cluster(5).subarray(0, CS / 2), type);
      streams[8] = Buffer.alloc(512, 0xff);
      const b = batch(streams, type);
      const out = Buffer.alloc(b.size);
      const e = await new ClusterDecoder(2).decode(b.stored, out, b.jobs).then(() => undefined, (x: unknown) => x as Error);
      expect(e?.message).toMatch(/compressed cluster/i);
      expect(() => oneByOne(b)).toThrow(/compressed cluster/i);
    });
  }

  it('starts_no_worker_thread', () => {
    expect(codecPool().started).toBe(0);
  });
});
