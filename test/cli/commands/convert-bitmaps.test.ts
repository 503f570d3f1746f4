// `qcow2 convert --bitmaps` on a source whose bitmaps are inconsistent (a writer died holding
// them), and into an image that cannot store bitmaps, as a user runs it, against qemu-img with the
// same arguments: the same bitmap named first (qemu-img meets them from the directory's last to its
// first), the same warnings for those --skip-broken-bitmaps leaves out, the same refusal of a v2
// target, and the same bitmaps in the copy.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools, tool } from '../../engines/helpers';

const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SKIP = skipWithoutTools('cli/convert-bitmaps');

let root: string;

function qcow2(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** qemu-img's run of the same arguments, its prefix as ours prints it. */
function qemu(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = tool('qemu-img', args, root);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.replace(/^qemu-img: /gm, 'qcow2: ') };
}

/** The bitmaps of an image as qemu-img info lists them: name and flags, in directory order. */
function bitmapsOf(file: string): Array<{ name: string; flags: string[] }> {
  const info = JSON.parse(must('qemu-img', ['info', '--output=json', file], root).stdout);
  return (info['format-specific']?.data?.bitmaps ?? []).map((b: { name: string; flags: string[] }) => ({ name: b.name, flags: b.flags }));
}

describe.skipIf(SKIP)('convert --bitmaps against qemu-img', () => {
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-convert-bitmaps-'));
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'src.qcow2', '4M'], root);
    must('qemu-io', ['-c', 'write -P 1 0 1M', 'src.qcow2'], root);
    for (const b of ['b0', 'b1', 'b2']) must('qemu-img', ['bitmap', '--add', 'src.qcow2', b], root);
    // A writer that dies with the image open leaves every bitmap it loaded in-use (inconsistent).
    tool('qemu-io', ['-c', 'abort', 'src.qcow2'], root);
    must('qemu-img', ['bitmap', '--add', 'src.qcow2', 'ok'], root);
    must('qemu-img', ['bitmap', '--remove', 'src.qcow2', 'b1'], root);
    expect(bitmapsOf('src.qcow2').filter((b) => b.flags.includes('in-use')).map((b) => b.name).sort()).toEqual(['b0', 'b2']);
  });
  afterAll(() => { if (root) fs.rmSync(root, { recursive: true, force: true }); });

  it('names_the_inconsistent_bitmap_qemu_img_names_first_and_creates_nothing', () => {
    const args = ['convert', '--bitmaps', '-O', 'qcow2', 'src.qcow2', 'x.qcow2'];
    const theirs = qemu(args);
    expect(theirs.status).toBe(1);
    expect(fs.existsSync(path.join(root, 'x.qcow2'))).toBe(false);
    expect(qcow2(args)).toEqual(theirs);
    expect(fs.existsSync(path.join(root, 'x.qcow2'))).toBe(false);
  });

  it('skip_broken_bitmaps_warns_in_qemu_img_order_and_copies_the_rest', () => {
    const theirs = qemu(['convert', '--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', 'src.qcow2', 'q.qcow2']);
    const ours = qcow2(['convert', '--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', 'src.qcow2', 'o.qcow2']);
    expect(theirs.status).toBe(0);
    expect(ours).toEqual(theirs);
    expect(ours.stderr).toMatch(/warning: Skipping inconsistent bitmap/);
    expect(bitmapsOf('o.qcow2')).toEqual(bitmapsOf('q.qcow2'));
    expect(bitmapsOf('o.qcow2').map((b) => b.name)).toEqual(['ok']);
  });

  it('refuses_a_v2_target_with_qemu_img_sentence_first_even_without_bitmaps', () => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'plain.qcow2', '1M'], root);
    const args = ['convert', '--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10', 'plain.qcow2', 'v2.qcow2'];
    const theirs = qemu(args);
    fs.rmSync(path.join(root, 'v2.qcow2'), { force: true }); // qemu-img creates the target before it finds out
    const ours = qcow2(args);
    expect(ours.status).toBe(theirs.status);
    expect(ours.stderr.split('\n')[0]).toBe(theirs.stderr.split('\n')[0]);
    expect(ours.stderr).toMatch(/compat 1\.1/);
    expect(fs.existsSync(path.join(root, 'v2.qcow2'))).toBe(false);
  });
});
