// snapshot -a and -d of a snapshot whose L1 table is broken (080), against qemu-img on copies of
// the same image: qemu-img's lines, each prefixed, and the image left as it was.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { must, scratchBase, skipWithoutTools, tool } from '../../engines/helpers';
import { runCli } from '../../helpers/cli';

const SKIP = skipWithoutTools('cli/snapshot-errors');

const ours = runCli;

describe.skipIf(SKIP)('snapshot errors on a broken snapshot table, as qemu-img', () => {
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });

  const cases: Array<[string, (snapshotsOffset: number) => [number, Buffer]]> = [
    ['an L1 table offset not cluster aligned', (at) => [at, Buffer.from([0, 0, 0, 0, 0, 0x40, 0x02, 0])]],
    ['an L1 table too large', (at) => [at + 8, Buffer.from([0x10, 0, 0, 0])]],
  ];
  for (const [name, poke] of cases) {
    for (const action of ['-a', '-d']) {
      it(`snapshot ${action} of a snapshot with ${name}`, async () => {
        const d = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-snap-'));
        dirs.push(d);
        must('qemu-img', ['create', '-q', '-f', 'qcow2', 'a.qcow2', '64M'], d);
        must('qemu-io', ['-c', 'write 0 512', 'a.qcow2'], d);
        must('qemu-img', ['snapshot', '-c', 'test', 'a.qcow2'], d);
        const file = path.join(d, 'a.qcow2');
        const head = Buffer.alloc(72);
        const fd = fs.openSync(file, 'r+');
        fs.readSync(fd, head, 0, 72, 0);
        const [at, bytes] = poke(Number(head.readBigUInt64BE(64)));
        fs.writeSync(fd, bytes, 0, bytes.length, at);
        fs.closeSync(fd);
        fs.copyFileSync(file, path.join(d, 'b.qcow2'));
        const before = fs.readFileSync(file);
        const ref = tool('qemu-img', ['snapshot', action, 'test', 'b.qcow2'], d);
        const got = await ours(['snapshot', action, 'test', 'a.qcow2'], d);
        expect(got.status).toBe(ref.status);
        expect(got.stderr).toBe(ref.stderr.replace(/^qemu-img: /gm, 'qcow2: '));
        expect(got.stderr.split('\n').filter(Boolean).every((l) => l.startsWith('qcow2: '))).toBe(true);
        expect(fs.readFileSync(file)).toEqual(before);
      });
    }
  }
});
