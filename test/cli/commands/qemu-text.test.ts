// The command line's text against qemu-img 7.2, byte for byte (`qcow2:` mapped to `qemu-img:`),
// with the exit status: the Formatting line (overlay size from the backing file, numbers
// parsed, encryption first, none before a missing backing file), create -f raw, `-o help` of
// create/convert/amend, info of raw images, --backing-chain and its loop error, json:/file:/
// --image-opts names, check and map of raw images. Each case runs both tools in a fresh folder
// with the same fixtures.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, tool } from '../../engines/helpers';

const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SKIP = skipWithoutTools('cli/qemu-text');

interface Run { status: number; text: string }

async function ours(args: string[], cwd: string): Promise<Run> {
  const { main } = require(CLI) as { main(argv: string[], io: { out(t: string): void; err(t: string): void }): Promise<number> };
  const prev = process.cwd();
  let text = '';
  process.chdir(cwd);
  try {
    const status = await main(args, { out: (t) => { text += t; }, err: (t) => { text += t; } });
    return { status, text: text.replace(/^qcow2: /gm, 'qemu-img: ') };
  } finally {
    process.chdir(prev);
  }
}

function theirs(args: string[], cwd: string): Run {
  const r = tool('qemu-img', args, cwd);
  return { status: r.status ?? -1, text: r.stdout + r.stderr };
}

/** A folder with the fixtures every case may use. */
function fixtures(): string {
  const dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-text-'));
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '64M'], dir);
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'mid.qcow2'], dir);
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'loop.qcow2', '-F', 'qcow2', 'loop.qcow2', '1M'], dir);
  tool('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,data_file=data.raw', 'df.qcow2', '1M'], dir);
  tool('qemu-img', ['create', '-q', '-f', 'raw', 'disk.raw', '1M'], dir);
  fs.writeFileSync(path.join(dir, 'odd.raw'), Buffer.alloc(1024, 7));
  return dir;
}

// Cases whose output does not depend on the file system's allocation (no disk sizes).
const CASES: string[][] = [
  ['create', '-f', 'qcow2', 'new.qcow2', '64M'],
  ['create', '-f', 'qcow2', '-o', 'encryption=off', 'new.qcow2', '64M'],
  ['create', '-f', 'qcow2', '-o', 'size=64M,cluster_size=1k', 'new.qcow2'],
  ['create', '-f', 'qcow2', '-o', 'cluster_size=3k', 'new.qcow2', '64M'],
  ['create', '-f', 'qcow2', '-o', 'compat=0.9', 'new.qcow2', '64M'],
  ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'new.qcow2'],
  ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'new.qcow2', '1G'],
  ['create', '-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2', 'new.qcow2'],
  ['create', '-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2', 'new.qcow2', '1M'],
  ['create', '-f', 'qcow2', 'file:a:b.qcow2', '1M'],
  ['create', '-f', 'qcow2', 'img:new.qcow2', '1M'],
  ['create', '-f', 'raw', 'new.raw', '1000'],
  ['create', '-f', 'raw', '-o', 'preallocation=full', 'new.raw', '1M'],
  ['create', '-f', 'raw', '-o', 'preallocation=metadata', 'new.raw', '1M'],
  ['create', '-f', 'raw', '-o', 'preallocation=bogus', 'new.raw', '1M'],
  ['create', '-f', 'raw', '-o', 'cluster_size=1k', 'new.raw', '1M'],
  ['create', '-f', 'raw', '-b', 'base.qcow2', 'new.raw', '1M'],
  ['create', '-f', 'qcow2', '-o', 'help'],
  ['create', '-f', 'qcow2', '-o', 'help', 'new.qcow2'],
  ['create', '-o', 'help'],
  ['create', '-f', 'raw', '-o', 'help', 'new.raw'],
  ['create', '-f', 'bochs', '-o', 'help'],
  ['convert', '-O', 'qcow2', '-o', 'help'],
  ['convert', '-o', 'help'],
  ['convert', '-O', 'qcow2', '-o', 'help', 'base.qcow2', 'new.qcow2'],
  ['amend', '-f', 'qcow2', '-o', 'help', 'base.qcow2'],
  ['amend', '-f', 'qcow2', '-o', 'help'],
  ['amend', '-o', 'help'],
  ['amend', '-f', 'bochs', '-o', 'help'],
  ['info', '--output=json', 'df.qcow2'],
  ['info', '--output=json', 'odd.raw'],
  ['info', '-f', 'raw', '--output=json', 'base.qcow2'],
  ['info', '--backing-chain', '--output=json', 'top.qcow2'],
  ['info', '--backing-chain', 'loop.qcow2'],
  ['info', '--output=json', "json:{'driver':'qcow2','file':{'driver':'file','filename':'mid.qcow2'}}"],
  ['info', '--output=json', '--image-opts', 'driver=qcow2,file.driver=file,file.filename=mid.qcow2'],
  ['check', 'disk.raw'],
  ['check', '-f', 'raw', 'base.qcow2'],
  ['check', '--output=json', 'disk.raw'],
  ['check', 'missing.raw'],
  ['map', '--output=json', 'disk.raw'],
  ['map', 'disk.raw'],
];

describe.skipIf(SKIP)('text and exit status as qemu-img 7.2', () => {
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });

  it.each(CASES.map((c) => [c.join(' '), c] as const))('%s', async (_label, args) => {
    const a = fixtures(), b = fixtures();
    dirs.push(a, b);
    const q = theirs(args, a);
    const o = await ours(args, b);
    expect(o.text.replaceAll(b, a)).toBe(q.text);
    expect(o.status).toBe(q.status);
  });

  it('create -f raw: the first block written as the file driver of QEMU writes it (map, file size)', async () => {
    for (const size of ['1000', '3000', '1G']) {
      const a = fixtures(), b = fixtures();
      dirs.push(a, b);
      expect(theirs(['create', '-q', '-f', 'raw', 'new.raw', size], a).status).toBe(0);
      expect((await ours(['create', '-q', '-f', 'raw', 'new.raw', size], b)).status).toBe(0);
      expect(fs.statSync(path.join(b, 'new.raw')).size, size).toBe(fs.statSync(path.join(a, 'new.raw')).size);
      const map = (d: string) => theirs(['map', '--output=json', '-f', 'raw', 'new.raw'], d).text;
      expect(map(b), size).toBe(map(a));
    }
  });

  it('info --output=json of an overlay: qemu-img key order (actual size aside)', async () => {
    const a = fixtures();
    dirs.push(a);
    const q = theirs(['info', '--output=json', 'top.qcow2'], a);
    const o = await ours(['info', '--output=json', 'top.qcow2'], a);
    const keys = (t: string) => [...t.matchAll(/^ *"([a-z-]+)":/gm)].map((m) => m[1]);
    expect(keys(o.text)).toEqual(keys(q.text));
    expect(o.text.replace(/"actual-size": \d+/, '')).toBe(q.text.replace(/"actual-size": \d+/, ''));
  });
});
