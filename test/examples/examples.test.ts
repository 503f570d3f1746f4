// Every other example, run like a user would: preview, up, a change, up again, destroy.

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { skipWithoutQemu } from '../helpers/qemu';
import { ProviderHost } from '../resource/host';
import { ProgramState, runProgram } from './program';

const examples = path.resolve(__dirname, '../../examples');
const md5 = (f: string) => crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex');

describe('examples', () => {
  let dir: string;
  const hosts: ProviderHost[] = [];
  const start = async (name: string) => {
    const h = await ProviderHost.start(path.join(examples, name));
    hosts.push(h);
    return h;
  };
  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-examples-')); });
  afterAll(() => {
    for (const h of hosts) h.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('overlays: golden base, per-VM overlays, one grows in a second step', async () => {
    const program = path.join(examples, 'overlays');
    const state = new ProgramState(await start('overlays'), 'qcow2-overlays');
    const images = path.join(dir, 'overlays');
    const config = { imageDir: images, goldenSize: '1G', vms: JSON.stringify({ web: '1G', db: '1G' }) };
    expect((await runProgram(program, state, config, true)).ops).toEqual({ golden: 'create', 'overlay-web': 'create', 'overlay-db': 'create' });
    await runProgram(program, state, config);
    expect(fs.readdirSync(images).sort()).toEqual(['db.qcow2', 'golden.qcow2', 'web.qcow2']);
    const grown = await runProgram(program, state, { ...config, vms: JSON.stringify({ web: '1G', db: '2G' }) });
    expect(grown.ops).toEqual({ golden: 'same', 'overlay-web': 'same', 'overlay-db': 'update' });
    expect((grown.outputs.overlays as Array<{ vm: string; virtualSize: number }>).find((o) => o.vm === 'db')!.virtualSize).toBe(2 ** 31);
    await state.destroy();
    expect(fs.readdirSync(images)).toEqual([]);
  }, 60_000);

  it('raw-data-file: wraps a raw disk unchanged with a bitmap, clears data-file-raw, refuses to set it again, tracks a guest write', async () => {
    const program = path.join(examples, 'raw-data-file');
    const state = new ProgramState(await start('raw-data-file'), 'qcow2-raw-data-file');
    const images = path.join(dir, 'raw');
    fs.mkdirSync(images);
    const disk = path.join(images, 'disk.raw');
    fs.writeFileSync(disk, crypto.randomBytes(1 << 20));
    fs.truncateSync(disk, 16 << 20);
    const before = md5(disk);
    const config = { imageDir: images, rawDisk: disk };
    const up = await runProgram(program, state, config);
    expect(up.outputs).toMatchObject({ dataFile: disk, dataFileRaw: true, virtualSize: 16 << 20 });
    expect(up.outputs.bitmaps).toEqual([{ name: 'backup', granularity: 65536, flags: ['auto'], inconsistent: false }]);
    expect(md5(disk)).toBe(before);
    const off = await runProgram(program, state, { ...config, dataFileRaw: 'false' });
    expect(off).toMatchObject({ ops: { disk: 'update' }, outputs: { dataFileRaw: false } });
    await expect(runProgram(program, state, { ...config, dataFileRaw: 'true' }, true)).rejects.toThrow(/data-file-raw cannot be set on existing images/);
    expect(md5(disk)).toBe(before);
    // A guest writes (qemu-io, as a VM would); the bitmap says where; cleared after the "backup".
    let kept = before;
    if (!skipWithoutQemu('raw-data-file guest write')) {
      const qcow2 = path.join(images, 'disk.qcow2');
      const cli = (...args: string[]) => spawnSync(process.execPath, [path.resolve(__dirname, '../../dist/provider/cli/main.js'), ...args], { encoding: 'utf8' });
      expect(spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 7 1M 64k', qcow2], { encoding: 'utf8' }).status).toBe(0);
      expect(cli('bitmap', '--dump', '--output=json', qcow2, 'backup').stdout).toBe('[{ "start": 1048576, "length": 65536, "dirty": true }]\n');
      expect(cli('bitmap', '--clear', qcow2, 'backup').status).toBe(0);
      expect(cli('bitmap', '--dump', '--output=json', qcow2, 'backup').stdout).toBe('[]\n');
      kept = md5(disk); // the guest's write is in the raw disk
    }
    await state.destroy();
    expect(fs.existsSync(path.join(images, 'disk.qcow2'))).toBe(false);
    expect(md5(disk)).toBe(kept); // the user's raw disk is never deleted
  }, 60_000);

  it('gitops: images from stack config, validated by the shipped schema', async () => {
    const program = path.join(examples, 'gitops');
    const state = new ProgramState(await start('gitops'), 'qcow2-gitops');
    const images = path.join(dir, 'gitops');
    fs.mkdirSync(images);
    const declared = {
      base: { path: path.join(images, 'base.qcow2'), size: '1G' },
      scratch: { path: path.join(images, 'scratch.qcow2'), size: '1G', dataFile: path.join(images, 'scratch.raw'), dataFileRaw: true },
    };
    await expect(runProgram(program, state, { images: JSON.stringify({ bad: { path: 'x.qcow2', size: 'lots', clusterSize: 3 } }) }))
      .rejects.toThrow(/images\.bad\.size|images\.bad\.clusterSize/);
    expect(state.stacks.size).toBe(0);
    const up = await runProgram(program, state, { images: JSON.stringify(declared) });
    expect(up.ops).toEqual({ base: 'create', scratch: 'create' });
    const again = await runProgram(program, state, { images: JSON.stringify({ ...declared, base: { ...declared.base, size: '2G' } }) });
    expect(again.ops).toEqual({ base: 'update', scratch: 'same' });
    await state.destroy();
    expect(fs.readdirSync(images)).toEqual([]);
  }, 60_000);
});

describe('examples type-check as Pulumi runs them (ts-node checks types by default)', () => {
  const tsc = path.resolve(__dirname, '../../node_modules/typescript/bin/tsc');
  it.each(['quickstart', 'overlays', 'raw-data-file', 'gitops'])('%s', (name) => {
    const r = require('child_process').spawnSync(process.execPath, [tsc, '-p', path.join(examples, name, 'tsconfig.json'), '--noEmit'], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 60_000);
});
