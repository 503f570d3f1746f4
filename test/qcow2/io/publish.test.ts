// Publishing new files (io/publish.ts): temporary names beside the targets, link(2) into place
// in order, never over an existing file; failures leave nothing new behind and name the target;
// what a killed process left is swept by the next publication in the folder.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { localFs } from '../../../provider/qcow2/io/hostfs';
import { Publication, sweepStale } from '../../../provider/qcow2/io/publish';
import { planCreate, writePlan } from '../../../provider/qcow2/ops/create';
import type { CreateOptions } from '../../../provider/model/options';
import { resolveCreate } from '../../../provider/rules/create';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-publish-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function folder(name: string): string {
  const d = path.join(root, name);
  fs.mkdirSync(d);
  return d;
}

describe('publication', () => {
  it('links_every_file_into_place_and_leaves_no_temporary_name', () => {
    const d = folder('ok');
    const pub = new Publication();
    pub.create(path.join(d, 'data.raw'), 'data file').write(0, Buffer.from('data'));
    pub.create(path.join(d, 'img.qcow2'), 'image').write(0, Buffer.from('image'));
    expect(fs.readdirSync(d).every((f) => f.startsWith('.'))).toBe(true); // nothing visible yet
    pub.publish();
    expect(fs.readdirSync(d).sort()).toEqual(['data.raw', 'img.qcow2']);
    expect(fs.readFileSync(path.join(d, 'img.qcow2'), 'utf8')).toBe('image');
    expect(fs.statSync(path.join(d, 'img.qcow2')).nlink).toBe(1);
  });

  it('a_target_that_appeared_meanwhile_is_kept_and_named_in_the_error', () => {
    const d = folder('race');
    const pub = new Publication();
    pub.create(path.join(d, 'data.raw'), 'data file').write(0, Buffer.from('ours'));
    pub.create(path.join(d, 'img.qcow2'), 'image').write(0, Buffer.from('ours'));
    fs.writeFileSync(path.join(d, 'img.qcow2'), 'theirs'); // someone else's, after we began
    let err: unknown;
    try {
      pub.publish();
    } catch (e) {
      err = e;
      pub.abort();
    }
    expect(Qcow2Error.isInstance(err) && err.code).toBe('EXISTS');
    expect((err as Error).message).toBe(`Image file '${path.join(d, 'img.qcow2')}' already exists; refusing to overwrite it`);
    expect((err as Error).message).not.toMatch(/qcow2-tmp/);
    // Theirs untouched; the data file we had linked already is gone again; no temporaries.
    expect(fs.readdirSync(d)).toEqual(['img.qcow2']);
    expect(fs.readFileSync(path.join(d, 'img.qcow2'), 'utf8')).toBe('theirs');
  });

  it('abort_never_removes_a_target_that_is_no_longer_the_file_it_linked', () => {
    const d = folder('replaced');
    const target = path.join(d, 'data.raw');
    const pub = new Publication();
    pub.create(target, 'data file');
    pub.create(path.join(d, 'img.qcow2'), 'image');
    fs.writeFileSync(path.join(d, 'img.qcow2'), 'theirs');
    expect(() => pub.publish()).toThrow(/already exists/);
    fs.unlinkSync(target); // our data file was replaced by another one meanwhile
    fs.writeFileSync(target, 'replacement');
    pub.abort();
    expect(fs.readFileSync(target, 'utf8')).toBe('replacement');
  });

  it('files_made_by_a_tool_in_a_private_folder_are_published_and_the_folder_removed', () => {
    const d = folder('tool');
    const pub = new Publication();
    const tmp = pub.folderBeside(path.join(d, 'img.qcow2'));
    fs.writeFileSync(path.join(tmp, 'img.qcow2'), 'made by a tool');
    pub.stage(path.join(tmp, 'img.qcow2'), path.join(d, 'img.qcow2'), 'image');
    pub.publish();
    expect(fs.readdirSync(d)).toEqual(['img.qcow2']);
  });

  it('a_missing_folder_names_the_target', () => {
    const target = path.join(root, 'no-such-folder', 'img.qcow2');
    expect(() => new Publication(localFs).create(target, 'image')).toThrow(`Could not create '${target}': No such file or directory`);
  });
});

/** The pid of a process that has exited (and been reaped). */
function deadPid(): number {
  return spawnSync('true').pid!;
}

/** A publication's temporary name, as a process `pid` would have made it. */
function temp(dir: string, target: string, pid: number, role: 'i' | 'd', stamp = 'kx1'): string {
  return path.join(dir, `.${target}.qcow2-tmp-${pid}-${stamp}-${role}`);
}

/** A qcow2 image file naming `dataFile` (as create writes one). */
function imageNaming(p: string, dataFile: string): void {
  const plan = planCreate(resolveOptions({ size: 1n << 20n, dataFile, dataFileRaw: true }));
  const f = localFs.open(p, 'create').file;
  writePlan(plan, f);
  f.close();
}

function resolveOptions(o: CreateOptions) {
  const r = resolveCreate(o, { backing: () => { throw new Error('none'); }, adoptedDataFileSize: () => 0n, adoptedDataFileExists: () => false });
  if (!r.ok) throw new Error(r.refusal.message);
  return r.options;
}

describe('temporary files of crashed publications', () => {
  it('are_removed_by_the_next_publication_in_the_folder_when_their_process_is_gone', () => {
    const d = folder('stale');
    const pid = deadPid();
    fs.writeFileSync(temp(d, 'img.qcow2', pid, 'i'), 'half an image');
    fs.writeFileSync(temp(d, 'other.raw', pid, 'd', 'zz9'), 'half a data file');
    fs.mkdirSync(path.join(d, `.qcow2-tmp-${pid}-kx1-AbC123`));
    fs.writeFileSync(path.join(d, `.qcow2-tmp-${pid}-kx1-AbC123`, 'img.qcow2'), 'a tool\'s work');
    const pub = new Publication();
    pub.create(path.join(d, 'new.qcow2'), 'image');
    pub.publish();
    expect(fs.readdirSync(d)).toEqual(['new.qcow2']);
  });

  it('of_a_live_process_and_names_that_are_not_ours_are_kept', () => {
    const d = folder('kept');
    const live = temp(d, 'img.qcow2', process.ppid, 'i');
    const notOurs = ['.img.qcow2.qcow2-tmp-x-1-i', '.img.qcow2.swp', `.img.qcow2.qcow2-tmp-${deadPid()}-kx1-q`, 'img.qcow2~'];
    fs.writeFileSync(live, 'in progress elsewhere');
    for (const n of notOurs) fs.writeFileSync(path.join(d, n), 'someone else\'s');
    expect(sweepStale(d).removed).toBe(0);
    expect(fs.readdirSync(d).sort()).toEqual([path.basename(live), ...notOurs].sort());
  });

  it('a_data_file_linked_without_its_image_is_unlinked_again', () => {
    // Killed between link(data) and link(image): the data file is at the user's path, alone.
    const d = folder('half');
    const pid = deadPid();
    const data = path.join(d, 'data.raw');
    imageNaming(temp(d, 'img.qcow2', pid, 'i'), data);
    fs.writeFileSync(temp(d, 'data.raw', pid, 'd'), Buffer.alloc(1 << 20));
    fs.linkSync(temp(d, 'data.raw', pid, 'd'), data);
    const r = sweepStale(d);
    expect(r.undone).toEqual([data]);
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('a_data_file_in_another_folder_is_undone_by_the_sweep_of_the_images_folder', () => {
    const d = folder('half-img'), dd = folder('half-data');
    const pid = deadPid();
    const data = path.join(dd, 'data.raw');
    imageNaming(temp(d, 'img.qcow2', pid, 'i'), data);
    fs.writeFileSync(temp(dd, 'data.raw', pid, 'd'), 'raw');
    fs.linkSync(temp(dd, 'data.raw', pid, 'd'), data);
    // The data file's folder alone cannot tell whether the image was linked: it waits.
    expect(sweepStale(dd)).toEqual({ removed: 0, undone: [] });
    expect(fs.existsSync(data)).toBe(true);
    expect(sweepStale(d).undone).toEqual([data]);
    expect(fs.readdirSync(dd)).toEqual([]);
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('a_completed_publication_keeps_its_files_and_loses_its_temporary_names', () => {
    // Killed after the image was linked, before the temporary names went.
    const d = folder('done');
    const pid = deadPid();
    const data = path.join(d, 'data.raw'), img = path.join(d, 'img.qcow2');
    imageNaming(temp(d, 'img.qcow2', pid, 'i'), data);
    fs.writeFileSync(temp(d, 'data.raw', pid, 'd'), 'raw');
    fs.linkSync(temp(d, 'data.raw', pid, 'd'), data);
    fs.linkSync(temp(d, 'img.qcow2', pid, 'i'), img);
    expect(sweepStale(d)).toEqual({ removed: 2, undone: [] });
    expect(fs.readdirSync(d).sort()).toEqual(['data.raw', 'img.qcow2']);
  });

  it('a_target_that_is_another_file_than_the_temporary_one_is_never_touched', () => {
    const d = folder('other-file');
    const pid = deadPid();
    const data = path.join(d, 'data.raw');
    imageNaming(temp(d, 'img.qcow2', pid, 'i'), data);
    fs.writeFileSync(temp(d, 'data.raw', pid, 'd'), 'ours, never linked');
    fs.writeFileSync(data, 'the user\'s own file');
    expect(sweepStale(d).undone).toEqual([]);
    expect(fs.readdirSync(d)).toEqual(['data.raw']);
    expect(fs.readFileSync(data, 'utf8')).toBe('the user\'s own file');
  });
});
