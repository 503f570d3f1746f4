// `qcow2 convert` from several source files into one target, and with -S (the minimum run of
// zeros left unwritten), as a user runs them (the built CLI in its own process), each against
// qemu-img convert with the same arguments: new qcow2 images byte for byte, raw files and
// images written with -n by their contents and their map, and every refusal in
// qemu-img's words with nothing created.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools, tool } from '../../engines/helpers';

const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SKIP = skipWithoutTools('cli/convert-sparse');

let root: string;

interface Run { status: number | null; stdout: string; stderr: string }

function qcow2(args: string[]): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** qemu-img's run of the same arguments, its prefix as ours prints it. */
function qemu(args: string[]): Run {
  const r = tool('qemu-img', args, root);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.replace(/^qemu-img: /gm, 'qcow2: ') };
}

const file = (name: string) => path.join(root, name);
const bytes = (name: string) => fs.readFileSync(file(name));
const map = (name: string, fmt?: string) =>
  JSON.parse(must('qemu-img', ['map', '--output=json', ...(fmt ? ['-f', fmt] : []), name], root).stdout) as Array<Record<string, unknown>>;
/** The map without host offsets (written into an existing image, clusters may land elsewhere). */
const shape = (name: string, fmt?: string) => map(name, fmt).map(({ offset: _o, ...rest }) => rest);

/**
 * `convert ARGS... OUT` by qemu-img (to `q-OUT`) and by us (to `o-OUT`): the same exit status and
 * messages; for a new qcow2 image the same bytes, for a raw file the same bytes and holes.
 */
function both(args: string[], out: string): { q: string; o: string } {
  const q = `q-${out}`, o = `o-${out}`;
  for (const f of [q, o]) fs.rmSync(file(f), { force: true });
  const ref = qemu(['convert', ...args, q]);
  const ours = qcow2(['convert', ...args, o]);
  expect({ status: ours.status, stderr: ours.stderr.replaceAll(o, q) }, args.join(' ')).toEqual({ status: ref.status, stderr: ref.stderr });
  if (ref.status === 0) expect(bytes(o).equals(bytes(q)), `${args.join(' ')}: the image byte for byte`).toBe(true);
  return { q, o };
}

describe.skipIf(SKIP)('convert from several sources and -S, against qemu-img', () => {
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-sparse-'));
    // Three 4 MiB images, 64 KiB of data at the start of each (iotest 122's concatenation).
    for (const [i, p] of [[1, 0x11], [2, 0x22], [3, 0x33]] as const) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', `part${i}.qcow2`, '4M'], root);
      must('qemu-io', ['-c', `write -P ${p} 0 64k`, `part${i}.qcow2`], root);
    }
    // Misaligned: 1023 KiB images of 1 KiB clusters, data across their ends.
    for (const i of [1, 2]) must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=1024', `odd${i}.qcow2`, '1023k'], root);
    must('qemu-io', ['-c', 'write -P 0x11 16k 16k', '-c', 'write -P 0x22 130k 130k', '-c', 'write -P 0x33 1022k 1k', 'odd1.qcow2'], root);
    must('qemu-io', ['-c', 'write -P 0x44 0k 1k', 'odd2.qcow2'], root);
    // A raw file whose size is not a whole number of sectors, with data at its end.
    fs.writeFileSync(file('tail.raw'), Buffer.alloc(70000, 0x5a).fill(0, 0, 60000));
    // Zeros written as data, small data runs between zeros (iotest 122's -S image), 1 KiB clusters.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=1k', 'runs.qcow2', '8M'], root);
    must('qemu-io', ['-c', 'write -P 0 0 64k', '-c', 'write 0 1k', '-c', 'write 8k 1k', '-c', 'write 17k 1k', '-c', 'write -P 0 65k 1k',
      '-c', 'write -P 7 200k 512', '-c', 'write -P 7 212k 512', '-c', 'write -P 8 1M 3k', '-c', 'write -P 0 3M 1M', '-c', 'write -P 9 3M 512', 'runs.qcow2'], root);
    // The same data in 64 KiB clusters, over a backing file.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '8M'], root);
    must('qemu-io', ['-c', 'write -P 1 0 2M', '-c', 'write -P 2 6M 512k', 'base.qcow2'], root);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2', 'top.qcow2'], root);
    must('qemu-io', ['-c', 'write -P 3 1M 128k', '-c', 'write -z 2M 64k', '-c', 'write -P 0 3M 256k', '-c', 'write -P 4 3M 1k',
      '-c', 'write -P 5 3200k 1k', '-c', 'write -P 6 7M 64k', 'top.qcow2'], root);
  });
  afterAll(() => { if (root) fs.rmSync(root, { recursive: true, force: true }); });

  it('concatenates_several_sources_as_qemu_img', () => {
    both(['-O', 'qcow2', 'part1.qcow2', 'part2.qcow2', 'part3.qcow2'], 'cat.qcow2');
    both(['-c', '-O', 'qcow2', 'part1.qcow2', 'part2.qcow2', 'part3.qcow2'], 'catc.qcow2');
    both(['-c', '-O', 'qcow2', 'odd1.qcow2', 'odd2.qcow2'], 'oddc.qcow2');
    both(['-O', 'qcow2', 'odd1.qcow2', 'odd2.qcow2'], 'odd.qcow2');
    // Raw and qcow2 sources together; a raw part of a size that is not whole sectors takes whole sectors.
    const { q, o } = both(['-O', 'qcow2', 'tail.raw', 'part2.qcow2', 'tail.raw'], 'mixed.qcow2');
    expect(JSON.parse(must('qemu-img', ['info', '--output=json', o], root).stdout)['virtual-size']).toBe(2 * 70144 + (4 << 20));
    expect(shape(o)).toEqual(shape(q));
    for (const [out, parts] of [['cat.raw', ['part1.qcow2', 'part2.qcow2', 'part3.qcow2']], ['mixed.raw', ['part1.qcow2', 'tail.raw', 'part3.qcow2']]] as const) {
      const raw = both(['-O', 'raw', ...parts], out);
      expect(shape(raw.o, 'raw'), out).toEqual(shape(raw.q, 'raw'));
    }
    // The sources' guest views, in order.
    expect(must('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'o-cat.raw', 'o-cat.qcow2'], root).status).toBe(0);
  });

  it('S_0_allocates_every_cluster_as_qemu_img', () => {
    for (const src of ['runs.qcow2', 'top.qcow2']) {
      both(['-O', 'qcow2', '-S', '0', src], `s0-${src}`);
      both(['-O', 'qcow2', '-c', '-S', '0', src], `s0c-${src}`);
    }
    const { o } = both(['-O', 'qcow2', '-S', '0', 'part1.qcow2', 'part2.qcow2'], 's0-cat.qcow2');
    // Every cluster allocated, one run of data.
    expect(map(o)).toEqual([expect.objectContaining({ start: 0, length: 8 << 20, present: true, zero: false, data: true, offset: expect.any(Number) })]);
    const raw = both(['-O', 'raw', '-S', '0', 'top.qcow2'], 's0.raw');
    expect(shape(raw.o, 'raw')).toEqual(shape(raw.q, 'raw'));
  });

  it('S_splits_writes_as_qemu_img', () => {
    for (const s of ['512', '4k', '8k', '3k', '64k', '1M']) {
      both(['-O', 'qcow2', '-o', 'cluster_size=1k', '-S', s, 'runs.qcow2'], `s${s}-1k.qcow2`);
      both(['-O', 'qcow2', '-S', s, 'runs.qcow2'], `s${s}.qcow2`);
      both(['-O', 'qcow2', '-S', s, 'top.qcow2'], `s${s}-top.qcow2`);
      both(['-O', 'qcow2', '-c', '-o', 'cluster_size=1k', '-S', s, 'runs.qcow2'], `s${s}-c.qcow2`);
      const raw = both(['-O', 'raw', '-S', s, 'runs.qcow2'], `s${s}.raw`);
      expect(shape(raw.o, 'raw'), `-S ${s} -O raw`).toEqual(shape(raw.q, 'raw'));
    }
  });

  it('S_with_B_and_n_as_qemu_img', () => {
    for (const s of ['0', '4k', '1M']) {
      // -B: the top layer only, over the same backing file; compressed, and into v2 (no zero clusters: zeros are written).
      for (const extra of [[], ['-c'], ['-o', 'compat=0.10'], ['-c', '-o', 'compat=0.10']]) {
        const b = both(['-O', 'qcow2', ...extra, '-B', 'base.qcow2', '-F', 'qcow2', '-S', s, 'top.qcow2'], `b${s}${extra.join('')}.qcow2`);
        expect(shape(b.o), `-B -S ${s} ${extra.join(' ')}`).toEqual(shape(b.q));
      }
      // -n: into an existing image holding other data, and -n -B.
      for (const [name, extra] of [[`n${s}`, []], [`nb${s}`, ['-B', 'base.qcow2']]] as const) {
        for (const who of ['q', 'o']) {
          must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', `${who}-${name}.qcow2`, '8M'], root);
          must('qemu-io', ['-c', 'write -P 0x42 0 8M', `${who}-${name}.qcow2`], root);
        }
        const args = ['convert', '-n', ...extra, '-O', 'qcow2', '-S', s, 'top.qcow2'];
        const ref = qemu([...args, `q-${name}.qcow2`]);
        const ours = qcow2([...args, `o-${name}.qcow2`]);
        expect(ours, args.join(' ')).toEqual(ref);
        expect(shape(`o-${name}.qcow2`), `${args.join(' ')}: map`).toEqual(shape(`q-${name}.qcow2`));
        expect(must('qemu-img', ['compare', `o-${name}.qcow2`, `q-${name}.qcow2`], root).status).toBe(0);
      }
    }
  });

  it('n_into_an_empty_v2_image_without_a_backing_file_leaves_it_unallocated_as_qemu_img', () => {
    for (const who of ['q', 'o']) must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', `${who}-v2.qcow2`, '8M'], root);
    expect(qcow2(['convert', '-n', '-O', 'qcow2', 'part1.qcow2', 'o-v2.qcow2'])).toEqual(qemu(['convert', '-n', '-O', 'qcow2', 'part1.qcow2', 'q-v2.qcow2']));
    expect(map('o-v2.qcow2')).toEqual(map('q-v2.qcow2'));
  });

  it('refuses_what_qemu_img_refuses_in_its_words_and_creates_nothing', () => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'exists.qcow2', '64M'], root);
    const cases: string[][] = [
      // Several sources: no backing file for the target, no bitmaps, no snapshot by name.
      ['-O', 'qcow2', '-B', 'base.qcow2', 'part1.qcow2', 'part2.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-c', '-B', 'base.qcow2', 'part1.qcow2', 'part2.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-o', 'backing_file=base.qcow2,backing_fmt=qcow2', 'part1.qcow2', 'part2.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-n', '-B', 'base.qcow2', 'part1.qcow2', 'part2.qcow2', 'exists.qcow2'],
      ['-O', 'qcow2', '--bitmaps', 'part1.qcow2', 'part2.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-l', 'snap', 'part1.qcow2', 'part2.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', 'part1.qcow2', 'missing.qcow2', 'x.qcow2'],
      // -S: whole sectors up to 16 MiB, a number; not with -C.
      ['-O', 'qcow2', '-S', '1000', 'part1.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-S', '32M', 'part1.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-S', 'lots', 'part1.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-S', '-4k', 'part1.qcow2', 'x.qcow2'],
      ['-O', 'qcow2', '-C', '-S', '0', 'part1.qcow2', 'x.qcow2'],
      // -n: no -o.
      ['-O', 'qcow2', '-n', '-o', 'preallocation=metadata', 'part1.qcow2', 'exists.qcow2'],
      ['-O', 'qcow2', '-n', '-S', '0', '-o', 'cluster_size=4k', 'part1.qcow2', 'part2.qcow2', 'exists.qcow2'],
      // One file name: no target.
      ['-O', 'qcow2', 'part1.qcow2'],
    ];
    const before = bytes('exists.qcow2');
    for (const args of cases) {
      const ref = qemu(['convert', ...args]);
      fs.rmSync(file('x.qcow2'), { force: true }); // qemu-img creates the target before some refusals
      const ours = qcow2(['convert', ...args]);
      expect(ref.status, args.join(' ')).not.toBe(0);
      expect(ours, args.join(' ')).toEqual(ref);
      expect(fs.existsSync(file('x.qcow2')), args.join(' ')).toBe(false);
    }
    expect(bytes('exists.qcow2').equals(before)).toBe(true);
  });
});
