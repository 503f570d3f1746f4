// resize --preallocation and amend -p against qemu-img on the same images: the guest view and
// its allocation (map without host offsets), check, what later writes cost in the file (125),
// the exact text of the refusals, amend -p's figures byte for byte (112), and amend to a wider
// refcount width of an image whose refcounts overflowed, as check advises (112).

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools, tool } from '../../engines/helpers';
import { CliRun, runCli } from '../../helpers/cli';

const SKIP = skipWithoutTools('cli/resize-amend-parity');

const ours = runCli;

/** qemu-img's run with its prefix as ours prints it. */
function theirs(args: string[], cwd: string): CliRun {
  const r = tool('qemu-img', args, cwd);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.replace(/^qemu-img: /gm, 'qcow2: ') };
}

/**
 * map without host offsets. `zeroFromHoles`: with clusters smaller than the file system's
 * blocks, whether a run of data clusters reads as a hole ("zero") depends on its neighbours in
 * the file, that is on placement, so the flag is left out too (runs merged again).
 */
const mapOf = (d: string, img = 'img.qcow2', zeroFromHoles = true) => {
  const entries = (JSON.parse(must('qemu-img', ['map', '--output=json', img], d).stdout) as Array<Record<string, unknown>>)
    .map(({ offset: _o, ...e }) => e);
  if (zeroFromHoles) return entries;
  const merged: Array<Record<string, unknown>> = [];
  for (const { zero: _z, ...e } of entries) {
    const last = merged[merged.length - 1];
    if (last && last.depth === e.depth && last.present === e.present && last.data === e.data) last.length = (last.length as number) + (e.length as number);
    else merged.push(e);
  }
  return merged;
};
const blocks = (d: string, img = 'img.qcow2') => fs.statSync(path.join(d, img)).blocks;
const length = (d: string, img = 'img.qcow2') => fs.statSync(path.join(d, img)).size;

describe.skipIf(SKIP)('resize --preallocation and amend -p as qemu-img', () => {
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
  const folder = () => {
    const d = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-prealloc-'));
    dirs.push(d);
    return d;
  };
  /** The same setup in two folders: qemu-img's and ours. */
  const pair = (setup: (d: string) => void) => {
    const a = folder(), b = folder();
    setup(a);
    setup(b);
    return [a, b] as const;
  };

  const cases: Array<{ name: string; setup: (d: string) => void; to: string; smallClusters?: boolean }> = [
    {
      name: 'plain image, old end inside a cluster',
      setup: (d) => {
        must('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', '1000k'], d);
        must('qemu-io', ['-c', 'write -P 0x5a 0 500k', 'img.qcow2'], d);
      },
      to: '3000k',
    },
    {
      name: '512 B clusters, a new L2 table and a longer L1 table (125)',
      setup: (d) => must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'img.qcow2', String(2 * 1024 * 1024 - 48 * 1024)], d),
      to: '+80K',
      smallClusters: true,
    },
    {
      name: 'extended L2 over a longer backing file, old end inside a subcluster (271)',
      setup: (d) => {
        must('qemu-img', ['create', '-q', '-f', 'raw', 'base.raw', '1M'], d);
        must('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0xff 0 1M', 'base.raw'], d);
        must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'base.raw', '-F', 'raw', 'img.qcow2', '503k'], d);
      },
      to: '1013k',
    },
    {
      name: 'over a longer backing file, old end inside an unallocated cluster (125)',
      setup: (d) => {
        must('qemu-img', ['create', '-q', '-f', 'raw', 'base.raw', '128k'], d);
        must('qemu-io', ['-f', 'raw', '-c', 'write -q -P 1 0 128k', 'base.raw'], d);
        must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'img.qcow2', '31k'], d);
      },
      to: '96k',
    },
  ];

  for (const c of cases) {
    for (const mode of ['metadata', 'falloc', 'full'] as const) {
      it(`resize --preallocation=${mode}: ${c.name}`, async () => {
        const [a, b] = pair(c.setup);
        const virtualSize = () => (JSON.parse(must('qemu-img', ['info', '--output=json', 'img.qcow2'], b).stdout) as { 'virtual-size': number })['virtual-size'];
        const oldSize = virtualSize();
        const ref = theirs(['resize', `--preallocation=${mode}`, 'img.qcow2', c.to], a);
        const got = await ours(['resize', `--preallocation=${mode}`, 'img.qcow2', c.to], b);
        expect(got).toEqual(ref);
        expect(got.stdout).toBe('Image resized.\n');
        expect(mapOf(b, 'img.qcow2', !c.smallClusters)).toEqual(mapOf(a, 'img.qcow2', !c.smallClusters));
        expect(must('qemu-img', ['compare', '-q', path.join(a, 'img.qcow2'), path.join(b, 'img.qcow2')], b).status).toBe(0);
        expect(tool('qemu-img', ['check', 'img.qcow2'], b).status).toBe(0);
        // Preallocated: writing the whole new area grows neither the file nor (falloc, full)
        // the space it takes.
        const len0 = length(b), blocks0 = blocks(b);
        must('qemu-io', ['-c', `write -q -P 0x33 ${oldSize} ${virtualSize() - oldSize}`, 'img.qcow2'], b);
        expect(length(b)).toBe(len0);
        if (mode !== 'metadata') expect(blocks(b)).toBeLessThanOrEqual(blocks0);
      });
    }
  }

  it('resize --preallocation with an external data file preallocates it (full: written)', async () => {
    const [a, b] = pair((d) => must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=img.data', 'img.qcow2', '1M'], d));
    expect(await ours(['resize', '--preallocation=full', 'img.qcow2', '3M'], b)).toEqual(theirs(['resize', '--preallocation=full', 'img.qcow2', '3M'], a));
    expect(mapOf(b)).toEqual(mapOf(a));
    expect(fs.statSync(path.join(b, 'img.data')).size).toBe(fs.statSync(path.join(a, 'img.data')).size);
    expect(blocks(b, 'img.data')).toBe(blocks(a, 'img.data'));
  });

  it('resize --preallocation refusals in qemu-img words', async () => {
    const [a, b] = pair((d) => must('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'], d));
    for (const args of [
      ['resize', '--preallocation=metadata', 'img.qcow2', '1M'],
      ['resize', '--shrink', '--preallocation=full', 'img.qcow2', '512k'],
      ['resize', '--preallocation=falloc', 'img.qcow2', '512k'],
      ['resize', '--preallocation=fast', 'img.qcow2', '2M'],
    ]) {
      expect(await ours(args, b), args.join(' ')).toEqual(theirs(args, a));
    }
    expect(fs.readFileSync(path.join(b, 'img.qcow2'))).toEqual(fs.readFileSync(path.join(a, 'img.qcow2')));
  });

  const amendCases: Array<[string, string]> = [
    ['refcount_bits=1,cluster_size=512', 'refcount_bits=64'], // three walks, then a fourth (112)
    ['refcount_bits=16,cluster_size=512', 'refcount_bits=1'],
    ['refcount_bits=16,cluster_size=4096', 'refcount_bits=64'],
    ['compat=0.10,cluster_size=512', 'compat=1.1,refcount_bits=2'],
    ['compat=1.1', 'compat=0.10'],
    ['compat=1.1', 'lazy_refcounts=on'],
  ];
  for (const [create, change] of amendCases) {
    it(`amend -p prints qemu-img's figures: ${create} -> ${change}`, async () => {
      const [a, b] = pair((d) => {
        must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', create, 'img.qcow2', '64k'], d);
        must('qemu-io', ['-c', `write 0 ${58 * 512}`, 'img.qcow2'], d);
      });
      const ref = theirs(['amend', '-p', '-o', change, 'img.qcow2'], a);
      const got = await ours(['amend', '-p', '-o', change, 'img.qcow2'], b);
      expect(got).toEqual(ref);
      expect(got.stdout.split('\r').length).toBeGreaterThan(2);
    });
  }

  it('amend -o compat=1.1,size= of a v2 image with a snapshot upgrades, then resizes (061)', async () => {
    const [a, b] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'img.qcow2', '32M'], d);
      must('qemu-io', ['-c', 'write -P 7 0 1M', 'img.qcow2'], d);
      must('qemu-img', ['snapshot', '-c', 'foo', 'img.qcow2'], d);
    });
    const refused = ['resize', 'img.qcow2', '64M'];
    expect(await ours(refused, b)).toEqual(theirs(refused, a));
    const args = ['amend', '-o', 'compat=1.1,size=128M', 'img.qcow2'];
    expect(await ours(args, b)).toEqual(theirs(args, a));
    const facts = (d: string) => {
      const i = JSON.parse(must('qemu-img', ['info', '--output=json', 'img.qcow2'], d).stdout) as Record<string, unknown>;
      const snaps = (i.snapshots as Array<Record<string, unknown>>).map(({ 'date-sec': _s, 'date-nsec': _n, 'vm-clock-sec': _v, 'vm-clock-nsec': _c, ...x }) => x);
      return { size: i['virtual-size'], compat: (i['format-specific'] as { data: { compat: string } }).data.compat, snaps };
    };
    expect(facts(b)).toEqual(facts(a));
    expect(facts(b)).toMatchObject({ size: 128 << 20, compat: '1.1' });
    expect(mapOf(b)).toEqual(mapOf(a));
    expect(tool('qemu-img', ['check', 'img.qcow2'], b).status).toBe(0);
  });

  it('amend -p -q prints nothing', async () => {
    const [a, b] = pair((d) => must('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'], d));
    expect(await ours(['amend', '-p', '-q', '-o', 'refcount_bits=8', 'img.qcow2'], b)).toEqual(theirs(['amend', '-p', '-q', '-o', 'refcount_bits=8', 'img.qcow2'], a));
  });

  it('amend to a wider refcount width of an image whose refcounts overflowed, then check -r all (112)', async () => {
    const [a, b] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', 'img.qcow2', '64M'], d);
      must('qemu-io', ['-c', 'write 0 64k', 'img.qcow2'], d);
      // The second L2 entry points at the first one's cluster: two references, a 1-bit refcount.
      const fd = fs.openSync(path.join(d, 'img.qcow2'), 'r+');
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 5, 0, 0]), 0, 8, 0x40008);
      fs.closeSync(fd);
    });
    expect(await ours(['check', 'img.qcow2'], b)).toEqual(theirs(['check', 'img.qcow2'], a));
    // (qemu-img's own amend here walks a reftable of 1-bit refcounts for half a minute: its
    // result is compared through check, on a copy of ours.)
    expect(await ours(['amend', '-o', 'refcount_bits=2', 'img.qcow2'], b)).toEqual({ status: 0, stdout: '', stderr: '' });
    expect(must('qemu-img', ['info', 'img.qcow2'], b).stdout).toMatch(/refcount bits: 2\n/);
    fs.copyFileSync(path.join(b, 'img.qcow2'), path.join(a, 'img.qcow2'));
    expect(await ours(['check', '-r', 'all', 'img.qcow2'], b)).toEqual(theirs(['check', '-r', 'all', 'img.qcow2'], a));
    expect(fs.readFileSync(path.join(b, 'img.qcow2'))).toEqual(fs.readFileSync(path.join(a, 'img.qcow2')));
    // A narrowing, or any other change that moves metadata, is still refused on such an image.
    const [, c] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', 'img.qcow2', '64M'], d);
      must('qemu-io', ['-c', 'write 0 64k', 'img.qcow2'], d);
      const fd = fs.openSync(path.join(d, 'img.qcow2'), 'r+');
      fs.writeSync(fd, Buffer.from([0x80, 0, 0, 0, 0, 5, 0, 0]), 0, 8, 0x40008);
      fs.closeSync(fd);
    });
    const refused = await ours(['resize', 'img.qcow2', '128M'], c);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/overflow cluster offset=0x50000.*nothing was changed/);
  });
});
