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
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importImage, importImageAsync } from '../../../provider/engines/native/ops';
import { copyTotals } from '../../../provider/qcow2/io/copy-range';
import { libcUnavailable } from '../../../provider/qcow2/io/libc';
import { prng, qemuImg, qemuIo, runQemuImg, skipWithoutQemuTools, tempDir } from '../guest/harness';

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
        // Copies that continue each other join (up to 8 MiB): the raw file's 5 MiB of runs, over
        // 7 windows of 1 MiB, in three calls (the first run is two pieces around its all-zero
        // cluster; the second run's last, partly zero cluster goes through the buffer).
        if (kind === 'raw' && clusterSize === undefined) expect(copyTotals.calls - calls).toBe(3);
        importImage(buffered, opts, { path: src, format: fmt });
        expect(copyTotals.kernel).toBe(after); // the synchronous import copies through its buffer
        qemuImg(['convert', '-f', fmt, '-O', 'qcow2', ...(clusterSize ? ['-o', `cluster_size=${clusterSize}`] : []), src, theirs]);
        sameImage(ours, buffered, theirs, src, fmt);
      });
    }
  }

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
