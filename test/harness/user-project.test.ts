// A new user's project: a fresh folder with only the packed tarball and @pulumi/pulumi
// installed, a TypeScript program using Image, run the way `pulumi preview/up/refresh/destroy`
// run it (test/harness/engine.ts). Then the folder moves: the same state refreshes and destroys
// from the moved copy, and the state never names the project's folder.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Project } from './engine';
import { HANG_MS, bareInstall, projectCopy, runDir } from './install';

const program = `import * as pulumi from '@pulumi/pulumi';
import { Image } from 'pulumi-qcow2';

const config = new pulumi.Config();
const dir = config.require('imageDir');
const base = new Image('base', { path: \`\${dir}/base.qcow2\`, size: config.get('size') ?? '1G' });
const cluster = config.getNumber('vmClusterSize');
const vm = new Image('vm', {
  path: \`\${dir}/vm.qcow2\`, backingFile: base.path, backingFormat: 'qcow2',
  ...(cluster ? { clusterSize: cluster, allowReplace: true } : {}),
});
export const basePath = base.path;
export const vmSize = vm.virtualSize;
`;

describe('a fresh project with only the tarball and @pulumi/pulumi installed', () => {
  let work: string;
  let images: string;
  let source: string;

  beforeAll(() => {
    work = fs.mkdtempSync(path.join(runDir(), 'user-'));
    images = path.join(work, 'images');
    fs.mkdirSync(images);
    source = path.join(work, 'source');
    fs.mkdirSync(source);
    fs.writeFileSync(path.join(source, 'Pulumi.yaml'), 'name: disks\nruntime:\n  name: nodejs\n  options:\n    typescript: true\n');
    fs.writeFileSync(path.join(source, 'package.json'), JSON.stringify({ name: 'disks', private: true, main: 'index.ts' }, null, 2));
    fs.writeFileSync(path.join(source, 'index.ts'), program);
  }, HANG_MS);

  it('previews, ups, refreshes, and refreshes and destroys from a moved copy', async () => {
    const first = await projectCopy(source, path.join(work, 'project'), await bareInstall());
    const stateFile = path.join(work, 'state.json');
    const project = new Project({ dir: first, stateFile, config: { imageDir: images } });

    const preview = await project.preview();
    expect(preview.errors).toEqual([]);
    expect(preview.ops).toEqual({ base: 'create', vm: 'create' });
    expect(fs.readdirSync(images)).toEqual([]);

    const up = await project.up();
    expect(up.errors).toEqual([]);
    expect(up.ops).toEqual({ base: 'create', vm: 'create' });
    expect(up.outputs).toEqual({ basePath: path.join(images, 'base.qcow2'), vmSize: 1 << 30 });
    expect(fs.readdirSync(images).sort()).toEqual(['base.qcow2', 'vm.qcow2']);

    const refresh = await project.refresh();
    expect(refresh.errors).toEqual([]);
    expect(refresh.ops).toEqual({ base: 'same', vm: 'same' });

    // A create-only change, allowed to replace: the provider asks for delete-before-replace (same
    // path), so the engine deletes the old overlay before it creates the new one.
    const replacing = new Project({ dir: first, stateFile, config: { imageDir: images, vmClusterSize: '4096' } });
    expect((await replacing.preview()).ops).toEqual({ base: 'same', vm: 'replace' });
    const replaced = await replacing.up();
    expect(replaced.errors).toEqual([]);
    expect(replaced.ops).toEqual({ base: 'same', vm: 'replace' });
    expect(replacing.readState().resources.find((r) => r.urn.endsWith('::vm'))!.outputs.clusterSize).toBe(4096);

    // The project moves (another clone, another runner): the state still works from there.
    const moved = path.join(work, 'moved');
    fs.renameSync(first, moved);
    const there = new Project({ dir: moved, stateFile, config: { imageDir: images, vmClusterSize: '4096' } });
    expect((await there.refresh()).ops).toEqual({ base: 'same', vm: 'same' });
    const state = fs.readFileSync(stateFile, 'utf8');
    expect(state).not.toContain(first);
    expect(state).not.toContain(moved);
    expect(state).not.toContain(path.resolve(__dirname, '../..')); // nor this checkout
    const destroy = await there.destroy();
    expect(destroy.errors).toEqual([]);
    expect(destroy.ops).toEqual({ vm: 'delete', base: 'delete' });
    expect(fs.readdirSync(images)).toEqual([]);
    expect(there.readState().resources).toEqual([]);
  }, HANG_MS);

  // The command line as npm installs it: node_modules/.bin/qcow2, a link to the package's
  // executable, run by its shell line (which starts Node without NODE_EXTRA_CA_CERTS: a file
  // Node could not read would show as a warning at start-up).
  it('runs the installed qcow2 executable from node_modules/.bin', async () => {
    const dir = await projectCopy(source, path.join(work, 'cli-project'), await bareInstall());
    const bin = path.join(dir, 'node_modules', '.bin', 'qcow2');
    expect(fs.lstatSync(bin).isSymbolicLink()).toBe(true);
    const env = { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`, NODE_EXTRA_CA_CERTS: path.join(dir, 'no-such-ca.pem') };
    const run = (args: string[]) => spawnSync(bin, args, { cwd: dir, env, encoding: 'utf8' });
    const made = run(['create', '-q', '-f', 'qcow2', 'cli.qcow2', '64M']);
    expect(made.status, made.stderr).toBe(0);
    const info = run(['info', 'cli.qcow2']);
    expect(info.status, info.stderr).toBe(0);
    expect(info.stdout).toContain('virtual size: 64 MiB (67108864 bytes)');
    expect(info.stderr).toBe('');
  }, HANG_MS);
});
