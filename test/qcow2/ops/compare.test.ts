// compare against qemu-img 7.2: the same two images compared by qemu-img and by our CLI give the
// same text on stdout and stderr and the same exit status. The cases aim at the paths of
// ops/compare.ts: equal runs compared whole, a first difference found inside a run (not at its
// first sector), one side unallocated (zeros checked), runs across L2 tables, compressed and
// zero clusters, a backing file shorter than its overlay, size mismatches, strict mode.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { missingTools, qemuImg, runOurs, shOk, skipReason } from './amend-helpers';

const and = (...s: string[]) => s.join(' && ');
const create = (name: string, size: string, opts = '') => `$QEMU_IMG create -q -f qcow2 ${opts} ${name} ${size}`;
const io = (name: string, ...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${name} >/dev/null`;

interface Case { name: string; setup: string; args: string[] }

const CASES: Case[] = [
  {
    name: 'identical images of different layout',
    setup: and(create('a.qcow2', '64M'), io('a.qcow2', 'write -P 1 0 3M', 'write -P 2 20M 5M'), '$QEMU_IMG convert -O qcow2 a.qcow2 b.qcow2'),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'a difference deep inside a run of data (not its first sector)',
    setup: and(create('a.qcow2', '64M'), io('a.qcow2', 'write -P 1 0 6M'), 'cp a.qcow2 b.qcow2', io('b.qcow2', 'write -P 2 3407360 512')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'a difference in the last sector of a run',
    setup: and(create('a.qcow2', '64M'), io('a.qcow2', 'write -P 1 0 2M'), 'cp a.qcow2 b.qcow2', io('b.qcow2', 'write -P 2 2096640 512')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'a difference in the first sector of a chunk',
    setup: and(create('a.qcow2', '64M'), io('a.qcow2', 'write -P 1 0 8M'), 'cp a.qcow2 b.qcow2', io('b.qcow2', 'write -P 2 4M 512')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'runs across L2 tables (4 KiB clusters), a difference past the boundary',
    setup: and(
      create('a.qcow2', '64M', '-o cluster_size=4096'), io('a.qcow2', 'write -P 3 1536k 3M'),
      create('b.qcow2', '64M', '-o cluster_size=4096'), io('b.qcow2', 'write -P 3 1536k 3M', 'write -P 4 2101760 1'),
    ),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'one side unallocated, the other holding a non-zero byte deep in zeros',
    setup: and(create('a.qcow2', '64M'), create('b.qcow2', '64M'), io('b.qcow2', 'write -P 0 1M 3M', 'write -P 9 3000000 1')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'one side unallocated, the other allocated zeros and zero clusters',
    setup: and(create('a.qcow2', '64M'), create('b.qcow2', '64M'), io('b.qcow2', 'write -P 0 1M 3M', 'write -z 8M 1M')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'compressed clusters against the same data uncompressed',
    setup: and(create('a.qcow2', '16M'), io('a.qcow2', 'write -P 5 0 1M', 'write -P 6 3M 200k'), '$QEMU_IMG convert -c -O qcow2 a.qcow2 b.qcow2'),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'compressed clusters with a difference',
    setup: and(
      create('a.qcow2', '16M'), io('a.qcow2', 'write -P 5 0 1M'), '$QEMU_IMG convert -c -O qcow2 a.qcow2 b.qcow2', io('a.qcow2', 'write -P 7 600000 10'),
    ),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'a backing file shorter than its overlay, against the flattened image',
    setup: and(
      create('base.qcow2', '2M'), io('base.qcow2', 'write -P 1 0 2M'), create('top.qcow2', '8M', '-F qcow2 -b base.qcow2'),
      io('top.qcow2', 'write -P 2 1M 512k', 'write -P 3 6M 64k'), '$QEMU_IMG convert -O qcow2 top.qcow2 flat.qcow2',
    ),
    args: ['top.qcow2', 'flat.qcow2'],
  },
  {
    name: 'sizes differ, zeros past the shorter one',
    setup: and(create('a.qcow2', '8M'), io('a.qcow2', 'write -P 1 0 1M'), create('b.qcow2', '16M'), io('b.qcow2', 'write -P 1 0 1M', 'write -P 0 10M 1M')),
    args: ['a.qcow2', 'b.qcow2'],
  },
  {
    name: 'sizes differ, data past the shorter one',
    setup: and(create('a.qcow2', '8M'), io('a.qcow2', 'write -P 1 0 1M'), create('b.qcow2', '16M'), io('b.qcow2', 'write -P 1 0 1M', 'write -P 4 12M 4k')),
    args: ['b.qcow2', 'a.qcow2'],
  },
  {
    name: 'strict mode: same contents, other allocation',
    setup: and(create('a.qcow2', '8M'), io('a.qcow2', 'write -P 1 0 1M'), create('b.qcow2', '8M'), io('b.qcow2', 'write -P 1 0 1M', 'write -P 0 4M 64k')),
    args: ['-s', 'a.qcow2', 'b.qcow2'],
  },
  {
    name: 'raw against qcow2',
    setup: and(create('a.qcow2', '8M'), io('a.qcow2', 'write -P 1 0 1M', 'write -P 2 5M 3k'), '$QEMU_IMG convert -O raw a.qcow2 b.raw', io('a.qcow2', 'write -P 2 7M 1')),
    args: ['-f', 'qcow2', '-F', 'raw', 'a.qcow2', 'b.raw'],
  },
];

const SKIP = skipReason('compare');
let root = '';

describe.skipIf(SKIP !== '')(`compare against qemu-img${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-compare-'));
  });
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  CASES.forEach((c, n) => {
    it(`compares_as_qemu_img: ${c.name}`, async () => {
      const dir = join(root, `c${n}`);
      mkdirSync(dir, { recursive: true });
      shOk(c.setup, dir);
      const theirs = qemuImg(['compare', ...c.args], dir);
      const ours = await runOurs(['compare', ...c.args], dir);
      expect(ours.stderr.replace(/^qcow2:/gm, 'qemu-img:')).toBe(theirs.stderr);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.status).toBe(theirs.status);
    });
  });

  it('finds_the_first_difference_at_any_sector_of_a_run', async () => {
    // A 2 MiB run (one chunk) differing in one byte of one sector, at sectors from its first to
    // its last: the offset printed is that sector's, as qemu-img prints it.
    const dir = join(root, 'sectors');
    mkdirSync(dir, { recursive: true });
    shOk(and(create('a.qcow2', '4M'), io('a.qcow2', 'write -P 1 0 2M')), dir);
    for (const sector of [0, 1, 2, 63, 64, 127, 2000, 4095]) {
      shOk(and('cp a.qcow2 b.qcow2', io('b.qcow2', `write -P 2 ${sector * 512 + 17} 1`)), dir);
      const theirs = qemuImg(['compare', 'a.qcow2', 'b.qcow2'], dir);
      const ours = await runOurs(['compare', 'a.qcow2', 'b.qcow2'], dir);
      expect(ours.stdout, `sector ${sector}`).toBe(theirs.stdout);
      expect(ours.stdout).toBe(`Content mismatch at offset ${sector * 512}!\n`);
      expect(ours.status).toBe(1);
    }
  });
});
