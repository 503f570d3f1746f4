// `qcow2 info`, `check` and `map` go through the Engine: -U is honoured (an image a VM or
// qemu-nbd holds is refused without it, read with it), as qemu-img 7.2 does, and the output is
// qemu-img's byte for byte. Run in-process (main() with captured output) on the built CLI.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, startHolder, stopHolder, tool } from '../../engines/helpers';
import { type CliRun, runCli } from '../../helpers/cli';

const SKIP = skipWithoutTools('cli/read-commands');

type Run = CliRun;
const ours = runCli;

function theirs(args: string[], cwd: string): Run {
  const r = tool('qemu-img', args, cwd);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(SKIP)('read-only commands through the Engine', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-read-'));
    tool('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', '64M'], dir);
    tool('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -z 4M 1M', 'img.qcow2'], dir);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it.each([
    ['info', ''], ['info', '--output=json'], ['check', ''], ['check', '--output=json'], ['map', ''], ['map', '--output=json'],
  ])('%s %s prints what qemu-img prints', async (cmd, fmt) => {
    const a = [cmd, ...(fmt ? [fmt] : []), 'img.qcow2'];
    const o = await ours(a, dir);
    const q = theirs(a, dir);
    expect(o.status).toBe(q.status);
    if (cmd === 'info' && !fmt) {
      // disk size depends on the file's allocation at the moment; compare the rest.
      expect(o.stdout.replace(/^disk size: .*$/m, '')).toBe(q.stdout.replace(/^disk size: .*$/m, ''));
    } else if (cmd === 'info') {
      const strip = (t: string) => ({ ...JSON.parse(t), 'actual-size': 0 });
      expect(strip(o.stdout)).toEqual(strip(q.stdout));
    } else {
      expect(o.stdout).toBe(q.stdout);
    }
  });

  it('honours_U_on_an_image_qemu_nbd_holds_as_qemu_img_does', async () => {
    const pid = startHolder(dir, 'img.qcow2');
    try {
      for (const cmd of ['info', 'check', 'map']) {
        const locked = await ours([cmd, 'img.qcow2'], dir);
        const q = theirs([cmd, 'img.qcow2'], dir);
        expect(q.status, `qemu-img ${cmd} without -U`).not.toBe(0);
        expect(locked.status, `${cmd} without -U: ${locked.stderr}`).toBe(1);
        expect(locked.stderr).toMatch(/Failed to get shared "write" lock\nIs another process using the image \[img\.qcow2\]\?/);
        const shared = await ours([cmd, '-U', 'img.qcow2'], dir);
        expect(shared.status, `${cmd} -U: ${shared.stderr}`).toBe(0);
        expect(theirs([cmd, '-U', 'img.qcow2'], dir).status).toBe(0);
      }
    } finally {
      stopHolder(pid);
    }
  });

  it('reports_a_missing_file_without_a_stack_trace', async () => {
    const r = await ours(['info', 'nope.qcow2'], dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^qcow2: Could not open 'nope\.qcow2': /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
