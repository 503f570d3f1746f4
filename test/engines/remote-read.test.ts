// Header reads of remote images answered on the calling thread (engines/remote-read.ts) give
// what the same read gives locally: an image's facts (info -U) and its chain's identities. An
// image whose facts need more than its first cluster (a snapshot table further on) is read in a
// worker instead, with the same result. A real sshd on 127.0.0.1; the files are this machine's.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, tool } from './helpers';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';

// The built engines (their worker threads load the build) and the connection pool they share.
const dist = (m: string) => path.resolve(__dirname, '../../dist/provider', m);
const { getEngine } = require(dist('engines/index.js')) as typeof import('../../provider/engines');
const { findDependents, readImageChain } = require(dist('engines/chain.js')) as typeof import('../../provider/engines/chain');
const { sshPool } = require(dist('transport/ssh/index.js')) as typeof import('../../provider/transport/ssh');
const skip = skipWithoutSshd('remote-read') || skipWithoutTools('remote-read');

describe.skipIf(skip)('header reads of remote images', () => {
  let sshd: Sshd;
  let dir: string;
  const at = (n: string) => path.join(dir, n);
  const run = (cmd: string, args: string[]) => expect(tool(cmd, args, dir).status).toBe(0);

  beforeAll(async () => {
    sshd = await startSshd();
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-remote-read-'));
    run('qemu-img', ['create', '-f', 'qcow2', at('base.qcow2'), '64M']);
    run('qemu-io', ['-c', 'write -P 0x11 0 1M', at('base.qcow2')]);
    run('qemu-img', ['create', '-f', 'qcow2', '-b', at('base.qcow2'), '-F', 'qcow2', at('top.qcow2')]);
    run('qemu-img', ['create', '-f', 'qcow2', '-o', 'data_file=' + at('d.raw') + ',data_file_raw=on', at('d.qcow2'), '1G']);
    // Snapshots: their table lies past the first cluster.
    run('qemu-img', ['create', '-f', 'qcow2', at('snap.qcow2'), '16M']);
    for (const s of ['one', 'two']) run('qemu-img', ['snapshot', '-c', s, at('snap.qcow2')]);
    fs.writeFileSync(at('r.raw'), Buffer.alloc(3 << 20, 7));
  });
  afterAll(async () => {
    await sshPool().closeAll();
    await sshd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('info -U and the chain identities equal the local ones', async () => {
    const remote = getEngine('native', { connection: { ...sshd.connection(), hostKey: sshd.hostKeyLine } });
    const local = getEngine('native');
    for (const [f, format] of [['top.qcow2', undefined], ['d.qcow2', undefined], ['snap.qcow2', undefined], ['r.raw', 'raw'], ['r.raw', 'probe']] as const) {
      const opts = { forceShare: true, ...(format ? { format } : {}) } as const;
      expect(await remote.info(at(f), opts), f).toEqual(await local.info(at(f), opts));
    }
    expect((await remote.info(at('snap.qcow2'), { forceShare: true })).snapshots).toBe(2);
    const chain = await remote.chain(at('top.qcow2'), 'now');
    expect(chain).toEqual(readImageChain(at('top.qcow2'), 'now'));
    expect(chain.view.layers.map((l) => l.path)).toEqual([at('base.qcow2')]);
    expect(await remote.chain(at('missing.qcow2'), '')).toEqual({ view: { layers: [] } });
    await expect(remote.info(at('missing.qcow2'), { forceShare: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('the images using a base are found on the host as locally, the folder read in one request', async () => {
    const remote = getEngine('native', { connection: { ...sshd.connection(), hostKey: sshd.hostKeyLine } });
    fs.mkdirSync(at('sub'), { recursive: true });
    run('qemu-img', ['create', '-f', 'qcow2', '-b', '../base.qcow2', '-F', 'qcow2', at('sub/rel.qcow2')]);
    fs.writeFileSync(at('fifo-like.txt'), 'not an image');
    for (const [base, candidates] of [['base.qcow2', [at('sub/rel.qcow2')]], ['top.qcow2', []], ['r.raw', []]] as const) {
      const got = await remote.dependents(at(base), candidates);
      expect(got, base).toEqual(findDependents(at(base), candidates));
    }
    expect((await remote.dependents(at('base.qcow2'), [at('sub/rel.qcow2')])).dependents).toEqual([at('sub/rel.qcow2'), at('top.qcow2')]);
  });
});
