// Resize on a remote host (the native engine over SFTP, a real sshd on 127.0.0.1): the in-place
// resize (ops/resize.ts) writes the image through the connection as it writes a local one, in
// qemu-img's layout. Growing gives qemu-img resize's file byte for byte; a shrink gives its guest
// view, a clean check and its file length (freed clusters inside the file are punched only
// where the file is local: over SFTP they keep their bytes, which nothing references).

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, tool } from './helpers';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';

const dist = (m: string) => path.resolve(__dirname, '../../dist/provider', m);
const { getEngine } = require(dist('engines/index.js')) as typeof import('../../provider/engines');
const { sshPool } = require(dist('transport/ssh/index.js')) as typeof import('../../provider/transport/ssh');
const skip = skipWithoutSshd('remote-resize') || skipWithoutTools('remote-resize');

describe.skipIf(skip)('resize of a remote image', () => {
  let sshd: Sshd;
  let dir: string;
  const at = (n: string) => path.join(dir, n);
  const ok = (cmd: string, args: string[]) => {
    const r = tool(cmd, args, dir);
    expect(r.status, r.stderr).toBe(0);
    return r.stdout;
  };
  /** An image with data at the start and at 40 MiB, and a copy of it for qemu-img. */
  const twins = (name: string) => {
    ok('qemu-img', ['create', '-q', '-f', 'qcow2', at(`${name}.qcow2`), '64M']);
    ok('qemu-io', ['-c', 'write -P 0x21 0 3M', '-c', 'write -P 0x22 40M 2M', at(`${name}.qcow2`)]);
    fs.copyFileSync(at(`${name}.qcow2`), at(`${name}-qemu.qcow2`));
  };

  beforeAll(async () => {
    sshd = await startSshd();
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-remote-resize-'));
  });
  afterAll(async () => {
    await sshPool().closeAll();
    await sshd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('grows_as_qemu_img_resize_byte_for_byte', async () => {
    twins('grow');
    const remote = getEngine('native', { connection: { ...sshd.connection(), hostKey: sshd.hostKeyLine } });
    await remote.resize(at('grow.qcow2'), 3n << 30n);
    ok('qemu-img', ['resize', '-q', at('grow-qemu.qcow2'), '3G']);
    expect(fs.readFileSync(at('grow.qcow2')).equals(fs.readFileSync(at('grow-qemu.qcow2')))).toBe(true);
  });

  it('shrinks_to_qemu_img_resizes_guest_view_and_file_length', async () => {
    twins('shrink');
    const remote = getEngine('native', { connection: { ...sshd.connection(), hostKey: sshd.hostKeyLine } });
    await expect(remote.resize(at('shrink.qcow2'), 32n << 20n)).rejects.toThrow(/allowShrink|shrink/i);
    await remote.resize(at('shrink.qcow2'), 32n << 20n, { allowShrink: true });
    ok('qemu-img', ['resize', '-q', '--shrink', at('shrink-qemu.qcow2'), '32M']);
    expect(ok('qemu-img', ['compare', '-s', at('shrink.qcow2'), at('shrink-qemu.qcow2')])).toContain('Images are identical');
    expect(tool('qemu-img', ['check', at('shrink.qcow2')], dir).status).toBe(0);
    expect(fs.statSync(at('shrink.qcow2')).size).toBe(fs.statSync(at('shrink-qemu.qcow2')).size);
  });
});
