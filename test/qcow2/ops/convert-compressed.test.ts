// Compressed output against qemu-img convert -c: the same source converted by qemu-img and by
// the engine's copy loop (ops/convert-compressed.ts, compression on io/compressor.ts's thread
// pool) leaves byte-identical files, for zlib and zstd, 512-byte to 2 MiB clusters, raw sources
// with data, explicit zeros, holes and an unaligned end, and qcow2 sources read through a backing
// chain. The thread count does not change a byte.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveCreateOptions } from '../../../provider/engines/native/ops';
import { clusterCompressor, type CompressionKind } from '../../../provider/qcow2/io/compressor';
import { NodeBlockFile } from '../../../provider/qcow2/io/blockfile';
import { Qcow2Image } from '../../../provider/qcow2/guest/qcow2';
import { openSource } from '../../../provider/qcow2/guest/sources/open';
import { planCreate, writePlan } from '../../../provider/qcow2/ops/create';
import { copyGuestCompressed } from '../../../provider/qcow2/ops/convert-compressed';
import { prng, qemuImg, qemuIo, skipWithoutQemuTools, tempDir } from '../guest/harness';

/** The engine's convert -c of `src` into a new `dst`. */
function oursCompressed(src: string, format: 'raw' | 'qcow2', dst: string, kind: CompressionKind, clusterSize: number, threads?: number, callerTakesWork = true): number {
  const s = openSource(src, format, {});
  try {
    const plan = planCreate(resolveCreateOptions(dst, { size: BigInt(Math.ceil(s.size / 512) * 512), compressionType: kind, clusterSize }));
    const f = NodeBlockFile.createExclusive(dst);
    writePlan(plan, f);
    const img = Qcow2Image.over(f, { writable: true, fileName: dst });
    const c = clusterCompressor(kind, img.cs, threads, callerTakesWork);
    try {
      copyGuestCompressed(s, img, c);
      return c.byWorkers;
    } finally {
      c.close();
      img.close();
    }
  } finally {
    s.close();
  }
}

/** Offset of the first differing byte, or undefined. */
function firstDifference(a: string, b: string): number | undefined {
  const x = fs.readFileSync(a), y = fs.readFileSync(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return i;
  return x.length === y.length ? undefined : n;
}

describe.skipIf(skipWithoutQemuTools('convert -c'))('convert -c against qemu-img', () => {
  const root = tempDir('convert-c');
  const at = (n: string) => path.join(root, n);
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  beforeAll(() => {
    const rand = prng(7);
    // Random (uncompressible) clusters, text (compressible), explicit zeros, holes, an odd end.
    const fd = fs.openSync(at('mixed.raw'), 'w');
    const text = Buffer.from('qcow2 compressed cluster test line with some repetition 0123456789\n'.repeat(2048));
    for (let i = 0; i < 96; i++) {
      const kind = Math.floor(rand() * 4);
      const b = kind === 0 ? Buffer.from(Array.from({ length: 65536 }, () => Math.floor(rand() * 256)))
        : kind === 1 ? text.subarray(i, i + 65536) : kind === 2 ? Buffer.alloc(65536) : undefined;
      if (b) fs.writeSync(fd, b, 0, b.length, i * 65536 + (i % 3) * 4096);
    }
    fs.writeSync(fd, text.subarray(0, 777), 0, 777, 7 << 20);
    fs.ftruncateSync(fd, (8 << 20) + 1000);
    fs.closeSync(fd);
    // A qcow2 chain: base data, an overlay over part of it, zero clusters, compressed clusters.
    qemuImg(['create', '-q', '-f', 'qcow2', at('base.qcow2'), '16M']);
    qemuIo(['-c', 'write -P 1 0 3M', '-c', 'write -P 2 10M 100k', '-c', 'write -c -P 5 12M 64k', at('base.qcow2')]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', at('base.qcow2'), at('top.qcow2')]);
    qemuIo(['-c', 'write -P 3 1M 64k', '-c', 'write -z 0 64k', '-c', 'write -P 4 15M 1M', at('top.qcow2')]);
  });

  const cases: Array<{ src: string; format: 'raw' | 'qcow2'; kind: CompressionKind; cs: number }> = [
    { src: 'mixed.raw', format: 'raw', kind: 'zlib', cs: 65536 },
    { src: 'mixed.raw', format: 'raw', kind: 'zstd', cs: 65536 },
    { src: 'mixed.raw', format: 'raw', kind: 'zlib', cs: 512 },
    { src: 'mixed.raw', format: 'raw', kind: 'zstd', cs: 2 << 20 },
    { src: 'top.qcow2', format: 'qcow2', kind: 'zlib', cs: 65536 },
    { src: 'top.qcow2', format: 'qcow2', kind: 'zstd', cs: 4096 },
  ];
  for (const c of cases) {
    it(`byte_identical: ${c.src} ${c.kind} cluster_size=${c.cs}`, () => {
      const tag = `${c.src}-${c.kind}-${c.cs}`;
      const theirs = at(`${tag}-q.qcow2`), ours = at(`${tag}-o.qcow2`);
      qemuImg(['convert', '-c', '-f', c.format, '-O', 'qcow2', '-o', `compression_type=${c.kind},cluster_size=${c.cs}`, at(c.src), theirs]);
      oursCompressed(at(c.src), c.format, ours, c.kind, c.cs);
      expect(firstDifference(theirs, ours)).toBeUndefined();
    });
  }

  it('the_thread_count_changes_no_byte_and_the_workers_compress', () => {
    const one = at('t1.qcow2'), three = at('t3.qcow2');
    expect(oursCompressed(at('mixed.raw'), 'raw', one, 'zlib', 4096, 1)).toBe(0);
    // Every cluster left to the two worker threads: they compressed them all, the same bytes.
    expect(oursCompressed(at('mixed.raw'), 'raw', three, 'zlib', 4096, 3, false)).toBeGreaterThan(100);
    expect(firstDifference(one, three)).toBeUndefined();
    const check = qemuImg(['check', one]);
    expect(check).toMatch(/No errors were found/);
  });
});
