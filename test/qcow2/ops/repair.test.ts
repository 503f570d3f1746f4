// check -r against qemu-img 7.2: the same damaged image repaired by qemu-img on one copy and by
// our CLI on another leaves byte-identical files, the same text on stdout and stderr and the
// same exit status; and QEMU's repair on opening a dirty (lazy refcounts) image read/write.

import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { firstDifference, missingTools, qemuImg, runOurs, shOk, skipReason } from './amend-helpers';

const IMG = 'img.qcow2';
const and = (...s: string[]) => s.join(' && ');
const io = (...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${IMG} >/dev/null`;
/** Overwrite bytes at an offset of the image (printf escapes). */
const poke = (offset: number, bytes: string) => `printf '${bytes}' | dd of=${IMG} bs=1 seek=${offset} conv=notrunc 2>/dev/null`;

interface Case { name: string; setup: string; mode: 'leaks' | 'all' }

const CASES: Case[] = [
  {
    // A refcount raised behind QEMU's back: a leak (-r leaks frees it).
    name: 'a leaked cluster',
    setup: and(`$QEMU_IMG create -q -f qcow2 ${IMG} 16M`, io('write -P 1 0 256k'), poke(0x20000 + 2 * 6 + 1, '\\x02')),
    mode: 'leaks',
  },
  {
    name: 'a leaked cluster, -r all',
    setup: and(`$QEMU_IMG create -q -f qcow2 ${IMG} 16M`, io('write -P 1 0 256k'), poke(0x20000 + 2 * 6 + 1, '\\x02')),
    mode: 'all',
  },
  {
    // A refcount of 0 where a data cluster is referenced: -r leaks cannot fix it, -r all rebuilds.
    name: 'a referenced cluster with refcount 0 (-r leaks fails)',
    setup: and(`$QEMU_IMG create -q -f qcow2 ${IMG} 16M`, io('write -P 1 0 256k'), poke(0x20000 + 2 * 5, '\\x00\\x00')),
    mode: 'leaks',
  },
  {
    name: 'a referenced cluster with refcount 0 (-r all rebuilds)',
    setup: and(`$QEMU_IMG create -q -f qcow2 ${IMG} 16M`, io('write -P 1 0 256k'), poke(0x20000 + 2 * 5, '\\x00\\x00')),
    mode: 'all',
  },
  {
    // An unaligned data cluster in an extended L2 table past the end of the file (271's case).
    name: 'an unaligned data cluster spilling past the end of the file',
    setup: and(
      '$QEMU_IMG create -q -f raw base 128k', "$QEMU_IO -c 'write -q -P 0xff 0 128k' -f raw base >/dev/null",
      `$QEMU_IMG create -q -f qcow2 -o extended_l2=on -F raw -b base ${IMG}`, io('write -q -P 1 4k 2k'), poke(0x40000 + 6, '\\x02'),
    ),
    mode: 'all',
  },
  {
    // bench/maintenance's case, small: a snapshot the header forgot. Every data cluster and L2
    // table leaks (refcount 2, one reference) and every COPIED flag is repaired; runs of
    // clusters across L2 tables (4 KiB clusters), fragmented.
    name: 'a snapshot the header forgot (leaks and COPIED flags, runs across L2 tables)',
    setup: and(
      `$QEMU_IMG create -q -f qcow2 -o cluster_size=4096 ${IMG} 16M`, io('write -P 1 1900k 400k', 'write -P 2 8M 64k', 'write -P 3 0 16k'),
      `$QEMU_IMG snapshot -c s ${IMG}`, poke(60, '\\0\\0\\0\\0'),
    ),
    mode: 'leaks',
  },
  {
    name: 'a dirty lazy-refcounts image',
    // qemu-io killed after a write leaves the dirty bit set and refcounts stale.
    setup: and(`$QEMU_IMG create -q -f qcow2 -o lazy_refcounts=on ${IMG} 16M`, `($QEMU_IO -c 'write -P 1 0 128k' -c 'sigraise 9' ${IMG} >/dev/null 2>&1 || true)`),
    mode: 'all',
  },
];

const SKIP = skipReason('repair');
let root = '';

describe.skipIf(SKIP !== '')(`check -r against qemu-img${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-repair-'));
  });
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  CASES.forEach((c, n) => {
    it(`repairs_as_qemu_img: ${c.name}`, async () => {
      const q = join(root, `c${n}`, 'q');
      const o = join(root, `c${n}`, 'o');
      mkdirSync(q, { recursive: true });
      mkdirSync(o, { recursive: true });
      shOk(c.setup, q);
      for (const f of ['base', IMG]) {
        try { copyFileSync(join(q, f), join(o, f)); } catch { /* no base in this case */ }
      }
      const before = qemuImg(['check', IMG], q);
      expect(before.status, `the setup leaves a damaged image: ${before.stdout}${before.stderr}`).not.toBe(0);
      const theirs = qemuImg(['check', '-r', c.mode, IMG], q);
      const ours = await runOurs(['check', '-r', c.mode, IMG], o);
      expect(ours.stderr.replace(/^qcow2:/gm, 'qemu-img:')).toBe(theirs.stderr);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.status).toBe(theirs.status);
      expect(firstDifference(join(q, IMG), join(o, IMG))).toBeUndefined();
    });
  });
});
