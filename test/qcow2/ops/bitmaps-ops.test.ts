// Persistent bitmaps survive every operation of the native engine as they survive qemu-img's:
// each operation runs on two copies of the same image, one through qemu-img 7.2 and one through
// this engine, and afterwards both check clean, `qemu-img info` reports the same bitmaps (names,
// granularities, flags) and the same image, and QEMU reads the same dirty bits from both. Where
// we refuse what qemu-img 7.2 does (a downgrade of an image with bitmaps), the image is unchanged.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { amendImage, importImage, rebaseUnsafe, resizeImage } from '../../../provider/engines/native/sync';
import { dirtyExtents } from '../../helpers/qsd';
import { qemuImg, qemuIo, runQemuImg, runQemuIo, skipWithoutQemuTools, tempDir } from '../guest/harness';

interface Setup { create: string[]; size: string; bitmaps: Array<[string, string[]]>; writes: string[] }

const PLAIN: Setup = { create: [], size: '4M', bitmaps: [['b', ['-g', '4k']], ['c', []], ['off', ['-g', '512', '--disable']]], writes: ['write -q -P 1 0 8k', 'write -q -P 2 3M 64k', 'write -q -P 3 4032k 64k'] };
const SMALL: Setup = { create: ['-o', 'cluster_size=512'], size: '1M', bitmaps: [['b', ['-g', '512']]], writes: ['write -q -P 1 1020k 4k', 'write -q 0 512'] };
const RAW: Setup = { create: ['-o', 'data_file=DATA,data_file_raw=on'], size: '2M', bitmaps: [['b', ['-g', '4k']]], writes: ['write -q -P 1 0 8k', 'write -q -P 2 1M 4k'] };

type Op = { name: string; setup: Setup; qemu: (f: string) => string[]; ours: (f: string) => void };

const OPS: Op[] = [
  { name: 'resize grow (512-byte clusters)', setup: SMALL, qemu: (f) => ['resize', '-q', f, '3M'], ours: (f) => { resizeImage(f, 3n << 20n); } },
  { name: 'resize shrink', setup: PLAIN, qemu: (f) => ['resize', '-q', '--shrink', f, '2M'], ours: (f) => { resizeImage(f, 2n << 20n, { allowShrink: true }); } },
  { name: 'resize grow, data-file-raw', setup: RAW, qemu: (f) => ['resize', '-q', f, '3M'], ours: (f) => { resizeImage(f, 3n << 20n); } },
  { name: 'amend size', setup: PLAIN, qemu: (f) => ['amend', '-o', 'size=6M', f], ours: (f) => { amendImage(f, { size: 6n << 20n }); } },
  ...[1, 2, 4, 8, 32, 64].map((bits): Op => ({
    name: `amend refcount_bits=${bits}`, setup: PLAIN, qemu: (f) => ['amend', '-o', `refcount_bits=${bits}`, f], ours: (f) => { amendImage(f, { refcountBits: bits }); },
  })),
  { name: 'amend refcount_bits=1 and size', setup: SMALL, qemu: (f) => ['amend', '-o', 'refcount_bits=1,size=2M', f], ours: (f) => { amendImage(f, { refcountBits: 1, size: 2n << 20n }); } },
  { name: 'amend lazy_refcounts=on', setup: PLAIN, qemu: (f) => ['amend', '-o', 'lazy_refcounts=on', f], ours: (f) => { amendImage(f, { lazyRefcounts: true }); } },
  { name: 'rebase -u', setup: PLAIN, qemu: (f) => ['rebase', '-u', '-b', '', f], ours: (f) => { rebaseUnsafe(f, '', undefined); } },
];

describe.skipIf(skipWithoutQemuTools('bitmaps-ops'))('bitmaps survive the native engine operations as they survive qemu-img', () => {
  let dir: string;
  let n = 0;
  beforeAll(() => { dir = tempDir('bitmaps-ops'); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  function make(s: Setup, name: string): string {
    const d = path.join(dir, `${n++}`);
    fs.mkdirSync(d);
    const f = path.join(d, `${name}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', ...s.create.map((a) => a.replace('DATA', path.join(d, `${name}.raw`))), f, s.size]);
    for (const [b, args] of s.bitmaps) qemuImg(['bitmap', '--add', ...args, f, b]);
    qemuIo(['-f', 'qcow2', ...s.writes.flatMap((w) => ['-c', w]), f]);
    return f;
  }

  const info = (f: string) => {
    const j = JSON.parse(qemuImg(['info', '--output=json', f]).replace(/"[^"]*\.raw"/, '"DATA"')) as Record<string, unknown>;
    return { size: j['virtual-size'], data: (j['format-specific'] as { data: unknown }).data };
  };

  async function bits(f: string, s: Setup): Promise<Array<[string, unknown[]]>> {
    const out: Array<[string, unknown[]]> = [];
    for (const [b] of s.bitmaps) out.push([b, await dirtyExtents(f, b)]);
    return out;
  }

  it.each(OPS)('$name', async (op) => {
    const theirs = make(op.setup, 'theirs');
    const mine = make(op.setup, 'mine');
    qemuImg(op.qemu(theirs));
    op.ours(mine);
    expect(runQemuImg(['check', mine]).status, qemuImg(['info', mine])).toBe(0);
    expect(runQemuImg(['check', theirs]).status).toBe(0);
    expect(info(mine)).toEqual(info(theirs));
    const b = await bits(theirs, op.setup);
    expect(b.some(([, e]) => e.length > 0)).toBe(true);
    expect(await bits(mine, op.setup)).toEqual(b);
  });

  it('convert_--bitmaps_copies_them_as_qemu_img_does_into_a_data_file_raw_image_too', async () => {
    const src = make(PLAIN, 'src');
    const d = path.dirname(src);
    qemuImg(['convert', '--bitmaps', '-O', 'qcow2', src, path.join(d, 'theirs.qcow2')]);
    importImage(path.join(d, 'mine.qcow2'), {}, { path: src }, { bitmaps: { skipBroken: false } });
    // The same layout: qemu-img adds the bitmaps after the data and stores them at close, as we do.
    expect(fs.readFileSync(path.join(d, 'mine.qcow2')).equals(fs.readFileSync(path.join(d, 'theirs.qcow2')))).toBe(true);
    importImage(path.join(d, 'raw.qcow2'), { dataFile: path.join(d, 'raw.raw'), dataFileRaw: true }, { path: src }, { bitmaps: { skipBroken: false } });
    expect(runQemuImg(['check', path.join(d, 'raw.qcow2')]).status).toBe(0);
    expect(await bits(path.join(d, 'raw.qcow2'), PLAIN)).toEqual(await bits(src, PLAIN));
  });

  it('a_downgrade_of_an_image_with_bitmaps_is_refused_and_changes_nothing', () => {
    const f = make(PLAIN, 'down');
    const before = fs.readFileSync(f);
    expect(() => amendImage(f, { compat: '0.10' })).toThrow(/Cannot downgrade an image with persistent dirty bitmaps \(b, c, off\): Cannot store dirty bitmaps in qcow2 v2 files/);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
  });

  it('a_resize_with_an_inconsistent_bitmap_is_refused_with_qemu_img_s_words_and_changes_nothing', () => {
    const f = make(SMALL, 'inuse');
    runQemuIo(['-f', 'qcow2', '-c', 'write -q 0 512', '-c', 'sigraise 9', f]);
    const before = fs.readFileSync(f);
    const words = "Bitmap 'b' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk";
    expect(() => resizeImage(f, 2n << 20n)).toThrow(words);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
    expect(runQemuImg(['resize', f, '2M']).stderr).toContain(words);
  });
});
