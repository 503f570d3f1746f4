// Internal snapshots against qemu-img 7.2: the same sequence of snapshot -c/-a/-d run by
// qemu-img on one copy and by the native engine on another leaves byte-identical files (the
// native create takes qemu-img's timestamp, the only thing that differs), a clean check, and
// the same `snapshot -l`; qemu-img's refusals in qemu-img's words; and every write of every
// operation made to fail (also torn) leaves the old image or the new one, never a corrupt one
// (OFLAG_COPIED flags may be stale in the harmless directions, as QEMU's own order leaves them:
// faults.ts).

import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { snapshotImage } from '../../../provider/engines/native/maintenance';
import { Image } from '../../../provider/qcow2/meta/image';
import { firstDifference, infoOf, missingTools, qemuImg, runOurs, shOk, skipReason } from './amend-helpers';
import { FaultyFile, InjectedFault, VARIANTS, checkOf, classify, copyDir, line, record, tally, type Reference, type Tally } from './faults';
import { inDir } from '../../helpers/common';

const IMG = 'img.qcow2';
const mk = (opts: string, size: string) => `$QEMU_IMG create -q -f qcow2 ${opts ? `-o ${opts} ` : ''}${IMG} ${size}`;
const io = (...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${IMG} >/dev/null`;
const and = (...s: string[]) => s.join(' && ');

/** One step: a snapshot action, or a command run on both copies between them (guest writes). */
type Step = ['c' | 'a' | 'd', string] | ['sh', string];

/** `sameLayout: false`: a step resizes, which moves metadata (ops/amend.ts): compared by content, not bytes. */
interface Scenario { name: string; setup: string; steps: Step[]; sameLayout?: boolean }

const SCENARIOS: Scenario[] = [
  {
    name: 'data, zero and compressed clusters; two snapshots applied and deleted',
    setup: and(mk('', '64M'), io('write -P 1 0 128k', 'write -P 3 1M 64k', 'write -c -P 4 2M 64k', 'write -z 3M 64k')),
    steps: [['c', 's1'], ['sh', io('write -P 2 64k 64k', 'write -P 5 2M 4k')], ['c', 's2'], ['a', 's1'], ['d', 's1'], ['a', 's2'], ['d', 's2']],
  },
  {
    name: '512-byte clusters: many L2 tables, refcount blocks placed as the file grows',
    setup: and(mk('cluster_size=512', '8M'), io('write -P 7 0 1M', 'write -P 8 6M 512k')),
    steps: [['c', 'a'], ['sh', io('write -P 9 0 600k')], ['c', 'b'], ['c', 'c'], ['d', 'b'], ['a', 'a'], ['d', 'a'], ['d', 'c']],
  },
  {
    name: 'refcount_bits=4 and lazy refcounts',
    setup: and(mk('refcount_bits=4,lazy_refcounts=on', '32M'), io('write -P 1 0 2M')),
    steps: [['c', 'x'], ['c', 'x'], ['sh', io('write -P 6 1M 64k')], ['a', '1'], ['d', 'x'], ['d', 'x']],
  },
  {
    name: 'extended L2 entries',
    setup: and(mk('extended_l2=on,cluster_size=65536', '32M'), io('write -P 1 0 100k', 'write -P 2 1M 4k')),
    steps: [['c', 'e1'], ['sh', io('write -P 3 8k 4k')], ['c', 'e2'], ['a', 'e1'], ['d', 'e2']],
  },
  {
    name: 'compat 0.10',
    setup: and(mk('compat=0.10', '16M'), io('write -P 1 0 1M')),
    steps: [['c', 'old'], ['sh', io('write -P 2 0 64k')], ['a', 'old'], ['d', 'old']],
  },
  {
    name: 'a snapshot of another size: apply resizes first',
    setup: and(mk('', '32M'), io('write -P 1 0 1M')),
    steps: [['c', 'small'], ['sh', `$QEMU_IMG resize -q ${IMG} 48M`], ['sh', io('write -P 2 40M 64k')], ['a', 'small']],
    sameLayout: false,
  },
];

const SKIP = skipReason('snapshot');
let root = '';
const summary: Array<[string, Tally]> = [];

/** The timestamp of the last snapshot in the table (what qemu-img just wrote). */
function lastTime(path: string): { sec: number; nsec: number } {
  const img = Image.openFile(path);
  try {
    const list = img.readSnapshots();
    const s = list[list.length - 1]!;
    return { sec: s.dateSec, nsec: s.dateNsec };
  } finally {
    img.close();
  }
}

describe.skipIf(SKIP !== '')(`internal snapshots against qemu-img${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-snapshot-'));
  });
  afterAll(() => {
    for (const [name, t] of summary) console.log(`[snapshot faults] ${line(name, t)}`);
    if (root) rmSync(root, { recursive: true, force: true });
  });

  SCENARIOS.forEach((sc, n) => {
    it(`byte_identical_to_qemu_img: ${sc.name}`, () => {
      const q = join(root, `s${n}`, 'q');
      const o = join(root, `s${n}`, 'o');
      mkdirSync(q, { recursive: true });
      shOk(sc.setup, q);
      copyDir(q, o);
      for (const [i, step] of sc.steps.entries()) {
        if (step[0] === 'sh') {
          for (const d of [q, o]) shOk(step[1], d);
          continue;
        }
        const [flag, name] = step;
        const r = qemuImg(['snapshot', `-${flag}`, name, IMG], q);
        expect(r.status, `qemu-img snapshot -${flag} ${name}: ${r.stderr}`).toBe(0);
        const action = flag === 'c' ? 'create' : flag === 'a' ? 'apply' : 'delete';
        inDir(o, () => snapshotImage(join(o, IMG), action === 'create' ? { action, name, time: lastTime(join(q, IMG)) } : { action, name }));
        if (sc.sameLayout === false) {
          const same = qemuImg(['compare', '-s', join(q, IMG), join(o, IMG)], root);
          expect(same.status, `step ${i}: snapshot -${flag} ${name}: ${same.stdout}${same.stderr}`).toBe(0);
          const list = (d: string) => qemuImg(['snapshot', '-l', IMG], d).stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, '');
          expect(list(o), `step ${i}: snapshot -l`).toBe(list(q));
        } else {
          expect(firstDifference(join(q, IMG), join(o, IMG)), `step ${i}: snapshot -${flag} ${name}`).toBeUndefined();
        }
        expect(checkOf(o).status, `step ${i}: check`).toBe(0);
      }
    });
  });

  it('lists_as_qemu_img_lists', async () => {
    const d = join(root, 'list');
    mkdirSync(d, { recursive: true });
    shOk(and(mk('', '16M'), io('write 0 64k'), `$QEMU_IMG snapshot -c first ${IMG}`, `$QEMU_IMG snapshot -c 'a much longer snapshot name' ${IMG}`), d);
    for (const args of [['snapshot', '-l', IMG], ['info', IMG]]) {
      const ours = await runOurs(args, d);
      const theirs = qemuImg(args, d);
      expect(ours.status).toBe(theirs.status);
      const strip = (t: string) => t.replace(/^disk size: .*$/m, '');
      expect(strip(ours.stdout)).toBe(strip(theirs.stdout));
    }
  });

  it('refuses_as_qemu_img_refuses', async () => {
    const d = join(root, 'refuse');
    mkdirSync(d, { recursive: true });
    shOk(and(mk('', '16M'), `$QEMU_IMG snapshot -c s ${IMG}`, `$QEMU_IMG create -q -f qcow2 -o data_file=df.raw df.qcow2 16M`,
      `$QEMU_IMG create -q -f qcow2 -o refcount_bits=1 r1.qcow2 16M`, `$QEMU_IO -c 'write 0 512' r1.qcow2 >/dev/null`), d);
    copyFileSync(join(d, 'r1.qcow2'), join(d, 'r1-ours.qcow2'));
    const cases: string[][] = [
      ['snapshot', '-d', 'nope', IMG], ['snapshot', '-a', 'nope', IMG], ['snapshot', '-c', 'x', '-d', 'y', IMG],
      ['snapshot', '-c', 'x', 'df.qcow2'], ['snapshot', '-d', 'x', 'df.qcow2'], ['snapshot', '-l', 'df.qcow2'], ['snapshot', '-l'],
    ];
    for (const args of cases) {
      const ours = await runOurs(args, d);
      const theirs = qemuImg(args, d);
      expect(ours.status, args.join(' ')).toBe(theirs.status);
      expect(ours.stdout, args.join(' ')).toBe(theirs.stdout);
      expect(ours.stderr.split('\n')[0]!.replace(/^qcow2:/, 'qemu-img:'), args.join(' ')).toBe(theirs.stderr.split('\n')[0]);
    }
    // refcount_bits=1 cannot count a second reference: qemu-img's EINVAL, and its leaked L1 copy.
    const theirs = qemuImg(['snapshot', '-c', 'foo', 'r1.qcow2'], d);
    const ours = await runOurs(['snapshot', '-c', 'foo', 'r1-ours.qcow2'], d);
    expect(ours.status).toBe(theirs.status);
    expect(ours.stderr.replace(/^qcow2:/, 'qemu-img:')).toBe(theirs.stderr);
    expect(firstDifference(join(d, 'r1.qcow2'), join(d, 'r1-ours.qcow2'))).toBeUndefined();
    // An L2 entry pointing past what the refcount table describes (iotest 080): a compressed
    // cluster past the largest refcount table (EFBIG), a data cluster at 1 TiB without a refcount
    // block (EAGAIN), in qemu-img's words.
    shOk(and(`$QEMU_IMG create -q -f qcow2 huge.qcow2 64M`, `$QEMU_IO -c 'write 0 512' huge.qcow2 >/dev/null`), d);
    const l2 = 0x40000; // the only L2 table of a fresh 64 MiB image with one write
    for (const [entry, errno] of [['\\xbf\\xff\\xff\\xff\\xff\\xff\\x00\\x00', '-27 (File too large)'], ['\\x80\\x00\\x00\\xff\\xff\\xff\\x00\\x00', '-11 (Resource temporarily unavailable)']] as const) {
      shOk(`printf '${entry}' | dd of=huge.qcow2 bs=1 seek=${l2} conv=notrunc status=none && cp huge.qcow2 huge-q.qcow2`, d);
      const q = qemuImg(['snapshot', '-c', 'test', 'huge-q.qcow2'], d);
      const o = await runOurs(['snapshot', '-c', 'test', 'huge.qcow2'], d);
      expect(q.stderr).toBe(`qemu-img: Could not create snapshot 'test': ${errno}\n`);
      expect(o.status).toBe(q.status);
      expect(o.stderr.replace(/^qcow2:/, 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('a_stored_name_that_is_not_utf8_survives_a_table_rewrite_byte_for_byte', () => {
    // Names inside images are untrusted and need not be UTF-8: the table is rewritten from the
    // bytes stored, and the user's names are looked up as bytes.
    const q = join(root, 'bytes-q'), o = join(root, 'bytes-o');
    mkdirSync(q, { recursive: true });
    shOk(and(mk('', '16M'), io('write -P 1 0 64k'), `$QEMU_IMG snapshot -c $'\\xff\\xfeold' ${IMG}`), q);
    copyDir(q, o);
    shOk(`$QEMU_IMG snapshot -c next ${IMG}`, q);
    inDir(o, () => snapshotImage(join(o, IMG), { action: 'create', name: 'next', time: lastTime(join(q, IMG)) }));
    expect(firstDifference(join(q, IMG), join(o, IMG))).toBeUndefined();
    const names = (() => { const img = Image.openFile(join(o, IMG)); try { return img.readSnapshots().map((sn) => Buffer.from(sn.nameBytes).toString('hex')); } finally { img.close(); } })();
    expect(names).toEqual(['fffe6f6c64', Buffer.from('next').toString('hex')]);
    shOk(`$QEMU_IMG snapshot -d next ${IMG}`, q);
    inDir(o, () => snapshotImage(join(o, IMG), { action: 'delete', name: 'next' }));
    expect(firstDifference(join(q, IMG), join(o, IMG))).toBeUndefined();
  });

  it('convert_l_reads_a_snapshot_as_qemu_img', async () => {
    const d = join(root, 'convert-l');
    mkdirSync(d, { recursive: true });
    // The snapshot's L1 is shorter than the image's after the resize: qemu-img reads past it as unallocated.
    shOk(and(mk('cluster_size=4096', '16M'), io('write -P 1 0 64k', 'write -P 2 8M 4k'), `$QEMU_IMG snapshot -c 'snap one' ${IMG}`,
      io('write -P 3 0 4k'), `$QEMU_IMG resize -q ${IMG} 3G`, io('write -P 4 2G 64k')), d);
    for (const l of ['1', 'snap one', 'snapshot.name=snap one', 'snapshot.id=1,snapshot.name=snap one']) {
      const ours = await runOurs(['convert', '-l', l, '-O', 'qcow2', IMG, 'ours.qcow2'], d);
      expect(ours.status, `${l}: ${ours.stderr}`).toBe(0);
      expect(qemuImg(['convert', '-l', l, '-O', 'qcow2', IMG, 'theirs.qcow2'], d).status).toBe(0);
      const same = qemuImg(['compare', '-s', 'ours.qcow2', 'theirs.qcow2'], d);
      expect(same.status, `${l}: ${same.stdout}${same.stderr}`).toBe(0);
      rmSync(join(d, 'ours.qcow2'));
      rmSync(join(d, 'theirs.qcow2'));
    }
    for (const l of ['nope', 'snapshot.id=1,snapshot.name=other', 'snapshot.foo=1']) {
      const ours = await runOurs(['convert', '-l', l, '-O', 'qcow2', IMG, 'x.qcow2'], d);
      const theirs = qemuImg(['convert', '-l', l, '-O', 'qcow2', IMG, 'y.qcow2'], d);
      expect(ours.status, l).toBe(theirs.status);
      expect(ours.stderr.replace(/^qcow2:/gm, 'qemu-img:'), l).toBe(theirs.stderr.replace(/Try 'qemu-img --help' for more information\n/, ''));
    }
  });

  const FAULT_OPS: Array<{ name: string; setup: string; req: Parameters<typeof snapshotImage>[1] }> = [
    { name: 'create (512-byte clusters)', setup: and(mk('cluster_size=512', '4M'), io('write -P 1 0 512k', 'write -c -P 2 1M 64k')), req: { action: 'create', name: 'n', time: { sec: 1, nsec: 2 } } },
    {
      name: 'apply (512-byte clusters)',
      setup: and(mk('cluster_size=512', '4M'), io('write -P 1 0 512k'), `$QEMU_IMG snapshot -c s ${IMG}`, io('write -P 2 0 256k', 'write -P 3 2M 64k')),
      req: { action: 'apply', name: 's' },
    },
    {
      name: 'delete (512-byte clusters)',
      setup: and(mk('cluster_size=512', '4M'), io('write -P 1 0 512k'), `$QEMU_IMG snapshot -c s ${IMG}`, io('write -P 2 0 256k')),
      req: { action: 'delete', name: 's' },
    },
  ];

  FAULT_OPS.forEach((op, n) => {
    it(`injected write faults leave the old or the new image: ${op.name}`, () => {
      const dir = join(root, `fault${n}`);
      const base = join(dir, 'base'), neu = join(dir, 'new'), trial = join(dir, 'trial');
      mkdirSync(base, { recursive: true });
      shOk(op.setup, base);
      const old: Reference = { dir: base, info: infoOf(base) };
      copyDir(base, neu);
      let counter: FaultyFile | undefined;
      inDir(neu, () => snapshotImage(join(neu, IMG), op.req, { wrapFile: (f) => (counter = new FaultyFile(f, 0, 'none')) }));
      const mutations = counter!.mutations;
      const ref: Reference = { dir: neu, info: infoOf(neu) };
      expect(checkOf(neu).status).toBe(0);
      const t = tally();
      for (const variant of VARIANTS) {
        for (let k = 1; k <= mutations + 1; k++) {
          copyDir(base, trial);
          try {
            inDir(trial, () => snapshotImage(join(trial, IMG), op.req, { wrapFile: (f) => new FaultyFile(f, k, variant) }));
          } catch (e) {
            if (!(e instanceof InjectedFault)) throw e;
          }
          record(t, classify(trial, old, ref, { staleCopied: true }), `${variant} k=${k}/${mutations}`);
        }
      }
      summary.push([`${op.name} [${mutations} mutations x ${VARIANTS.length} tear variants]`, t]);
      expect(t.failures, t.failures.join('\n\n')).toEqual([]);
      expect(t.old).toBeGreaterThan(0);
      expect(t.new).toBeGreaterThan(0);
    });
  });
});
