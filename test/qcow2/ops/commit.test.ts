// commit against qemu-img 7.2: the same chain committed by qemu-img in one folder and by our CLI
// in another gives the same output and exit status, a base with the same guest contents (qemu-img
// compare), clean by qemu-img check, and the same top afterwards. The cases aim at the paths of
// ops/commit.ts: new clusters placed and written off the calling thread, clusters the base
// already has (written in place), runs across L2 tables, partial clusters (a base with larger
// clusters than the granularity), zero and compressed clusters above, a base shorter than its
// overlay, a raw base, a chain of three, and the top emptied.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { missingTools, qemuImg, runOurs, shOk, skipReason } from './amend-helpers';

const and = (...s: string[]) => s.join(' && ');
const create = (name: string, size: string, opts = '') => `$QEMU_IMG create -q -f qcow2 ${opts} ${name} ${size}`;
const overlay = (name: string, backing: string, fmt = 'qcow2', size = '') => `$QEMU_IMG create -q -f qcow2 -F ${fmt} -b ${backing} ${name} ${size}`;
const io = (name: string, ...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${name} >/dev/null`;

interface Case { name: string; setup: string; args: string[]; base: string; top: string; fmt?: string }

const CASES: Case[] = [
  {
    name: 'new clusters in the base, across L2 tables (4 KiB clusters), -d',
    setup: and(
      create('base.qcow2', '16M', '-o cluster_size=4096'), io('base.qcow2', 'write -P 1 0 1M', 'write -P 2 6M 64k'),
      overlay('top.qcow2', 'base.qcow2'), io('top.qcow2', 'write -P 3 1900k 600k', 'write -P 4 9M 3M', 'write -P 5 15M 1M'),
    ),
    args: ['-d', 'top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
  {
    name: 'clusters the base already has, overwritten in place, and the top emptied',
    setup: and(
      create('base.qcow2', '64M'), io('base.qcow2', 'write -P 1 0 8M'),
      overlay('top.qcow2', 'base.qcow2'), io('top.qcow2', 'write -P 2 1M 2M', 'write -P 3 7M 2M', 'write -P 4 30M 1M'),
    ),
    args: ['top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
  {
    name: 'a base with 2 MiB clusters (partial clusters at 64 KiB granularity)',
    setup: and(
      create('base.qcow2', '32M', '-o cluster_size=2M'), io('base.qcow2', 'write -P 1 0 3M'),
      overlay('top.qcow2', 'base.qcow2', 'qcow2', ''), io('top.qcow2', 'write -P 2 1088k 128k', 'write -P 3 5M 4M', 'write -P 4 20M 64k'),
    ),
    args: ['-d', 'top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
  {
    name: 'zero clusters and compressed clusters above',
    setup: and(
      create('base.qcow2', '16M'), io('base.qcow2', 'write -P 1 0 4M'),
      create('data.qcow2', '16M'), io('data.qcow2', 'write -P 6 0 2M', 'write -P 7 10M 1M'),
      '$QEMU_IMG convert -c -O qcow2 -F qcow2 -B base.qcow2 data.qcow2 top.qcow2', io('top.qcow2', 'write -z 3M 512k', 'write -z -u 12M 1M'),
    ),
    args: ['-d', 'top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
  {
    name: 'a base shorter than its overlay (it grows)',
    setup: and(
      create('base.qcow2', '4M'), io('base.qcow2', 'write -P 1 0 4M'),
      overlay('top.qcow2', 'base.qcow2', 'qcow2', '24M'), io('top.qcow2', 'write -P 2 3M 2M', 'write -P 3 20M 4M'),
    ),
    args: ['-d', 'top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
  {
    name: 'a raw base',
    setup: and(
      '$QEMU_IMG create -q -f raw base.raw 16M', "$QEMU_IO -f raw -c 'write -P 1 0 2M' base.raw >/dev/null",
      overlay('top.qcow2', 'base.raw', 'raw'), io('top.qcow2', 'write -P 2 1M 3M', 'write -z 8M 1M', 'write -P 3 15M 1M'),
    ),
    args: ['-d', 'top.qcow2'], base: 'base.raw', top: 'top.qcow2', fmt: 'raw',
  },
  {
    name: 'a chain of three, committed into the bottom (-b)',
    setup: and(
      create('base.qcow2', '16M'), io('base.qcow2', 'write -P 1 0 2M'),
      overlay('mid.qcow2', 'base.qcow2'), io('mid.qcow2', 'write -P 2 1M 2M', 'write -P 3 8M 1M'),
      overlay('top.qcow2', 'mid.qcow2'), io('top.qcow2', 'write -P 4 1536k 1M', 'write -P 5 12M 2M'),
    ),
    args: ['-b', 'base.qcow2', 'top.qcow2'], base: 'base.qcow2', top: 'top.qcow2',
  },
];

const SKIP = skipReason('commit');
let root = '';

describe.skipIf(SKIP !== '')(`commit against qemu-img${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-commit-'));
  });
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  CASES.forEach((c, n) => {
    it(`commits_as_qemu_img: ${c.name}`, async () => {
      const q = join(root, `c${n}`, 'q');
      const o = join(root, `c${n}`, 'o');
      mkdirSync(q, { recursive: true });
      mkdirSync(o, { recursive: true });
      shOk(c.setup, q);
      shOk(`cp -a ${q}/. ${o}/`, o);
      const before = qemuImg(['compare', '-F', 'qcow2', ...(c.fmt ? ['-f', c.fmt] : []), join(q, c.base), join(q, c.top)], q);
      expect(before.status, 'the top holds data the base does not').toBe(1);
      const theirs = qemuImg(['commit', ...c.args], q);
      const ours = await runOurs(['commit', ...c.args], o);
      expect(ours.stderr.replace(/^qcow2:/gm, 'qemu-img:')).toBe(theirs.stderr);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.status).toBe(theirs.status);
      const fmt = c.fmt ?? 'qcow2';
      const same = qemuImg(['compare', '-f', fmt, '-F', fmt, join(q, c.base), join(o, c.base)], o);
      expect(same.stdout + same.stderr).toBe('Images are identical.\n');
      if (fmt === 'qcow2') expect(qemuImg(['check', join(o, c.base)], o).status).toBe(0);
      const top = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', join(q, c.top), join(o, c.top)], o);
      expect(top.stdout + top.stderr).toBe('Images are identical.\n');
      expect(qemuImg(['check', join(o, c.top)], o).status).toBe(0);
    });
  });
});
