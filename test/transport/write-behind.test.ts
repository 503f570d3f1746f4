// Write-behind on a remote host's files (transport/ssh/remote-fs.ts), against a real sshd: a
// write answers once sent, and what follows still sees it — a read or a stat by name after writes
// finds their bytes, a lock is released only after them — and a write that fails (the link cut
// mid-transfer, at a loopback proxy) is reported, once, by the file's next call, while a close
// after it still closes the file and lets the lock go.

import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SshPool } from '../../provider/transport/ssh';
import { RemoteFs, remoteFs } from '../../provider/transport/ssh/remote-fs';
import { scratchBase } from '../engines/helpers';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';
import { failure } from './support';

const skip = skipWithoutSshd('write-behind');
const MiB = 1 << 20;

describe.skipIf(skip)('write-behind on a remote host', () => {
  let sshd: Sshd;
  let proxy: TcpProxy;
  let pool: SshPool;
  let dir: string;
  /** The host's files, straight to sshd or through the proxy. */
  let direct: RemoteFs;
  let cut: RemoteFs;

  beforeAll(async () => {
    sshd = await startSshd();
    proxy = await startTcpProxy({ host: '127.0.0.1', port: sshd.port });
    pool = new SshPool({ knownHostsFiles: [sshd.knownHostsPath], env: {} });
    direct = remoteFs({ ...sshd.connection(), hostKey: sshd.hostKeyLine }, pool);
    cut = remoteFs({ ...sshd.connection({ port: proxy.port }), hostKey: sshd.hostKeyLine }, pool);
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-write-behind-'));
  }, 60_000);
  afterAll(async () => {
    await pool?.closeAll();
    await proxy?.close();
    await sshd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads, stats by name and lock releases come after the writes sent before them', async () => {
    const file = path.join(dir, 'ordered.bin');
    const data = randomBytes(24 * MiB + 4321); // several times the bytes allowed in flight
    const { answer } = await direct.open(file, 'create');
    const lock = await direct.lock(answer.handle, 'write');
    for (let off = 0; off < data.length; off += MiB) await direct.write(answer.handle, off, data.subarray(off, Math.min(off + MiB, data.length)));
    // By name: waits for every open file's writes.
    expect((await direct.stat(file))?.size).toBe(data.length);
    // On the file: waits for its writes.
    expect((await direct.read(answer.handle, data.length - 4321, 4321)).equals(data.subarray(data.length - 4321))).toBe(true);
    await direct.write(answer.handle, 0, Buffer.alloc(MiB, 7));
    await direct.unlock(lock.id);
    expect(fs.readFileSync(file).subarray(0, MiB).equals(Buffer.alloc(MiB, 7))).toBe(true);
    await direct.close(answer.handle);
    const back = fs.readFileSync(file);
    expect(back.subarray(MiB).equals(data.subarray(MiB))).toBe(true);
  });

  it('a write that fails is reported once by the next call on the file, and the file still closes', async () => {
    const file = path.join(dir, 'cut.bin');
    const { answer } = await cut.open(file, 'create');
    const lock = await cut.lock(answer.handle, 'write');
    // Cut the link 4 MiB into the writes; the writes answered before it had no way to know.
    proxy.setDropAfterBytes(proxy.bytes.up + proxy.bytes.down + 4 * MiB);
    let reported: unknown;
    try {
      for (let i = 0; i < 32 && reported === undefined; i++) {
        await cut.write(answer.handle, i * MiB, randomBytes(MiB)).catch((e: unknown) => (reported = e));
      }
      if (reported === undefined) reported = await cut.sync(answer.handle).then(() => undefined, (e: unknown) => e);
    } finally {
      proxy.setDropAfterBytes(undefined);
    }
    expect(reported, 'no call reported the failed write').toBeDefined();
    const e = await failure(Promise.reject(reported));
    expect(e.code).toBe('CONNECTION');
    expect(e.message).not.toMatch(/\n\s+at /);
    // Reported once: the close that follows closes the file and gives its lock up without it.
    await cut.close(answer.handle);
    await expect(cut.read(answer.handle, 0, 1)).rejects.toThrow(/used after it was closed/);
    await cut.unlock(lock.id); // already released with the close: nothing left to do
    // The host is reachable again, on a new connection.
    expect((await cut.stat(dir))?.kind).toBe('directory');
  });
});
