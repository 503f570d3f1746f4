// Reading chain identities and finding the images that use a file as their backing file:
// names resolved as QEMU resolves them, loops and missing files ended, the folder scan bounded.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCAN_LIMIT, findDependents, readChain, readLayer } from '../../provider/engines/chain';
import { qemuImgAvailable, requireQemu, runQemuImg } from '../helpers/qemu';

const skip = !qemuImgAvailable() && !requireQemu;
if (skip) console.warn('engines/chain: qemu-img not installed; skipped');

describe.skipIf(skip)('chain identities from local files', () => {
  let dir: string;
  const at = (f: string) => path.join(dir, f);
  const qemu = (args: string[]) => {
    const r = runQemuImg(args, { cwd: dir });
    if (r.status !== 0) throw new Error(r.stderr);
  };
  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-chainid-')); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads_each_layer_top_down_with_relative_names_resolved_against_the_image_folder', () => {
    fs.mkdirSync(at('sub'));
    qemu(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M']);
    qemu(['create', '-q', '-f', 'qcow2', '-b', '../base.qcow2', '-F', 'qcow2', 'sub/mid.qcow2']);
    qemu(['create', '-q', '-f', 'qcow2', '-b', 'sub/mid.qcow2', '-F', 'qcow2', 'top.qcow2']);
    const view = readChain(at('top.qcow2'), 'now');
    expect(view.missing).toBeUndefined();
    expect(view.layers.map((l) => l.path)).toEqual([at('sub/mid.qcow2'), at('base.qcow2')]);
    const st = fs.statSync(at('base.qcow2'), { bigint: true });
    expect(view.layers[1]).toMatchObject({ dev: st.dev.toString(), ino: st.ino.toString(), size: Number(st.size), seen: 'now' });
    expect(readLayer(at('base.qcow2'), 'x')).toEqual({ ...view.layers[1], seen: 'x' });
    expect(readChain(at('base.qcow2'), 'now')).toEqual({ layers: [] });
  });

  it('a_rewrite_at_the_same_path_keeps_the_inode_and_changes_size_or_header', () => {
    qemu(['create', '-q', '-f', 'qcow2', 'rw.qcow2', '1M']);
    const before = readLayer(at('rw.qcow2'), '')!;
    qemu(['create', '-q', '-f', 'qcow2', 'rw.qcow2', '2M']);
    const after = readLayer(at('rw.qcow2'), '')!;
    expect(after.ino).toBe(before.ino);
    expect(after.header).not.toBe(before.header);
  });

  it('stops_at_a_missing_file_and_at_a_loop', () => {
    qemu(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M']);
    expect(readChain(at('orphan.qcow2'), '')).toEqual({ layers: [], missing: at('gone.qcow2') });
    qemu(['create', '-q', '-f', 'qcow2', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', 'loop-a.qcow2', '1M']);
    qemu(['create', '-q', '-f', 'qcow2', '-u', '-b', 'loop-a.qcow2', '-F', 'qcow2', 'loop-b.qcow2', '1M']);
    expect(readChain(at('loop-a.qcow2'), '').layers.map((l) => l.path)).toEqual([at('loop-b.qcow2'), at('loop-a.qcow2')]);
  });

  it('finds_the_images_that_name_a_file_as_backing_beside_it_and_among_the_candidates', () => {
    fs.mkdirSync(at('scan'));
    fs.mkdirSync(at('elsewhere'));
    const s = (f: string) => path.join(at('scan'), f);
    qemu(['create', '-q', '-f', 'qcow2', s('base.qcow2'), '1M']);
    qemu(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', s('a.qcow2')]);
    qemu(['create', '-q', '-f', 'qcow2', '-b', s('base.qcow2'), '-F', 'qcow2', s('b.img')]);
    qemu(['create', '-q', '-f', 'qcow2', '-b', s('base.qcow2'), '-F', 'qcow2', at('elsewhere/c.qcow2')]);
    qemu(['create', '-q', '-f', 'qcow2', s('other.qcow2'), '1M']);
    fs.writeFileSync(s('notes.txt'), 'not an image');
    expect(findDependents(s('base.qcow2'))).toEqual({ dependents: [s('a.qcow2'), s('b.img')], truncated: false });
    expect(findDependents(s('base.qcow2'), [at('elsewhere/c.qcow2'), s('other.qcow2')]).dependents).toEqual([s('a.qcow2'), s('b.img'), at('elsewhere/c.qcow2')].sort());
    expect(findDependents(s('other.qcow2')).dependents).toEqual([]);
  });

  it('the_folder_scan_is_bounded', () => {
    fs.mkdirSync(at('many'));
    for (let i = 0; i <= SCAN_LIMIT; i++) fs.writeFileSync(path.join(at('many'), `f${i}`), '');
    qemu(['create', '-q', '-f', 'qcow2', path.join(at('many'), 'base.qcow2'), '1M']);
    expect(findDependents(path.join(at('many'), 'base.qcow2')).truncated).toBe(true);
  });
});
