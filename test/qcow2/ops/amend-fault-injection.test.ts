// All or nothing, proved by faults: an amend interrupted at any write leaves either the old
// image or the new one, never a corrupt one.
//
// In-process trials: a BlockFile wrapper (AmendBehaviour.wrapFile) throws at the k-th mutation
// (write or truncate) of the image file, for every k from 1 to (mutations of an uninjected run)+1,
// in three variants: the failing write writes nothing; it writes only up to its first 4 KiB page
// boundary (a kill mid-write at a page boundary); it writes its first half, in whole pages.
// Real kills: the CLI is spawned on a larger image and SIGKILLed after random delays.
//
// Each outcome is classified with qemu-img: `check` must exit 0 or 3 (leaks allowed, corruption
// never); `info --output=json` (minus filename and actual-size) must equal the old image's or
// the new image's; and `compare` against that reference (old copy / uninjected result) must say
// identical. Anything else counts as a corruption, and there must be none.

import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { amendImage, rebaseUnsafe, resizeImage, type AmendBehaviour } from '../../../provider/engines/native/ops';
import type { BlockFile } from '../../../provider/qcow2/io/blockfile';
import type { AmendRequest } from '../../../provider/rules/types';

import { cliArgv, infoOf, md5, missingTools, shOk, skipReason } from './amend-helpers';
import { FaultyFile, InjectedFault, VARIANTS, checkOf, classify, copyDir, line, record, tally, type Reference, type Tally } from './faults';
import { inDir, prng } from '../../helpers/common';

// ------------------------------------------------------------------------------------------------
// Operations

interface Operation {
  name: string;
  /** bash run in the base folder: makes img.qcow2 (and its data file) with qemu-img / qemu-io. */
  setup: string;
  run: (path: string, b: AmendBehaviour) => unknown;
  /** The resize is written in place in qemu-img's layout (ops/resize.ts), not planned as amend. */
  inPlace?: true;
}

const IMG = 'img.qcow2';
const mk = (opts: string, size: string) => `$QEMU_IMG create -q -f qcow2 ${opts ? `-o ${opts} ` : ''}${IMG} ${size}`;
const io = (...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${IMG} >/dev/null`;
const and = (...s: string[]) => s.join(' && ');
const amendOp = (req: AmendRequest) => (p: string, b: AmendBehaviour) => amendImage(p, req, b);
const SET_DIRTY = `printf '\\001' | dd of=${IMG} bs=1 seek=79 conv=notrunc status=none`;

const OPERATIONS: Operation[] = [
  {
    name: 'refcount_bits 16 -> 64 (512 B clusters, data)',
    setup: and(mk('cluster_size=512', '4M'), io('write -P 0x11 0 512k', 'write -P 0x22 3M 256k')),
    run: amendOp({ refcountBits: 64 }),
  },
  { name: 'refcount_bits 16 -> 1 (fresh image)', setup: mk('', '64M'), run: amendOp({ refcountBits: 1 }) },
  {
    name: 'size grow on data-file-raw, L1 8 -> 20 entries (4 KiB clusters)',
    setup: and(mk('data_file=data.raw,data_file_raw=on,cluster_size=4096', '16M'), io('write -P 0x33 0 1M', 'write -P 0x44 15M 1M')),
    run: amendOp({ size: 40n << 20n }),
  },
  {
    name: 'shrink a preallocated image 32M -> 10M+512 (4 KiB clusters)',
    setup: and(mk('preallocation=metadata,cluster_size=4096', '32M'), io('write -P 0x55 9M 2M', 'write -P 0x66 30M 1M')),
    run: (p, b) => resizeImage(p, 10485760n + 512n, { ...b, allowShrink: true }),
    inPlace: true,
  },
  {
    name: 'resize --preallocation=full 1000k -> 3000k, old end inside a cluster (4 KiB clusters)',
    setup: and(mk('cluster_size=4096', '1000k'), io('write -P 0x5a 0 500k')),
    run: (p, b) => resizeImage(p, 3000n * 1024n, { ...b, preallocation: 'full' }),
  },
  {
    name: 'resize --preallocation=metadata over a longer backing file from inside a subcluster (extended L2)',
    setup: and(`$QEMU_IMG create -q -f raw base.raw 1M`, `$QEMU_IO -f raw -c 'write -P 0xff 0 1M' base.raw >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o extended_l2=on,cluster_size=16k -b base.raw -F raw ${IMG} 503k`),
    run: (p, b) => resizeImage(p, 1013n * 1024n, { ...b, preallocation: 'metadata' }),
  },
  {
    name: 'resize --preallocation=metadata, extended L2, old end in an owned cluster whose last subcluster is the backing file\'s (copied in place)',
    setup: and(`$QEMU_IMG create -q -f raw base.raw 2M`, `$QEMU_IO -f raw -c 'write -P 0x99 0 2M' base.raw >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o extended_l2=on -b base.raw -F raw ${IMG} 503k`, io('write -P 0x11 448k 50k')),
    run: (p, b) => resizeImage(p, 1013n * 1024n, { ...b, preallocation: 'metadata' }),
  },
  {
    name: 'resize --preallocation=falloc, old end in a cluster shared with a snapshot (4 KiB clusters)',
    setup: and(mk('cluster_size=4096', '1000k'), io('write -P 0x5b 0 1000k'), `$QEMU_IMG snapshot -c s ${IMG}`),
    run: (p, b) => resizeImage(p, 2000n * 1024n, { ...b, preallocation: 'falloc' }),
  },
  // resize in qemu-img's layout (ops/resize.ts): tables edited in place, stages committed by
  // header writes where QEMU writes its header. Between a stage's raised refcounts and its
  // lowered ones a crash leaks clusters, as qemu-img's own order does at the same points.
  {
    name: 'resize --shrink in place across L2 tables, refcount blocks dropped (4 KiB clusters)',
    setup: and(mk('cluster_size=4096', '64M'), io('write -P 0x71 0 40M', 'write -P 0x72 60M 1M')),
    run: (p, b) => resizeImage(p, (1n << 20n) + 512n, { ...b, allowShrink: true }),
    inPlace: true,
  },
  {
    name: 'resize --shrink in place with an internal snapshot: the shared L2 table copied (64 KiB clusters)',
    setup: and(mk('', '1G'), io('write -P 0x73 0 1M', 'write -P 0x74 511M 2M', 'write -P 0x75 700M 64k'), `$QEMU_IMG snapshot -c s ${IMG}`),
    run: (p, b) => resizeImage(p, 600n << 20n, { ...b, allowShrink: true }),
    inPlace: true,
  },
  {
    name: 'resize --shrink in place with an external data file (4 KiB clusters)',
    setup: and(mk('data_file=data.raw,cluster_size=4096', '64M'), io('write -P 0x76 0 8M', 'write -P 0x77 60M 1M')),
    run: (p, b) => resizeImage(p, 4n << 20n, { ...b, allowShrink: true }),
    inPlace: true,
  },
  {
    name: 'resize grow in place over a longer backing file: new L1 (its own commit), new ZERO L2 tables (4 KiB clusters)',
    setup: and(`$QEMU_IMG create -q -f qcow2 base.qcow2 64M`, `$QEMU_IO -c 'write -P 0x42 0 64M' base.qcow2 >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ${IMG} 3M`, io('write -P 0x21 1M 64k', 'write -P 0x22 2M 1M')),
    run: (p, b) => resizeImage(p, 20n << 20n, b),
    inPlace: true,
  },
  {
    name: 'resize grow in place, extended L2 over a longer backing file, old end inside an owned subcluster',
    setup: and(`$QEMU_IMG create -q -f raw base.raw 2M`, `$QEMU_IO -f raw -c 'write -P 0x99 0 2M' base.raw >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o extended_l2=on -b base.raw -F raw ${IMG} 503k`, io('write -P 0x11 448k 55k')),
    run: (p, b) => resizeImage(p, 1013n * 1024n, b),
    inPlace: true,
  },
  {
    name: 'compat downgrade with zero clusters (4 KiB clusters)',
    setup: and(mk('cluster_size=4096', '32M'), io('write -P 0x66 0 2M', 'write -z 0 64k', 'write -z -u 512k 32k', 'write -z 4M 64k', 'write -z -u 8M 16k')),
    run: amendOp({ compat: '0.10' }),
  },
  {
    name: 'compat downgrade with an internal snapshot: zero clusters in the shared L2 table and in a copy, expanded in place (4 KiB clusters)',
    setup: and(mk('cluster_size=4096', '32M'), io('write -P 0x66 0 2M', 'write -z 0 64k', 'write -z -u 512k 32k'), `$QEMU_IMG snapshot -c s1 ${IMG}`,
      io('write -P 0x67 4M 64k', 'write -z 4M 32k', 'write -z -u 8M 16k')),
    run: amendOp({ compat: '0.10' }),
  },
  {
    // New clusters and refcount blocks: a crash after the refcounts and before the L2 tables
    // leaves them leaked (check exit 3), as qemu-img's own order does.
    name: 'compat downgrade over a backing file with a snapshot: plain zero clusters expanded to new clusters, new refcount blocks (512 B clusters)',
    setup: and(`$QEMU_IMG create -q -f qcow2 base.qcow2 4M`, `$QEMU_IO -c 'write -P 0x42 0 4M' base.qcow2 >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 ${IMG} 4M`, io('write -P 0x31 1M 96k', 'write -z -u 0 16k'),
      `$QEMU_IMG snapshot -c s1 ${IMG}`, io('write -z -u 2M 16k')),
    run: amendOp({ compat: '0.10' }),
  },
  {
    name: 'lazy_refcounts off on a dirty image',
    setup: and(mk('lazy_refcounts=on,cluster_size=4096', '32M'), io('write -P 0x77 0 1M', 'write -P 0x78 20M 64k'), SET_DIRTY),
    run: amendOp({ lazyRefcounts: false }),
  },
  { name: 'header only: lazy_refcounts on', setup: and(mk('', '64M'), io('write -P 1 0 1M')), run: amendOp({ lazyRefcounts: true }) },
  { name: 'header only: compat 0.10 -> 1.1', setup: and(mk('compat=0.10', '64M'), io('write -P 2 0 1M')), run: amendOp({ compat: '1.1' }) },
  { name: 'header only: data_file_raw off', setup: and(mk('data_file=data.raw,data_file_raw=on', '16M'), io('write -P 3 0 1M')), run: amendOp({ dataFileRaw: false }) },
  {
    name: 'header only: rebase -u onto a backing file',
    setup: and(`$QEMU_IMG create -q -f qcow2 base.qcow2 64M`, `$QEMU_IO -c 'write -P 9 0 4M' base.qcow2 >/dev/null`, mk('', '64M'), io('write -P 4 1M 1M')),
    run: (p, b) => rebaseUnsafe(p, 'base.qcow2', 'qcow2', b),
  },
  { name: 'header only: grow within the L1', setup: and(mk('', '64M'), io('write -P 5 0 1M')), run: amendOp({ size: 128n << 20n }) },
];

// ------------------------------------------------------------------------------------------------

const SKIP = skipReason('amend/fault-injection');
let root = '';
const summary: Array<[string, Tally]> = [];


describe.skipIf(SKIP !== '')(`amend fault injection${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-amend-fault-'));
  });
  afterAll(() => {
    for (const [name, t] of summary) console.log(`[fault-injection] ${line(name, t)}`);
    const all = summary.reduce((a, [, t]) => ({ ...a, trials: a.trials + t.trials, old: a.old + t.old, new: a.new + t.new, corrupt: a.corrupt + t.corrupt }), tally());
    if (summary.length) console.log(`[fault-injection] ${line('all operations', all)}`);
    if (root && !process.env.KEEP_AMEND_TMP) rmSync(root, { recursive: true, force: true });
  });

  OPERATIONS.forEach((op, n) => {
    it(`injected write faults: ${op.name}`, () => {
      const dir = join(root, `op${n}`);
      const base = join(dir, 'base');
      const neu = join(dir, 'new');
      const trial = join(dir, 'trial');
      mkdirSync(base, { recursive: true });
      shOk(op.setup, base);
      const old: Reference = { dir: base, info: infoOf(base) };
      expect(checkOf(base).status, 'the old image must be clean').toBe(0);

      // The uninjected run: the new reference, and the number of mutations to walk through.
      copyDir(base, neu);
      let counter: FaultyFile | undefined;
      const result = inDir(neu, () => op.run(join(neu, IMG), { wrapFile: (f) => (counter = new FaultyFile(f, 0, 'none')) }));
      expect(typeof result === 'object' && result !== null && 'stages' in result, 'written in place (ops/resize.ts)').toBe(op.inPlace === true);
      const mutations = counter?.mutations ?? 0;
      const ref: Reference = { dir: neu, info: infoOf(neu) };
      expect(checkOf(neu).status, 'the uninjected result must be clean').toBe(0);
      expect(ref.info.norm, 'the operation must change what info shows').not.toEqual(old.info.norm);
      expect(mutations).toBeGreaterThan(0);

      const t = tally();
      for (const variant of VARIANTS) {
        for (let k = 1; k <= mutations + 1; k++) {
          copyDir(base, trial);
          let injected = false;
          try {
            inDir(trial, () => op.run(join(trial, IMG), { wrapFile: (f) => new FaultyFile(f, k, variant) }));
          } catch (e) {
            if (!(e instanceof InjectedFault)) throw e;
            injected = true;
          }
          expect(injected, `k=${k} of ${mutations} mutations`).toBe(k <= mutations);
          record(t, classify(trial, old, ref), `${variant} k=${k}/${mutations}`);
        }
      }
      summary.push([`${op.name} [${mutations} mutations per run x ${VARIANTS.length} tear variants]`, t]);
      expect(t.failures, t.failures.join('\n\n')).toEqual([]);
      expect(t.corrupt).toBe(0);
      // The walk must see both sides of the commit: every k before it leaves the old image,
      // and the run without a fault the new one.
      expect(t.old).toBeGreaterThan(0);
      expect(t.new).toBeGreaterThan(0);
    });
  });

  it('has at least 200 injected trials in total', () => {
    const total = summary.reduce((s, [, t]) => s + t.trials, 0);
    expect(summary.length).toBe(OPERATIONS.length);
    expect(total).toBeGreaterThanOrEqual(200);
  });

  /**
   * kill -9 of the CLI at random moments of `args` on the image `setup` makes in a folder of
   * its own (`tag`), each outcome classified against the old image and the uninjected result.
   */
  async function killTrials(tag: string, setup: string, args: string[], describeImage: string, defaultTrials = 40): Promise<void> {
    const trials = Number(process.env.AMEND_KILL_TRIALS ?? defaultTrials);
    const seed = Number(process.env.AMEND_KILL_SEED ?? 20240607);
    const rnd = prng(seed);
    const dir = join(root, tag);
    const base = join(dir, 'base');
    const neu = join(dir, 'new');
    const trial = join(dir, 'trial');
    mkdirSync(base, { recursive: true });
    shOk(setup, base);
    const old: Reference = { dir: base, info: infoOf(base) };

    // Half of the trials run on a "slow disk": a preload makes every fs.writeSync busy-wait
    // 0.3 ms first (the CLI's logic is untouched), which widens the write phase so that more
    // kills land between the first write and the commit.
    const slowDisk = join(root, 'slow-disk.js');
    writeFileSync(slowDisk, `const fs = require('fs');\nconst w = fs.writeSync;\n` +
      `fs.writeSync = function (...a) { const end = process.hrtime.bigint() + 300000n; while (process.hrtime.bigint() < end); return w.apply(this, a); };\n`);

    const runCli = (cwd: string, slow: boolean, killAfterMs?: number) =>
      new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>((resolveRun, reject) => {
        const [node, ...rest] = cliArgv(args);
        const argv = slow ? ['-r', slowDisk, ...rest] : rest;
        const t0 = process.hrtime.bigint();
        const child = spawn(node!, argv, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr!.on('data', (d) => { stderr += String(d); });
        const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
        child.on('error', reject);
        child.on('exit', (code, signal) => {
          if (timer) clearTimeout(timer);
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          if (code !== 0 && signal === null) reject(new Error(`CLI failed (exit ${code}): ${stderr}`));
          else resolveRun({ code, signal, ms });
        });
      });

    // The uninjected result, and how long a whole run takes (the kills spread over it).
    copyDir(base, neu);
    await runCli(neu, false);
    const ref: Reference = { dir: neu, info: infoOf(neu) };
    expect(checkOf(neu).status).toBe(0);

    const t = tally();
    const baseSize = statSync(join(base, IMG)).size;
    const baseMd5 = md5(join(base, IMG));
    let killed = 0;
    let midway = 0; // killed after it had written something, before the commit
    const wholes: string[] = [];
    for (const slow of [false, true]) {
      copyDir(base, trial);
      const whole = (await runCli(trial, slow)).ms;
      wholes.push(`${whole.toFixed(0)} ms${slow ? ' (slow disk)' : ''}`);
      // Most of a run is Node's start-up and the plan; the writes come last. The first trials
      // spread over the second half of a run; the rest aim at the window between the latest
      // delay that left the file untouched and the earliest that gave the new image.
      let untouchedMax = whole * 0.5;
      let newMin = whole * 1.05;
      for (let i = 0; i < trials / 2; i++) {
        copyDir(base, trial);
        const [lo, hi] = untouchedMax < newMin ? [untouchedMax, newMin] : [newMin, untouchedMax];
        const delay = Math.max(1, i < 6 ? Math.round(whole * (0.5 + 0.55 * rnd())) : Math.round(lo - 3 + (hi - lo + 6) * rnd()));
        const r = await runCli(trial, slow, delay);
        if (r.signal === 'SIGKILL') killed++;
        const res = classify(trial, old, ref);
        const touched = statSync(join(trial, IMG)).size !== baseSize || md5(join(trial, IMG)) !== baseMd5;
        if (res.outcome === 'old' && touched) midway++;
        if (res.outcome === 'old' && !touched) untouchedMax = Math.max(untouchedMax, delay);
        if (res.outcome === 'new') newMin = Math.min(newMin, delay);
        record(t, res, `kill after ${delay} ms (whole run ${whole.toFixed(0)} ms${slow ? ', slow disk' : ''})`);
      }
    }
    const name = `kill -9 during ${args.join(' ')} (${describeImage}), seed ${seed}`;
    summary.push([`${name} [${killed} killed before exit, ${midway} of the old outcomes killed mid-write ` +
      `(file already changed); whole run ${wholes.join(', ')}]`, t]);
    expect(t.failures, t.failures.join('\n\n')).toEqual([]);
    expect(t.corrupt).toBe(0);
    expect(existsSync(join(trial, IMG))).toBe(true);
  }

  // 512 B clusters: about 50,000 clusters in use, so the 64-bit rebuild writes ~800 refblocks,
  // and the grow writes a 256 KiB L1: a run takes long enough to be killed in the middle.
  const KILL_IMAGE = and(mk('cluster_size=512', '64M'), io('write -P 0x3c 0 16M', 'write -P 0x4d 40M 8M'));

  it('kill -9 of the CLI at random moments: amend -o refcount_bits=64,size=1G', async () => {
    await killTrials('kill', KILL_IMAGE, ['amend', '-o', 'refcount_bits=64,size=1G', IMG], '512 B clusters, 64M');
  }, 120_000);

  // In place (ops/resize.ts): the shrink commits its size first, then clears the entries of
  // ~500 L2 tables and drops refcount blocks (kills after the commit leave the new image, at
  // most with leaks); the grow writes a new L1 (its own commit), then ZERO tables and the size.
  it('kill -9 of the CLI at random moments: resize --shrink in place', async () => {
    const setup = and(mk('cluster_size=512', '24M'), io('write -P 0x3c 0 12M', 'write -P 0x4d 20M 4M'));
    await killTrials('kill-shrink', setup, ['resize', '--shrink', IMG, '1M'], '512 B clusters, 24M', 24);
  }, 240_000);

  it('kill -9 of the CLI at random moments: resize grow in place over a longer backing file', async () => {
    const setup = and(`$QEMU_IMG create -q -f qcow2 -o cluster_size=512 base.qcow2 64M`, `$QEMU_IO -c 'write -P 0x42 0 8M' -c 'write -P 0x43 40M 8M' base.qcow2 >/dev/null`,
      `$QEMU_IMG create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 ${IMG} 1M`, io('write -P 0x21 0 512k'));
    await killTrials('kill-grow', setup, ['resize', IMG, '64M'], '512 B clusters, 1M over a 64M backing file', 24);
  }, 240_000);
});
