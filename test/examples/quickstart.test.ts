// The quick start program, run as `pulumi preview`, `pulumi up`, a change, `up` again and
// `pulumi destroy`, from the Pulumi program down to bytes on disk.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProviderHost } from '../resource/host';
import { ProgramState, runProgram } from './program';

const program = path.resolve(__dirname, '../../examples/quickstart');

describe('examples/quickstart', () => {
  let dir: string;
  let host: ProviderHost;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-quickstart-'));
    host = await ProviderHost.start(program);
  }, 60_000);
  afterAll(() => {
    host?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('preview_up_change_up_destroy', async () => {
    const state = new ProgramState(host, 'qcow2-quickstart');
    const images = path.join(dir, 'images');
    const config = { imageDir: images, baseSize: '2G', dataSize: '1G' };

    const preview = await runProgram(program, state, config, true);
    expect(Object.values(preview.ops)).toEqual(['create', 'create', 'create', 'create']);
    expect(fs.readdirSync(images)).toEqual([]);

    const up = await runProgram(program, state, config);
    expect(up.ops).toEqual({ base: 'create', vm1: 'create', vm2: 'create', data: 'create' });
    expect(fs.readdirSync(images).sort()).toEqual(['base.qcow2', 'data.qcow2', 'data.raw', 'vm1.qcow2', 'vm2.qcow2']);
    expect(up.outputs.dataVirtualSize).toBe(1 << 30);
    expect(fs.statSync(path.join(images, 'data.raw')).size).toBe(1 << 30);

    const again = await runProgram(program, state, config);
    expect(again.ops).toEqual({ base: 'same', vm1: 'same', vm2: 'same', data: 'same' });

    const grown = await runProgram(program, state, { ...config, dataSize: '2G' });
    expect(grown.ops).toEqual({ base: 'same', vm1: 'same', vm2: 'same', data: 'update' });
    expect(grown.outputs.dataVirtualSize).toBe(2 ** 31);
    expect(fs.statSync(path.join(images, 'data.raw')).size).toBe(2 ** 31);

    await state.destroy();
    expect(fs.readdirSync(images)).toEqual([]);
  }, 120_000);
});
