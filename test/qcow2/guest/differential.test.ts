// Differential test of the data path against qemu-io: the same seeded sequences of write,
// write-zeroes and discard are applied by qemu-io to one copy and by our engine to another;
// then qemu-img compare says identical, qemu-img check is clean, and for data-file-raw images
// the data file equals the guest view and qemu-img map equals qemu-io's.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImageForWrite, mapImage } from '../../../provider/engines/native/ops';
import { prng, qemuImg, qemuIo, qemuMap, runQemuImg, skipWithoutQemuTools, tempDir } from './harness';

type Kind = 'raw' | 'plain' | 'backed-raw' | 'backed-qcow2' | 'small-clusters' | 'v2';
type Op = { op: 'write'; off: number; len: number; pattern: number } | { op: 'zero'; off: number; len: number; unmap: boolean } | { op: 'discard'; off: number; len: number };

const SIZE = 4 << 20;

function toQemuIo(o: Op): string {
  switch (o.op) {
    case 'write': return `write -P 0x${o.pattern.toString(16)} ${o.off} ${o.len}`;
    case 'zero': return `write -z${o.unmap ? ' -u' : ''} ${o.off} ${o.len}`;
    case 'discard': return `discard ${o.off} ${o.len}`;
  }
}

function randomOps(rand: () => number, n: number, size: number, cs: number, allowUnmap: boolean): Op[] {
  const ops: Op[] = [];
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)]!;
  for (let i = 0; i < n; i++) {
    const aligned = rand() < 0.5;
    const unit = aligned ? cs : 512;
    const maxUnits = Math.floor((aligned ? 4 * cs : 3 * cs) / unit);
    let off = Math.floor(rand() * (size / unit)) * unit;
    let len = (1 + Math.floor(rand() * maxUnits)) * unit;
    if (rand() < 0.1) { off = Math.floor(rand() * 4) * cs; len = Math.min(size - off, (8 + Math.floor(rand() * 24)) * cs); }
    if (off + len > size) len = size - off;
    if (len <= 0) { off = 0; len = unit; }
    const kind = pick(['write', 'write', 'zero', 'discard'] as const);
    if (kind === 'write') ops.push({ op: 'write', off, len, pattern: 1 + Math.floor(rand() * 254) });
    else if (kind === 'zero') ops.push({ op: 'zero', off, len, unmap: allowUnmap && rand() < 0.2 });
    else ops.push({ op: 'discard', off, len });
  }
  return ops;
}

function applyOurs(file: string, ops: Op[]): void {
  const img = openImageForWrite(file);
  try {
    for (const o of ops) {
      if (o.op === 'write') img.write(o.off, Buffer.alloc(o.len, o.pattern));
      else if (o.op === 'zero') img.writeZeroes(o.off, o.len, { unmap: o.unmap });
      else img.discard(o.off, o.len);
    }
  } finally {
    img.close();
  }
}

const SEQUENCES: Array<[Kind, number]> = [
  ['raw', 36], ['plain', 24], ['backed-raw', 16], ['backed-qcow2', 16], ['small-clusters', 6], ['v2', 6],
];

describe.skipIf(skipWithoutQemuTools('data differential'))('differential: our writes vs qemu-io', () => {
  const root = tempDir('diff');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  const results = { sequences: 0, ops: 0 };
  afterAll(() => console.log(`[data differential] ${results.sequences} sequences, ${results.ops} operations: identical to qemu-io`));

  let seed = 1;
  for (const [kind, count] of SEQUENCES) {
    for (let i = 0; i < count; i++) {
      const s = seed++;
      it(`${kind} sequence seed ${s}`, () => {
        const rand = prng(s * 7919);
        const dir = path.join(root, `${kind}-${s}`);
        fs.mkdirSync(dir);
        const A = path.join(dir, 'qemu.qcow2');
        const B = path.join(dir, 'ours.qcow2');
        const cs = kind === 'small-clusters' ? 512 : kind === 'raw' && s % 3 === 0 ? 4096 : 65536;
        const size = kind === 'small-clusters' ? 12 << 20 : SIZE;
        const opts = [`cluster_size=${cs}`];
        if (kind === 'v2') opts.push('compat=0.10');
        let backing: string[] = [];
        if (kind === 'backed-raw') {
          const b = path.join(dir, 'base.raw');
          const buf = Buffer.alloc(size / 2);
          for (let k = 0; k < buf.length; k += 4096) buf.fill(Math.floor(rand() * 256), k, k + (rand() < 0.3 ? 0 : 4096));
          fs.writeFileSync(b, buf);
          fs.truncateSync(b, (size * 3) / 4); // a hole at the end, shorter than the overlay
          backing = ['-b', 'base.raw', '-F', 'raw'];
        } else if (kind === 'backed-qcow2') {
          const b = path.join(dir, 'base.qcow2');
          qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, b, String(size)]);
          const pre = randomOps(rand, 8, size, cs, false).map(toQemuIo);
          pre.unshift(`write -c -P 0x5a ${2 * cs} ${cs}`);
          qemuIo(['-f', 'qcow2', ...pre.flatMap((c) => ['-c', c]), b]);
          backing = ['-b', 'base.qcow2', '-F', 'qcow2'];
        }
        for (const [img, data] of [[A, 'qemu.raw'], [B, 'ours.raw']] as const) {
          const o = kind === 'raw' ? [...opts, `data_file=${path.join(dir, data)}`, 'data_file_raw=on'] : opts;
          qemuImg(['create', '-q', '-f', 'qcow2', '-o', o.join(','), ...backing, img, String(size)], dir);
        }
        // A shared prefix applied by qemu-io to both (compressed clusters included where allowed).
        const prefix = randomOps(rand, 4, size, cs, false).map(toQemuIo);
        // Compressed writes need an unallocated cluster: first, on the fresh image.
        if (kind !== 'raw') prefix.unshift(`write -c -P 0x77 ${5 * cs} ${cs}`);
        for (const img of [A, B]) qemuIo(['-f', 'qcow2', ...prefix.flatMap((c) => ['-c', c]), img]);

        const ops = randomOps(rand, 6 + Math.floor(rand() * 10), size, cs, true);
        qemuIo(['-f', 'qcow2', ...ops.map(toQemuIo).flatMap((c) => ['-c', c]), A]);
        applyOurs(B, ops);

        const cmp = runQemuImg(['compare', A, B]);
        expect(cmp.stdout + cmp.stderr, ops.map(toQemuIo).join('\n')).toContain('Images are identical.');
        const chk = runQemuImg(['check', B]);
        expect(chk.status, chk.stdout + chk.stderr).toBe(0);
        if (kind === 'raw') {
          const raw = runQemuImg(['compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'ours.raw'), B]);
          expect(raw.stdout + raw.stderr).toContain('Images are identical.');
          expect(qemuMap(B), ops.map(toQemuIo).join('\n')).toEqual(qemuMap(A));
        }
        // Our map agrees with qemu-img map on the image we wrote.
        const ours = mapImage(B).map(({ filename: _f, ...e }) => e);
        expect(ours).toEqual(qemuMap(B));
        results.sequences++;
        results.ops += ops.length;
      });
    }
  }
});
