// QEMU image locks on a "remote" host, both directions, with real QEMU: the images live on this
// machine, the lock helper runs through the real sshd, and qemu-nbd / qemu-io / qemu-img are the
// QEMU side. Also: a dropped connection releases the helper's locks (never left behind).

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { lockBytes } from '../../provider/qcow2/io/lock';
import { HostHelper, SshPool, lockRemoteImage, type RemoteImageLock, type SshConnection } from '../../provider/transport/ssh';
import { scratchBase, skipWithoutTools, startHolder, stopHolder, tool } from '../engines/helpers';
import { skipWithoutSshd, type Sshd } from '../helpers/sshd';
import { failure, useSshd } from './support';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';

const skip = skipWithoutSshd('ssh-lock') || skipWithoutTools('ssh-lock');

/** QEMU's refusal when we hold the write lock (qemu-io opening read-write). */
const QEMU_WRITE_REFUSAL = /Failed to get "write" lock/;
/** qemu-img info without -U against a writer. */
const QEMU_SHARED_REFUSAL = /Failed to get shared "write" lock/;

describe.skipIf(skip)('QEMU image locks through SSH', () => {
  const suite = useSshd();
  let sshd: Sshd;
  let conn: SshConnection;
  let dir: string;
  let image: string;
  const locks: RemoteImageLock[] = [];
  const holders: number[] = [];

  const qemuIo = () => tool('qemu-io', ['-c', 'read 0 512', '-f', 'qcow2', image], dir);
  const qemuInfo = () => tool('qemu-img', ['info', image], dir);

  beforeAll(() => {
    ({ sshd, conn } = suite);
  });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-rlock-'));
    image = path.join(dir, "disk with 'quotes' $(x).qcow2");
    const r = tool('qemu-img', ['create', '-f', 'qcow2', image, '1M'], dir);
    expect(r.status, r.stderr).toBe(0);
  });

  afterEach(async () => {
    for (const l of locks.splice(0)) await l.release().catch(() => undefined);
    for (const pid of holders.splice(0)) stopHolder(pid);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const lock = async (mode: 'read' | 'write', c: SshConnection = conn) => {
    const l = await lockRemoteImage(c, image, mode);
    locks.push(l);
    return l;
  };

  it('a write lock we hold keeps QEMU out; released, QEMU opens the image', async () => {
    const l = await lock('write');
    expect(l.held).toBe(true);
    expect(l.bytes).toEqual(lockBytes('write'));
    const io = qemuIo();
    expect(io.status).not.toBe(0);
    expect(io.stderr).toMatch(QEMU_WRITE_REFUSAL);
    expect(qemuInfo().stderr).toMatch(QEMU_SHARED_REFUSAL);
    await l.release();
    expect(l.held).toBe(false);
    expect(qemuIo().status).toBe(0);
  });

  it('a read lock lets qemu-img info in and keeps writers out', async () => {
    await lock('read');
    expect(qemuInfo().status).toBe(0);
    expect(qemuIo().stderr).toMatch(QEMU_WRITE_REFUSAL);
  });

  it('refuses while qemu-nbd holds the image, in QEMU words, naming the holder', async () => {
    const pid = startHolder(dir, image);
    holders.push(pid);
    const e = await failure(lock('write'));
    expect(e.code).toBe('LOCKED');
    expect(e.message).toBe(`Failed to get "write" lock\nIs another process using the image [${image}]?\nHeld on ${conn.label} by qemu-nbd (pid ${pid})`);
    const r = await failure(lock('read'));
    expect(r.message).toMatch(/^Failed to get shared "write" lock\n/);
    // Nothing of ours stayed behind: once qemu-nbd is gone, both succeed.
    stopHolder(holders.pop()!);
    const l = await lock('write');
    expect(l.held).toBe(true);
  });

  it('changes modes as QEMU does: an upgrade refused keeps the old mode', async () => {
    const l = await lock('read');
    const reader = tool('qemu-img', ['info', image], dir);
    expect(reader.status).toBe(0);
    await l.change('write');
    expect(l.mode).toBe('write');
    expect(qemuInfo().stderr).toMatch(QEMU_SHARED_REFUSAL);
    await l.change('read');
    expect(qemuInfo().status).toBe(0);
    // Another lock of ours (another fd in the helper) holds read: the upgrade conflicts.
    const other = await lock('read');
    const e = await failure(l.change('write'));
    expect(e.code).toBe('LOCKED');
    expect(e.message).toMatch(/^Failed to get "write" lock/);
    expect(l.mode).toBe('read');
    await other.release();
    await l.change('write');
    expect(l.bytes).toEqual(lockBytes('write'));
  });

  it('reports a missing image as NOT_FOUND and leaves nothing held', async () => {
    const e = await failure(lockRemoteImage(conn, path.join(dir, 'missing.qcow2'), 'write'));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toContain(`${conn.label}:${dir}/missing.qcow2`);
  });

  it('uses one helper per connection for many images', async () => {
    const second = path.join(dir, 'second.qcow2');
    expect(tool('qemu-img', ['create', '-f', 'qcow2', second, '1M'], dir).status).toBe(0);
    const a = await lock('write');
    const b = await lockRemoteImage(conn, second, 'write');
    locks.push(b);
    expect(HostHelper.of(conn)).toBe(HostHelper.of(conn));
    expect(tool('qemu-io', ['-c', 'read 0 512', '-f', 'qcow2', second], dir).stderr).toMatch(QEMU_WRITE_REFUSAL);
    await a.release();
    expect(qemuIo().status).toBe(0);
    expect(tool('qemu-io', ['-c', 'read 0 512', '-f', 'qcow2', second], dir).stderr).toMatch(QEMU_WRITE_REFUSAL);
  });

  it('head: a file\'s size, identity and first cluster in one request; a FIFO or a folder is refused without waiting', async () => {
    const h = HostHelper.of(conn);
    const r = await h.head(image, 64 * 1024);
    expect('notRegular' in r).toBe(false);
    const st = fs.statSync(image, { bigint: true });
    if (!('notRegular' in r)) {
      expect(r).toMatchObject({ kind: 'file', size: Number(st.size), allocated: Number(st.blocks) * 512, id: `${st.dev}:${st.ino}` });
      // The first cluster, its trailing zeros restored.
      expect(r.head.equals(fs.readFileSync(image).subarray(0, 64 * 1024))).toBe(true);
    }
    const fifo = path.join(dir, 'fifo');
    expect(tool('mkfifo', [fifo], dir).status).toBe(0);
    expect(await h.head(fifo, 512)).toEqual({ notRegular: true });
    expect(await h.head(dir, 512)).toEqual({ notRegular: true });
    expect((await failure(h.head(path.join(dir, 'missing'), 512))).code).toBe('NOT_FOUND');
  });

  describe('when the connection drops', () => {
    let proxy: TcpProxy;
    let dropPool: SshPool;
    beforeAll(async () => {
      proxy = await startTcpProxy({ host: sshd.host, port: sshd.port });
      const kh = `${sshd.knownHostsPath}.lockproxy`;
      fs.writeFileSync(kh, `[127.0.0.1]:${proxy.port} ${sshd.hostKeyLine}\n`);
      dropPool = new SshPool({ knownHostsFiles: [kh], env: {} });
    });
    afterAll(async () => {
      await dropPool?.closeAll();
      await proxy?.close();
    });

    it('the helper exits and QEMU can take the image; the lock says it is no longer held', async () => {
      const c = await dropPool.connect(sshd.connection({ port: proxy.port }));
      const l = await lock('write', c);
      expect(qemuIo().stderr).toMatch(QEMU_WRITE_REFUSAL);
      proxy.dropAll();
      // sshd notices the reset, closes the helper's stdin; the helper exits and the kernel drops its locks.
      let io = qemuIo();
      for (let i = 0; i < 200 && io.status !== 0; i++) {
        await new Promise((r) => setTimeout(r, 25));
        io = qemuIo();
      }
      expect(io.status, io.stderr).toBe(0);
      for (let i = 0; i < 200 && l.held; i++) await new Promise((r) => setTimeout(r, 10));
      expect(l.held).toBe(false);
      expect((await failure(l.change('read'))).code).toBe('CONNECTION');
      c.release();
    });
  });
});
