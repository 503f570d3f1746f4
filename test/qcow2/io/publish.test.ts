// Publishing new files (io/publish.ts): temporary names beside the targets, link(2) into place
// in order, never over an existing file; failures leave nothing new behind and name the target.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { localFs } from '../../../provider/qcow2/io/hostfs';
import { Publication } from '../../../provider/qcow2/io/publish';

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
