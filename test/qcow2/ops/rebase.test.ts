// Safe rebase (rebase without -u): the guest view is unchanged (qemu-img compare against a
// copy taken before), the image stays clean, the backing reference changes; data-file-raw
// images are still refused, untouched.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { rebaseImage } from '../../../provider/engines/native/ops';
import { prng, qemuImg, qemuIo, runQemuImg, skipWithoutQemuTools, tempDir } from '../guest/harness';

const CLI = path.join(__dirname, '..', '..', '..', 'dist', 'provider', 'cli', 'qcow2.js');

function randomWrites(rand: () => number, n: number, size: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const off = Math.floor(rand() * (size / 4096)) * 4096;
    const len = Math.min(size - off, 4096 * (1 + Math.floor(rand() * 40)));
    out.push(rand() < 0.8 ? `write -P 0x${(1 + Math.floor(rand() * 254)).toString(16)} ${off} ${len}` : `write -z ${off} ${len}`);
  }
  return out;
}

describe.skipIf(skipWithoutQemuTools('data rebase'))('safe rebase', () => {
  const root = tempDir('rebase');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  const SIZE = 8 << 20;

  /** old base, new base (sharing some content), an overlay on old base; returns paths. */
  function setup(seed: number, newFormat: 'qcow2' | 'raw', newSize = SIZE) {
    const rand = prng(seed);
    const dir = fs.mkdtempSync(path.join(root, 'case-'));
    const at = (n: string) => path.join(dir, n);
    qemuImg(['create', '-q', '-f', 'qcow2', at('old.qcow2'), String(SIZE)]);
    const common = randomWrites(rand, 10, Math.min(SIZE, newSize));
    qemuIo(['-f', 'qcow2', ...[...common, ...randomWrites(rand, 6, SIZE)].flatMap((c) => ['-c', c]), at('old.qcow2')]);
    if (newFormat === 'qcow2') {
      qemuImg(['create', '-q', '-f', 'qcow2', at('new.qcow2'), String(newSize)]);
      qemuIo(['-f', 'qcow2', ...[...common, ...randomWrites(rand, 6, newSize)].flatMap((c) => ['-c', c]), at('new.qcow2')]);
    } else {
      qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', at('old.qcow2'), at('new.raw')]);
      qemuIo(['-f', 'raw', ...randomWrites(rand, 6, SIZE).flatMap((c) => ['-c', c]), at('new.raw')]);
    }
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'old.qcow2', '-F', 'qcow2', at('top.qcow2'), String(SIZE)]);
    qemuIo(['-f', 'qcow2', ...randomWrites(rand, 5, SIZE).flatMap((c) => ['-c', c]), '-c', 'discard 0 128k', at('top.qcow2')]);
    // The guest view before, as a plain raw file.
    qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', at('top.qcow2'), at('before.raw')]);
    fs.copyFileSync(at('top.qcow2'), at('qemu-top.qcow2'));
    return { dir, at };
  }

  for (let seed = 1; seed <= 6; seed++) {
    const fmt = seed % 3 === 0 ? 'raw' : 'qcow2';
    it(`guest_view_unchanged_seed_${seed}_onto_${fmt}`, () => {
      const { at } = setup(seed, fmt, seed === 2 ? SIZE / 2 : SIZE);
      const nb = fmt === 'raw' ? 'new.raw' : 'new.qcow2';
      const r = seed % 2 === 0
        ? spawnSync(process.execPath, [CLI, 'rebase', '-b', nb, '-F', fmt, at('top.qcow2')], { encoding: 'utf8' })
        : (rebaseImage(at('top.qcow2'), nb, fmt), { status: 0, stderr: '' });
      expect(r.status, r.stderr).toBe(0);
      const cmp = runQemuImg(['compare', '-f', 'raw', '-F', 'qcow2', at('before.raw'), at('top.qcow2')]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical.');
      expect(runQemuImg(['check', at('top.qcow2')]).status).toBe(0);
      const info = JSON.parse(qemuImg(['info', '--output=json', at('top.qcow2')])) as Record<string, string>;
      expect(info['backing-filename']).toBe(nb);
      expect(info['backing-filename-format']).toBe(fmt);
      // qemu-img rebase on a copy: same guest view, and we allocate no more than it does.
      qemuImg(['rebase', '-b', nb, '-F', fmt, at('qemu-top.qcow2')]);
      expect(qemuImg(['compare', at('qemu-top.qcow2'), at('top.qcow2')])).toContain('Images are identical.');
      const ours = JSON.parse(qemuImg(['check', '--output=json', at('top.qcow2')])) as Record<string, number>;
      const theirs = JSON.parse(qemuImg(['check', '--output=json', at('qemu-top.qcow2')])) as Record<string, number>;
      expect(ours['allocated-clusters'] ?? 0).toBeLessThanOrEqual(theirs['allocated-clusters'] ?? 0);
    });
  }

  it('rebase_onto_nothing_copies_the_whole_backing_view', () => {
    const { at } = setup(11, 'qcow2');
    rebaseImage(at('top.qcow2'), '', undefined);
    expect(runQemuImg(['compare', '-f', 'raw', '-F', 'qcow2', at('before.raw'), at('top.qcow2')]).stdout).toContain('Images are identical.');
    const info = JSON.parse(qemuImg(['info', '--output=json', at('top.qcow2')])) as Record<string, unknown>;
    expect(info['backing-filename']).toBeUndefined();
    expect(runQemuImg(['check', at('top.qcow2')]).status).toBe(0);
  });

  it('refused_on_data_file_raw_image_unchanged', () => {
    const dir = fs.mkdtempSync(path.join(root, 'dfr-'));
    const img = path.join(dir, 'img.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'd.raw')},data_file_raw=on`, img, '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', path.join(dir, 'b.qcow2'), '1M']);
    const before = fs.readFileSync(img);
    expect(() => rebaseImage(img, 'b.qcow2', 'qcow2')).toThrow(/data-file-raw/);
    const cli = spawnSync(process.execPath, [CLI, 'rebase', '-b', 'b.qcow2', '-F', 'qcow2', img], { encoding: 'utf8' });
    expect(cli.status).toBe(1);
    expect(cli.stderr).toContain('data-file-raw');
    expect(fs.readFileSync(img).equals(before)).toBe(true);
  });

  it('missing_new_backing_file_fails_without_change', () => {
    const { at } = setup(12, 'qcow2');
    const before = fs.readFileSync(at('top.qcow2'));
    expect(() => rebaseImage(at('top.qcow2'), 'nope.qcow2', 'qcow2')).toThrow(/Could not open new backing file/);
    expect(() => rebaseImage(at('top.qcow2'), 'new.qcow2', undefined)).toThrow(/backing format must be specified/);
    expect(fs.readFileSync(at('top.qcow2')).equals(before)).toBe(true);
  });
});
