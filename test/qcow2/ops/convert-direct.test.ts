// Imports copied file to file (ops/convert.ts placeDirect, io/copy-range.ts): the image is the
// one the buffered copy (copyGuest, the synchronous import) writes, byte for byte, and holds
// qemu-img's guest view in no more clusters than qemu-img convert's, whichever way the bytes
// travel: copy_file_range (consecutive windows' copies joined into one call), or the buffered
// fallback where the kernel refuses (a source on tmpfs, the image on another file system: EXDEV). Sources: a raw file whose data runs straddle L2 tables of the new image, with
// all-zero clusters (not allocated, as qemu-img leaves them), clusters whose first page is zeros
// and the rest not, holes and an unaligned tail; a chain of three layers, flattened.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { importImage, importImageAsync } from '../../../provider/engines/native/ops';
import { copyTotals } from '../../../provider/qcow2/io/copy-range';
import { libcUnavailable } from '../../../provider/qcow2/io/libc';
import { prng, qemuImg, qemuIo, runQemuImg, skipWithoutQemuTools, tempDir } from '../guest/harness';

/**
 * When set, the next kernel copy waits this many turns of the event loop before it runs: the
 * copies placed meanwhile queue behind it, as they do behind a copy the kernel is busy with, but
 * counted in the importer's own steps (one turn per window placed), not in time.
 */
let holdNextCopy = 0;
/** When set, the kernel copy after this many more fails with this error (as a failed thread call would). */
let failCopy: { after: number; error: Error } | undefined;
vi.mock('../../../provider/qcow2/io/libc', async (importOriginal) => {
  const m = await importOriginal<typeof import('../../../provider/qcow2/io/libc')>();
  return {
    ...m,
    libc: () => {
      const l = m.libc();
      return l && {
        ...l,
        copyFileRangeAsync: async (...args: Parameters<typeof l.copyFileRangeAsync>) => {
          for (let turns = holdNextCopy, i = (holdNextCopy = 0); i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
          if (failCopy !== undefined && failCopy.after-- === 0) {
            const { error } = failCopy;
            failCopy = undefined;
            throw error;
          }
          return l.copyFileRangeAsync(...args);
        },
      };
    },
  };
});

/** A raw file: 6 MiB of runs over 8 MiB (+ a tail of 1000 bytes), in `dir`. */
function makeRaw(file: string): void {
  const rand = prng(7);
  const fd = fs.openSync(file, 'w');
  const MiB = 1 << 20;
  // Runs across the 2 MiB (4 KiB clusters) and 32 KiB (512-byte clusters) L2 boundaries.
  for (const [at, len] of [[MiB + 512 * 1024, 3 * MiB], [5 * MiB - 4096, 2 * MiB + 8192]] as const) {
    const b = Buffer.from(Array.from({ length: len }, () => Math.floor(rand() * 256)));
    // An all-zero 64 KiB cluster and a cluster whose first 4 KiB are zeros, inside the run.
    b.fill(0, 256 * 1024, 320 * 1024);
    b.fill(0, 512 * 1024, 516 * 1024);
    fs.writeSync(fd, b, 0, len, at);
  }
  fs.ftruncateSync(fd, 8 * MiB + 1000);
  fs.writeSync(fd, Buffer.alloc(1000, 0x5a), 0, 1000, 8 * MiB);
  fs.closeSync(fd);
}

/** `ours` is `buffered` byte for byte, and holds `src`'s guest view in no more clusters than qemu-img's `theirs`. */
function sameImage(ours: string, buffered: string, theirs: string, src: string, fmt: string): void {
  expect(fs.readFileSync(ours).equals(fs.readFileSync(buffered))).toBe(true);
  const cmp = runQemuImg(['compare', '-f', fmt, '-F', 'qcow2', src, ours]);
  expect(cmp.stdout + cmp.stderr).toContain('Images are identical.');
  const clusters = (f: string) => (JSON.parse(runQemuImg(['check', '--output=json', f]).stdout) as { 'allocated-clusters': number })['allocated-clusters'];
  expect(clusters(ours)).toBeLessThanOrEqual(clusters(theirs));
}

/** base raw <- mid qcow2 (4 KiB clusters) <- top qcow2 (64 KiB), with writes over each other. */
function makeChain(dir: string): string {
  fs.copyFileSync(path.join(dir, 'src.raw'), path.join(dir, 'chain-base.raw'));
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'chain-base.raw', '-F', 'raw', path.join(dir, 'chain-mid.qcow2'), '9M']);
  qemuIo(['-f', 'qcow2', '-c', 'write -P 0x71 1500k 900k', '-c', 'write -z 3M 64k', '-c', 'write -P 0 6M 64k', path.join(dir, 'chain-mid.qcow2')]);
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', path.join(dir, 'chain-top.qcow2'), '9M']);
  qemuIo(['-f', 'qcow2', '-c', 'write -P 0x73 1M 128k', '-c', 'write -P 0x74 2M 2M', '-c', 'discard 5M 64k', path.join(dir, 'chain-top.qcow2')]);
  return path.join(dir, 'chain-top.qcow2');
}

const noLibc = libcUnavailable();

describe.skipIf(skipWithoutQemuTools('direct convert') || noLibc !== undefined)(`imports copied file to file${noLibc ? ` (${noLibc})` : ''}`, () => {
  const root = tempDir('convert-direct');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  let chain = '';
  beforeAll(() => {
    makeRaw(path.join(root, 'src.raw'));
    chain = makeChain(root);
  });

  const cases: Array<[string, number | undefined]> = [['default clusters', undefined], ['4 KiB clusters', 4096], ['512-byte clusters', 512]];
  for (const [name, clusterSize] of cases) {
    for (const kind of ['raw', 'chain'] as const) {
      it(`${kind} source, ${name}: the buffered copy's image byte for byte, the data copied by the kernel`, async () => {
        const src = kind === 'raw' ? path.join(root, 'src.raw') : chain;
        const fmt = kind === 'raw' ? 'raw' : 'qcow2';
        const tag = `${kind}-${clusterSize ?? 'default'}`;
        const ours = path.join(root, `${tag}.ours.qcow2`), buffered = path.join(root, `${tag}.sync.qcow2`), theirs = path.join(root, `${tag}.qemu.qcow2`);
        const opts = clusterSize ? { clusterSize } : {};
        const before = copyTotals.kernel, calls = copyTotals.calls;
        await importImageAsync(ours, opts, { path: src, format: fmt });
        const after = copyTotals.kernel;
        expect(after - before).toBeGreaterThan(1 << 20);
        // At least one call per piece that continues none before it: the raw file's three (below).
        if (kind === 'raw' && clusterSize === undefined) expect(copyTotals.calls - calls).toBeGreaterThanOrEqual(3);
        importImage(buffered, opts, { path: src, format: fmt });
        expect(copyTotals.kernel).toBe(after); // the synchronous import copies through its buffer
        qemuImg(['convert', '-f', fmt, '-O', 'qcow2', ...(clusterSize ? ['-o', `cluster_size=${clusterSize}`] : []), src, theirs]);
        sameImage(ours, buffered, theirs, src, fmt);
      });
    }
  }

  // The kernel takes the next copy as soon as it is free (a copy is never held back for the next
  // window's pieces); the pieces placed while it is busy join the copy queued last when they
  // continue it in both files, up to 8 MiB: the raw file's 5 MiB of runs, over 7 windows of 1 MiB,
  // in three calls (the first run is two pieces around its all-zero cluster; the second run's
  // last, partly zero cluster goes through the buffer).
  it('copies placed while the kernel is busy join the one queued before them', async () => {
    const src = path.join(root, 'src.raw');
    const ours = path.join(root, 'held.ours.qcow2'), buffered = path.join(root, 'held.sync.qcow2'), theirs = path.join(root, 'held.qemu.qcow2');
    const calls = copyTotals.calls;
    holdNextCopy = 64;
    await importImageAsync(ours, {}, { path: src, format: 'raw' });
    expect(copyTotals.calls - calls).toBe(3);
    importImage(buffered, {}, { path: src, format: 'raw' });
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', src, theirs]);
    sameImage(ours, buffered, theirs, src, 'raw');
  });

  // A copy that fails while others are placed behind it: the import ends with its error, waits
  // for nothing left running, and leaves no file (the image was still under its temporary name).
  it('a failed copy ends the import with its error and leaves nothing', async () => {
    const big = path.join(root, 'big.raw');
    const fd = fs.openSync(big, 'w');
    const rand = prng(11);
    const chunk = Buffer.from(Array.from({ length: 1 << 20 }, () => Math.floor(rand() * 256)));
    for (let i = 0; i < 24; i++) fs.writeSync(fd, chunk, 0, chunk.length, i * (1 << 20));
    fs.closeSync(fd);
    const ours = path.join(root, 'failed.qcow2');
    const before = fs.readdirSync(root).sort();
    failCopy = { after: 1, error: new Error('copy refused by the test') };
    await expect(importImageAsync(ours, {}, { path: big, format: 'raw' })).rejects.toThrow('copy refused by the test');
    expect(failCopy).toBeUndefined(); // the second copy was the one that failed
    expect(fs.readdirSync(root).sort()).toEqual(before);
    fs.rmSync(big);
  });

  const shm = fs.existsSync('/dev/shm') ? fs.mkdtempSync(path.join('/dev/shm', 'qcow2-convert-direct-')) : undefined;
  afterAll(() => { if (shm) fs.rmSync(shm, { recursive: true, force: true }); });
  it.skipIf(shm === undefined || fs.statSync(shm).dev === fs.statSync(root).dev)(
    'a source on another file system (tmpfs: EXDEV) goes through the buffered fallback, same bytes (needs /dev/shm on tmpfs)', async () => {
      const src = path.join(shm!, 'src.raw');
      fs.copyFileSync(path.join(root, 'src.raw'), src);
      const ours = path.join(root, 'shm.ours.qcow2'), buffered = path.join(root, 'shm.sync.qcow2'), theirs = path.join(root, 'shm.qemu.qcow2');
      const before = { ...copyTotals };
      await importImageAsync(ours, { clusterSize: 4096 }, { path: src, format: 'raw' });
      importImage(buffered, { clusterSize: 4096 }, { path: src, format: 'raw' });
      qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', src, theirs]);
      sameImage(ours, buffered, theirs, src, 'raw');
      expect(copyTotals.kernel - before.kernel).toBe(0);
      expect(copyTotals.fallback - before.fallback).toBeGreaterThan(1 << 20);
    });
});
