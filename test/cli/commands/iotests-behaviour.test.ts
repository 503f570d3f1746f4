// Engine behaviours qemu-iotests check, against qemu-img on the same images: a safe rebase
// writes a zero cluster where the old chain reads zeros and the new one has data (252), and
// resize --shrink gives the data clusters it frees back to the file system (250), and amend
// takes a data file named at open time in --image-opts (061).

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools } from '../../engines/helpers';

const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SKIP = skipWithoutTools('cli/iotests-behaviour');

async function ours(args: string[], cwd: string): Promise<number> {
  const { main } = require(CLI) as { main(argv: string[], io: { out(t: string): void; err(t: string): void }): Promise<number> };
  const prev = process.cwd();
  process.chdir(cwd);
  try {
    return await main(args, { out: () => undefined, err: () => undefined });
  } finally {
    process.chdir(prev);
  }
}

describe.skipIf(SKIP)('behaviours qemu-iotests check', () => {
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
  const folder = () => {
    const d = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-iot-'));
    dirs.push(d);
    return d;
  };

  it('rebase_writes_a_zero_cluster_where_qemu_img_does (252)', async () => {
    const cs = 65536;
    const make = (d: string) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', String(6 * cs)], d);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 'new.qcow2', String(6 * cs)], d);
      must('qemu-io', ['-c', `write -P 0x22 0 ${2 * cs}`, '-c', `write -P 0x11 ${2 * cs} ${2 * cs}`, 'img.qcow2'], d);
      must('qemu-io', ['-c', `write -P 0x11 0 ${cs}`, '-c', `write -P 0x11 ${2 * cs} ${cs}`, '-c', `write -P 0x11 ${4 * cs} ${cs}`, 'new.qcow2'], d);
    };
    const a = folder(), b = folder();
    make(a);
    make(b);
    must('qemu-img', ['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'img.qcow2'], a);
    expect(await ours(['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'img.qcow2'], b)).toBe(0);
    const map = (d: string) => must('qemu-img', ['map', '--output=json', 'img.qcow2'], d).stdout;
    expect(map(b)).toBe(map(a));
    expect(map(b)).toContain(`{ "start": ${4 * cs}, "length": ${cs}, "depth": 0, "present": true, "zero": true, "data": false}`);
    expect(must('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', path.join(a, 'img.qcow2'), path.join(b, 'img.qcow2')], b).status).toBe(0);
  });

  it('resize_shrink_gives_freed_clusters_back_to_the_file_system (250)', async () => {
    const make = (d: string) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=1M,preallocation=metadata', 'img.qcow2', '200M'], d);
      must('qemu-io', ['-c', 'discard 0 10M', '-c', 'discard 190M 10M', '-c', 'write 190M 10M', '-c', 'write 0 10M', 'img.qcow2'], d);
    };
    const a = folder(), b = folder();
    make(a);
    make(b);
    const used = (d: string) => fs.statSync(path.join(d, 'img.qcow2')).blocks * 512;
    const before = used(b);
    must('qemu-img', ['resize', '--shrink', 'img.qcow2', '5M'], a);
    expect(await ours(['resize', '--shrink', 'img.qcow2', '5M'], b)).toBe(0);
    // qemu-img frees the 10 MiB written at 190M (mapped into the file's middle) and more; so do we.
    expect(before - used(b)).toBeGreaterThanOrEqual(10 << 20);
    expect(used(b)).toBeLessThanOrEqual(used(a) + (1 << 20));
    expect(must('qemu-img', ['check', 'img.qcow2'], b).status).toBe(0);
    expect(must('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', path.join(a, 'img.qcow2'), path.join(b, 'img.qcow2')], b).status).toBe(0);
  });

  it('amend_removes_a_data_file_name_given_a_data_file_at_open_time_as_qemu_img (061)', async () => {
    // The header names a data file that is not there; --image-opts names the real one.
    const make = (d: string) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=img.data', 'img.qcow2', '64M'], d);
      must('qemu-img', ['amend', '-o', 'data_file=foo', 'img.qcow2'], d);
    };
    const a = folder(), b = folder();
    make(a);
    make(b);
    const opts = 'data-file.filename=img.data,file.filename=img.qcow2';
    must('qemu-img', ['amend', '-o', 'data_file=', '--image-opts', opts], a);
    expect(await ours(['amend', '-o', 'data_file=', '--image-opts', opts], b)).toBe(0);
    expect(fs.readFileSync(path.join(b, 'img.qcow2')).equals(fs.readFileSync(path.join(a, 'img.qcow2')))).toBe(true);
    // A command that would open the header's data file refuses such a name.
    expect(await ours(['map', '--image-opts', opts], b)).toBe(1);
  });
});
