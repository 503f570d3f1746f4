// The data path keeps persistent bitmaps valid, as QEMU does: the same guest writes, zeroes and
// discards made through qemu-io (a QEMU writer) and through this engine leave the same dirty
// bits, as QEMU itself reads them (qemu-nbd -B over each image), and as our reader reads them;
// the images check clean and report the same bitmaps. A writer that dies before close leaves
// the bitmaps flagged in-use, which QEMU and our facts both report as inconsistent.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImageForWrite, readImageFacts } from '../../../provider/engines/native/sync';
import { bitmapImage, dumpBitmap, rebaseImage } from '../../../provider/engines/native/ops';
import { dirtyExtents } from '../../helpers/qsd';
import { prng, qemuImg, qemuIo, skipWithoutQemuTools, tempDir } from './harness';

type Op = { kind: 'write' | 'zero' | 'discard'; offset: number; length: number; pattern: number };

function randomOps(seed: number, size: number, n: number): Op[] {
  const r = prng(seed);
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const x = r();
    const kind = x < 0.6 ? 'write' : x < 0.8 ? 'zero' : 'discard';
    const unit = r() < 0.5 ? 512 : 4096;
    const offset = Math.floor((r() * size) / unit) * unit;
    const length = Math.min(size - offset, unit * (1 + Math.floor(r() * 40)));
    ops.push({ kind, offset, length, pattern: 1 + Math.floor(r() * 250) });
  }
  return ops;
}

function qemuIoArgs(ops: Op[]): string[] {
  return ops.flatMap((o) => ['-c', o.kind === 'write' ? `write -q -P ${o.pattern} ${o.offset} ${o.length}`
    : o.kind === 'zero' ? `write -q -z ${o.offset} ${o.length}` : `discard -q ${o.offset} ${o.length}`]);
}

function ours(file: string, ops: Op[]): void {
  const img = openImageForWrite(file);
  try {
    for (const o of ops) {
      if (o.kind === 'write') img.write(o.offset, Buffer.alloc(o.length, o.pattern));
      else if (o.kind === 'zero') img.writeZeroes(o.offset, o.length);
      else img.discard(o.offset, o.length);
    }
  } finally {
    img.close();
  }
}

const asNumbers = (e: Array<{ offset: bigint; length: bigint }>) => e.map((x) => ({ start: Number(x.offset), length: Number(x.length) }));

interface Case { name: string; create: string[]; size: number; bitmaps: Array<[string, string[]]> }

const CASES: Case[] = [
  { name: 'default', create: [], size: 4 << 20, bitmaps: [['fine', ['-g', '512']], ['cluster', []], ['coarse', ['-g', '2M']], ['off', ['--disable']]] },
  { name: 'cluster-512', create: ['-o', 'cluster_size=512'], size: 2 << 20, bitmaps: [['b', ['-g', '512']], ['c', ['-g', '64k']]] },
  { name: 'data-file-raw', create: ['-o', 'data_file=DIR/a.raw,data_file_raw=on'], size: 4 << 20, bitmaps: [['b', ['-g', '4k']]] },
  { name: 'refcount-1', create: ['-o', 'refcount_bits=1'], size: 4 << 20, bitmaps: [['b', ['-g', '4k']]] },
];

describe.skipIf(skipWithoutQemuTools('guest-bitmaps'))('the data path records writes in persistent bitmaps as QEMU does', () => {
  let dir: string;
  beforeAll(() => { dir = tempDir('guest-bitmaps'); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it.each(CASES)('$name: the same dirty bits as qemu-io after random writes', async (c) => {
    for (const seed of [1, 2]) {
      const d = path.join(dir, `${c.name}-${seed}`);
      fs.mkdirSync(d);
      const mk = (n: string) => {
        const f = path.join(d, `${n}.qcow2`);
        qemuImg(['create', '-q', '-f', 'qcow2', ...c.create.map((a) => a.replace('DIR/a.raw', path.join(d, `${n}.raw`))), f, String(c.size)]);
        for (const [b, args] of c.bitmaps) qemuImg(['bitmap', '--add', ...args, f, b]);
        return f;
      };
      const theirs = mk('theirs');
      const mine = mk('mine');
      const ops = randomOps(seed * 7919 + c.size, c.size, 30);
      qemuIo(['-f', 'qcow2', ...qemuIoArgs(ops), theirs]);
      ours(mine, ops);
      expect(qemuImg(['check', mine])).toContain('No errors were found');
      const info = (f: string) => JSON.parse(qemuImg(['info', '--output=json', f]).replace(/(mine|theirs)\.raw/, 'data.raw'))['format-specific'];
      expect(info(mine)).toEqual(info(theirs));
      for (const [b] of c.bitmaps) {
        const q = await dirtyExtents(theirs, b);
        if (b === 'off') expect(q).toEqual([]);
        else expect(q.length, `${c.name}/${b}: QEMU recorded writes`).toBeGreaterThan(0);
        expect(await dirtyExtents(mine, b), `${c.name}/${b}: QEMU reads our bits`).toEqual(q);
        expect(asNumbers(dumpBitmap(theirs, b).extents), `${c.name}/${b}: we read QEMU's bits`).toEqual(q);
      }
      if (c.name === 'data-file-raw') expect(fs.readFileSync(path.join(d, 'mine.raw')).equals(fs.readFileSync(path.join(d, 'theirs.raw')))).toBe(true);
    }
  });

  it('a_writer_that_dies_leaves_the_bitmaps_in_use_and_reported_inconsistent', () => {
    const f = path.join(dir, 'crash.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']);
    qemuImg(['bitmap', '--add', f, 'b']);
    // A process that writes and exits without closing the image, as a crashed VM does.
    const sync = path.resolve(__dirname, '../../../dist/provider/engines/native/sync.js');
    const r = spawnSync(process.execPath, ['-e', `const img = require(${JSON.stringify(sync)}).openImageForWrite(${JSON.stringify(f)});
      img.write(0, Buffer.alloc(4096, 1)); img.commit(); process.exit(0);`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const facts = readImageFacts(f);
    expect(facts.detail!.bitmaps).toEqual([{ name: 'b', granularity: 65536, flags: ['in-use', 'auto'], inconsistent: true }]);
    expect(qemuImg(['info', '-U', f])).toContain('in-use');
    expect(() => dumpBitmap(f, 'b')).toThrow(/Bitmap 'b' is inconsistent and cannot be used/);
    // The way out: remove it and add it anew (its record of changes is lost either way).
    bitmapImage(f, 'b', [{ op: 'remove' }, { op: 'add' }]);
    expect(readImageFacts(f).detail!.bitmaps).toEqual([{ name: 'b', granularity: 65536, flags: ['auto'], inconsistent: false }]);
    expect(dumpBitmap(f, 'b').extents).toEqual([]);
    expect(qemuImg(['check', f])).toContain('No errors were found');
  });

  it('a_safe_rebase_records_the_clusters_it_copies_as_qemu_img_rebase_does', async () => {
    const d = path.join(dir, 'rebase');
    fs.mkdirSync(d);
    const base = path.join(d, 'base.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '1M']);
    qemuIo(['-f', 'qcow2', '-c', 'write -q -P 7 64k 64k', base]);
    for (const n of ['theirs', 'mine']) {
      const f = path.join(d, `${n}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', f]);
      qemuImg(['bitmap', '--add', '-g', '4k', f, 'b']);
    }
    qemuImg(['rebase', '-b', '', path.join(d, 'theirs.qcow2')]);
    rebaseImage(path.join(d, 'mine.qcow2'), '', undefined);
    expect(await dirtyExtents(path.join(d, 'mine.qcow2'), 'b')).toEqual(await dirtyExtents(path.join(d, 'theirs.qcow2'), 'b'));
    expect(qemuImg(['check', path.join(d, 'mine.qcow2')])).toContain('No errors were found');
  });
});
