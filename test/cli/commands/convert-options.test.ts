// `qcow2 convert` -c, -B/-F, -n and -O raw as a user runs them (the built CLI in its own
// process), each against qemu-img convert with the same arguments: -c leaves qemu-img's bytes;
// -B leaves the same map (the source's top layer only) and guest view; -n writes the guest view
// into an existing image and keeps its options, and refuses a smaller one, changing nothing;
// -O raw makes a sparse raw file with the same contents; the refusals name the way forward.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools, tool } from '../../engines/helpers';

const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SKIP = skipWithoutTools('cli/convert-options');

let root: string;

function qcow2(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const map = (f: string) => JSON.parse(must('qemu-img', ['map', '--output=json', f], root).stdout) as Array<Record<string, unknown>>;
/** The map without host offsets (the layout of data may differ; what is allocated where may not). */
const shape = (f: string) => map(f).map(({ offset: _o, ...rest }) => rest);

describe.skipIf(SKIP)('convert options against qemu-img', () => {
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-convert-'));
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '8M'], root);
    must('qemu-io', ['-c', 'write -P 1 0 4M', '-c', 'write -P 2 6M 1M', 'base.qcow2'], root);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', 'base.qcow2', 'top.qcow2'], root);
    must('qemu-io', ['-c', 'write -P 3 1M 128k', '-c', 'write -z 2M 64k', '-c', 'write -P 4 7M 64k', 'top.qcow2'], root);
    fs.writeFileSync(path.join(root, 'text.raw'), Buffer.from('a line of text to compress, more or less\n'.repeat(60000)));
  });
  afterAll(() => { if (root) fs.rmSync(root, { recursive: true, force: true }); });

  it('c_leaves_qemu_img_bytes_zlib_and_zstd', () => {
    for (const kind of ['zlib', 'zstd']) {
      must('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${kind}`, 'text.raw', `c-q-${kind}.qcow2`], root);
      const r = qcow2(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${kind}`, 'text.raw', `c-o-${kind}.qcow2`]);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.readFileSync(path.join(root, `c-o-${kind}.qcow2`)).equals(fs.readFileSync(path.join(root, `c-q-${kind}.qcow2`))), kind).toBe(true);
    }
  });

  it('B_copies_the_top_layer_only_as_qemu_img', () => {
    must('qemu-img', ['convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', 'b-q.qcow2'], root);
    const r = qcow2(['convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', 'b-o.qcow2']);
    expect(r.status, r.stderr).toBe(0);
    expect(shape('b-o.qcow2')).toEqual(shape('b-q.qcow2'));
    expect(must('qemu-img', ['compare', 'b-o.qcow2', 'top.qcow2'], root).stdout).toMatch(/identical/);
    // Without a backing format: qemu-img's refusal, and nothing created.
    const bare = qcow2(['convert', '-O', 'qcow2', '-B', 'base.qcow2', 'top.qcow2', 'b-x.qcow2']);
    expect(bare.status).toBe(1);
    expect(bare.stderr).toMatch(/Use of backing file requires explicit backing format/);
    expect(fs.existsSync(path.join(root, 'b-x.qcow2'))).toBe(false);
  });

  it('n_writes_into_an_existing_image_and_keeps_its_options', () => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'n.qcow2', '16M'], root);
    must('qemu-io', ['-c', 'write -P 9 0 8M', 'n.qcow2'], root);
    const r = qcow2(['convert', '-n', '-O', 'qcow2', 'top.qcow2', 'n.qcow2']);
    expect(r.status, r.stderr).toBe(0);
    // The first 8 MiB are the source's (the old data there overwritten, zeros included).
    const raw = path.join(root, 'n.raw');
    must('qemu-img', ['convert', '-O', 'raw', 'n.qcow2', raw], root);
    must('qemu-img', ['convert', '-O', 'raw', 'top.qcow2', path.join(root, 'top.raw')], root);
    expect(fs.readFileSync(raw).subarray(0, 8 << 20).equals(fs.readFileSync(path.join(root, 'top.raw')))).toBe(true);
    expect(must('qemu-img', ['info', 'n.qcow2'], root).stdout).toMatch(/cluster_size: 4096/);
    expect(must('qemu-img', ['check', 'n.qcow2'], root).stdout).toMatch(/No errors were found/);
    // A smaller target: refused, unchanged.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'small.qcow2', '1M'], root);
    const before = fs.readFileSync(path.join(root, 'small.qcow2'));
    const small = qcow2(['convert', '-n', '-O', 'qcow2', 'top.qcow2', 'small.qcow2']);
    expect(small.status).toBe(1);
    expect(small.stderr).toMatch(/smaller .* than the source/);
    expect(fs.readFileSync(path.join(root, 'small.qcow2')).equals(before)).toBe(true);
  });

  it('O_raw_makes_a_sparse_raw_file_with_the_guest_view', () => {
    const r = qcow2(['convert', '-O', 'raw', 'top.qcow2', 'o.raw']);
    expect(r.status, r.stderr).toBe(0);
    expect(must('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'o.raw', 'top.qcow2'], root).stdout).toMatch(/identical/);
    expect(fs.statSync(path.join(root, 'o.raw')).blocks * 512).toBeLessThan(fs.statSync(path.join(root, 'o.raw')).size);
    const opts = qcow2(['convert', '-O', 'raw', '-o', 'cluster_size=4096', 'top.qcow2', 'o2.raw']);
    expect(opts.status).toBe(1);
    expect(opts.stderr).toMatch(/raw image has no create options/);
    expect(tool('ls', ['o2.raw'], root).status).not.toBe(0);
    const bitmaps = qcow2(['convert', '--bitmaps', '-O', 'raw', 'top.qcow2', 'o3.raw']);
    expect(bitmaps.status).toBe(1);
    expect(bitmaps.stderr).toMatch(/Format driver 'raw' does not support bitmaps/);
  });

  /** qemu-img's run of the same arguments, its prefix as ours prints it. */
  const qemu = (args: string[]) => {
    const r = tool('qemu-img', args, root);
    return { status: r.status, stdout: r.stdout, stderr: r.stderr.replace(/^qemu-img: /gm, 'qcow2: ') };
  };

  it('without_O_writes_raw_as_qemu_img', () => {
    must('qemu-img', ['convert', 'top.qcow2', 'd-q.img'], root);
    const r = qcow2(['convert', 'top.qcow2', 'd-o.img']);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(must('qemu-img', ['info', '--output=json', 'd-o.img'], root).stdout).format).toBe('raw');
    expect(fs.readFileSync(path.join(root, 'd-o.img')).equals(fs.readFileSync(path.join(root, 'd-q.img')))).toBe(true);
    expect(shape('d-o.img')).toEqual(shape('d-q.img'));
  });

  it('C_and_its_conflicts_in_qemu_img_words', () => {
    for (const args of [
      ['convert', '-C', '-S', '4k', '-O', 'qcow2', 'top.qcow2', 'x.qcow2'],
      ['convert', '-C', '-S', '8k', '-O', 'qcow2', 'top.qcow2', 'x.qcow2'],
      ['convert', '-C', '-c', '-O', 'qcow2', 'top.qcow2', 'x.qcow2'],
      ['convert', '-C', '--salvage', '-O', 'qcow2', 'top.qcow2', 'x.qcow2'],
      ['convert', '-S', '1000', 'top.qcow2', 'x.qcow2'],
      ['convert', '--skip-broken-bitmaps', 'top.qcow2', 'x.qcow2'],
      ['convert', '-c', '-O', 'raw', 'top.qcow2', 'x.qcow2'],
      ['convert', '-c', 'top.qcow2', 'x.qcow2'],
      ['convert', '-B', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', 'x.qcow2'],
    ]) {
      expect(qcow2(args), args.join(' ')).toEqual(qemu(args));
      fs.rmSync(path.join(root, 'x.qcow2'), { force: true }); // qemu-img may leave it (compression is checked after creating)
    }
    // -C alone: the same copy.
    must('qemu-img', ['convert', '-C', '-O', 'qcow2', 'top.qcow2', 'cc-q.qcow2'], root);
    const r = qcow2(['convert', '-C', '-O', 'qcow2', 'top.qcow2', 'cc-o.qcow2']);
    expect(r.status, r.stderr).toBe(0);
    expect(shape('cc-o.qcow2')).toEqual(shape('cc-q.qcow2'));
    expect(must('qemu-img', ['compare', 'cc-o.qcow2', 'cc-q.qcow2'], root).stdout).toMatch(/identical/);
  });

  it('a_missing_backing_file_named_by_o_is_reported_as_qemu_img_reports_it_and_nothing_is_created', () => {
    fs.mkdirSync(path.join(root, 'sub'), { recursive: true });
    const args = ['convert', '-O', 'qcow2', '-o', 'backing_file=nope.qcow2,backing_fmt=qcow2', 'top.qcow2', 'sub/mb.qcow2'];
    const ref = qemu(args);
    fs.rmSync(path.join(root, 'sub', 'mb.qcow2'), { force: true }); // qemu-img created it before failing to open it
    expect(qcow2(args)).toEqual(ref);
    expect(ref.stderr).toMatch(/Could not open backing file: Could not open 'sub\/nope.qcow2'/);
    expect(fs.existsSync(path.join(root, 'sub', 'mb.qcow2'))).toBe(false);
  });
});
