// `qcow2 bitmap` against `qemu-img bitmap` 7.2 on every reference scenario of
// test/fixtures/bitmaps: each scenario runs twice, once as written and once with every
// `qemu-img bitmap` replaced by `qcow2 bitmap` (creates, guest writes through qemu-io, resizes,
// amends and converts stay QEMU's), and every image must come out byte for byte the same, with
// the same messages and exit statuses, the same `qemu-img info` and the same `qemu-img check`.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgPath, skipWithoutQemu } from '../../helpers/qemu';

const FIXTURES = path.resolve(__dirname, '../../fixtures/bitmaps');
const CLI = path.resolve(__dirname, '../../../dist/provider/cli/main.js');
const SCENARIOS = fs.readdirSync(path.join(FIXTURES, 'scenarios')).filter((f) => /^\d+-.*\.sh$/.test(f)).map((f) => f.replace(/\.sh$/, ''));

function which(bin: string): string {
  if (bin.includes('/')) return bin;
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  return r.stdout.trim() || bin;
}

/** Run every scenario into `out` with `qemuImg` as QEMU_IMG. */
function runAll(out: string, qemuImg: string): void {
  const r = spawnSync('sh', [path.join(FIXTURES, 'run.sh'), out], { encoding: 'utf8', env: { ...process.env, QEMU_IMG: qemuImg } });
  expect(r.status, r.stderr).toBe(0);
}

/** A transcript without what may differ by design: QEMU's node names and its open-time warnings, our program name. */
function normalize(text: string, dir: string): string {
  return text
    .replace(/qemu-img: warning: [^\n]*\nSome clusters may be leaked, run 'qemu-img check -r' on the image file to fix\.\n?/g, '')
    .replace(/^qcow2: warning: [^\n]*\nSome clusters may be leaked[^\n]*\n/gm, '')
    .replace(/'#block\d+'/g, "'IMAGE'")
    .replace(/persistent in '[^']*\.qcow2'/g, "persistent in 'IMAGE'")
    .replace(/^qcow2: /gm, 'qemu-img: ')
    .split(dir).join('DIR');
}

describe.skipIf(skipWithoutQemu('bitmap-scenarios-differential'))('qcow2 bitmap is byte-identical to qemu-img bitmap 7.2', () => {
  let base: string;
  const ref = (...p: string[]) => path.join(base, 'ref', ...p);
  const ours = (...p: string[]) => path.join(base, 'ours', ...p);

  beforeAll(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bitmap-diff-'));
    const real = which(qemuImgPath);
    const wrapper = path.join(base, 'qemu-img');
    // Only `bitmap` is ours; everything else (create, resize, amend, convert, info, check) is QEMU's.
    fs.writeFileSync(wrapper, [
      '#!/bin/sh',
      `if [ "$1" = bitmap ]; then shift; exec '${process.execPath}' '${CLI}' bitmap "$@"; fi`,
      `exec '${real}' "$@"`, '',
    ].join('\n'), { mode: 0o755 });
    runAll(ref(), real);
    runAll(ours(), wrapper);
  }, 300_000);

  afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

  it('runs_our_bitmap_command_in_at_least_30_scenarios', () => {
    const withBitmap = SCENARIOS.filter((s) => fs.readFileSync(ours(s, 'transcript.txt'), 'utf8').includes('$ qemu-img bitmap'));
    expect(withBitmap.length).toBeGreaterThanOrEqual(30);
  });

  it.each(SCENARIOS)('%s: the same bytes, messages, info and check', (s) => {
    const images = fs.readdirSync(ref(s)).filter((f) => f.endsWith('.qcow2')).sort();
    expect(fs.readdirSync(ours(s)).filter((f) => f.endsWith('.qcow2')).sort()).toEqual(images);
    for (const img of images) {
      const a = fs.readFileSync(ref(s, img));
      const b = fs.readFileSync(ours(s, img));
      expect(b.length, `${s}/${img}: length`).toBe(a.length);
      const diff = a.findIndex((x, i) => b[i] !== x);
      expect(diff, `${s}/${img}: first differing byte`).toBe(-1);
      expect(fs.readFileSync(ours(s, `${img}.info.json`), 'utf8')).toBe(fs.readFileSync(ref(s, `${img}.info.json`), 'utf8'));
      expect(fs.readFileSync(ours(s, `${img}.check.status`), 'utf8')).toBe(fs.readFileSync(ref(s, `${img}.check.status`), 'utf8'));
    }
    expect(normalize(fs.readFileSync(ours(s, 'transcript.txt'), 'utf8'), ours(s))).toBe(normalize(fs.readFileSync(ref(s, 'transcript.txt'), 'utf8'), ref(s)));
  });
});
