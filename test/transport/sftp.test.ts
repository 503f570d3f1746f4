// SFTP against OpenSSH's sftp-server through a real sshd: extensions detected from the VERSION
// packet, pipelined reads and writes (batches larger than one request and than the window),
// exclusive create, rename with and without replacement, hard links, fsync, truncate, statvfs,
// and a connection cut mid-transfer (a typed CONNECTION error, and the pool dials again after).

import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SshPool, type Sftp, type SshConnection } from '../../provider/transport/ssh';
import { skipWithoutSshd, type Sshd } from '../helpers/sshd';
import { failure, useSshd } from './support';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';
import { scratchBase } from '../engines/helpers';

const skip = skipWithoutSshd('sftp');

const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

describe.skipIf(skip)('SFTP on a real sshd', () => {
  const suite = useSshd();
  let sshd: Sshd;
  let conn: SshConnection;
  let sftp: Sftp;
  let dir: string;

  beforeAll(async () => {
    ({ sshd, conn } = suite);
    sftp = await conn.sftp();
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-sftp-'));
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("reads OpenSSH's extensions and limits from the server", () => {
    expect(sftp.extensions).toEqual({ posixRename: true, hardlink: true, fsync: true, statvfs: true });
    // limits@openssh.com: OpenSSH allows 255 KiB reads and writes per request.
    expect(sftp.limits.maxReadLength).toBeGreaterThan(32 * 1024);
    expect(sftp.limits.maxWriteLength).toBeGreaterThan(32 * 1024);
  });

  it('shares one SFTP session per connection', async () => {
    expect(await conn.sftp()).toBe(sftp);
  });

  it('writes and reads back pipelined batches, bytes past the end as zeros', async () => {
    const file = path.join(dir, 'data.bin');
    const data = randomBytes(5 * 1024 * 1024 + 12345);
    const f = await sftp.open(file, 'create-exclusive');
    // Scattered writes in one batch, in reverse order: more requests than the window.
    const writes = [];
    for (let off = 0; off < data.length; off += 40_000) writes.push({ offset: off, data: data.subarray(off, Math.min(off + 40_000, data.length)) });
    await f.writeMany(writes.reverse());
    expect((await f.stat()).size).toBe(data.length);
    await f.fsync();
    await f.close();
    expect(md5(fs.readFileSync(file))).toBe(md5(data));

    const r = await sftp.open(file, 'read');
    const whole = await r.read(0, data.length);
    expect(md5(whole)).toBe(md5(data));
    const ranges = [
      { offset: 0, length: 1 },
      { offset: 3, length: 700_000 },
      { offset: data.length - 10, length: 30 }, // crosses the end
      { offset: data.length + 4096, length: 512 }, // wholly past it
      { offset: 1_000_000, length: 0 },
    ];
    const got = await r.readMany(ranges);
    ranges.forEach((rg, i) => {
      const want = Buffer.alloc(rg.length);
      if (rg.offset < data.length) data.copy(want, 0, rg.offset, Math.min(data.length, rg.offset + rg.length));
      expect(got[i]!.equals(want), `range ${i}`).toBe(true);
    });
    await r.close();
  });

  it('creates exclusively: an existing file is EXISTS and stays untouched', async () => {
    const file = path.join(dir, 'precious.img');
    fs.writeFileSync(file, 'precious');
    const e = await failure(sftp.open(file, 'create-exclusive'));
    expect(e.code).toBe('EXISTS');
    expect(e.message).toContain('refusing to overwrite');
    expect(fs.readFileSync(file, 'utf8')).toBe('precious');
    // A dangling symlink is not followed either.
    const link = path.join(dir, 'dangling');
    fs.symlinkSync(path.join(dir, 'nowhere'), link);
    expect((await failure(sftp.open(link, 'create-exclusive'))).code).toBe('EXISTS');
    expect(fs.existsSync(path.join(dir, 'nowhere'))).toBe(false);
  });

  it('reports a missing file or folder as NOT_FOUND, naming host and path', async () => {
    const e = await failure(sftp.open(path.join(dir, 'missing.qcow2'), 'read'));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toContain(`${conn.label}:${dir}/missing.qcow2`);
    expect((await failure(sftp.open(path.join(dir, 'no-such-dir', 'x'), 'create-exclusive'))).code).toBe('NOT_FOUND');
    expect(await sftp.statIfExists(path.join(dir, 'missing.qcow2'))).toBeUndefined();
  });

  it('renames: posix-rename replaces, the plain rename and link never do', async () => {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    const c = path.join(dir, 'c');
    fs.writeFileSync(a, 'A');
    fs.writeFileSync(b, 'B');
    expect((await failure(sftp.renameNoReplace(a, b))).code).toBe('EXISTS');
    expect(fs.readFileSync(b, 'utf8')).toBe('B');
    expect((await failure(sftp.link(a, b))).code).toBe('EXISTS');
    expect(fs.readFileSync(b, 'utf8')).toBe('B');
    await sftp.link(a, c);
    expect(fs.statSync(c).ino).toBe(fs.statSync(a).ino);
    await sftp.renameNoReplace(c, path.join(dir, 'd'));
    expect(fs.existsSync(c)).toBe(false);
    await sftp.rename(a, b);
    expect(fs.readFileSync(b, 'utf8')).toBe('A');
    expect(fs.existsSync(a)).toBe(false);
    await sftp.unlink(b);
    expect(fs.existsSync(b)).toBe(false);
  });

  it('truncates, stats, lists, makes folders and reports free space', async () => {
    const sub = path.join(dir, 'sub dir');
    await sftp.mkdir(sub);
    const f = await sftp.open(path.join(sub, 'sparse'), 'create-exclusive', 0o600);
    await f.truncate(1 << 30);
    const st = await f.stat();
    expect(st.size).toBe(1 << 30);
    expect(st.isFile).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    await f.close();
    await f.close(); // idempotent
    expect(await sftp.readdir(sub)).toEqual(['sparse']);
    expect((await sftp.stat(sub)).isDirectory).toBe(true);
    expect(await sftp.realpath(path.join(sub, '..'))).toBe(fs.realpathSync(dir));
    const vfs = await sftp.statvfs(dir);
    expect(vfs!.blocks).toBeGreaterThan(0);
    expect(vfs!.availableBlocks).toBeLessThanOrEqual(vfs!.blocks);
    await sftp.unlink(path.join(sub, 'sparse'));
    await sftp.rmdir(sub);
  });

  describe('a connection cut mid-transfer', () => {
    let proxy: TcpProxy;
    let cutPool: SshPool;
    beforeAll(async () => {
      proxy = await startTcpProxy({ host: sshd.host, port: sshd.port });
      cutPool = new SshPool({ knownHostsFiles: [`${sshd.knownHostsPath}.proxy`], env: {} });
      fs.writeFileSync(`${sshd.knownHostsPath}.proxy`, `[127.0.0.1]:${proxy.port} ${sshd.hostKeyLine}\n`);
    });
    afterAll(async () => {
      await cutPool?.closeAll();
      await proxy?.close();
    });

    it('fails the write with a typed CONNECTION error, and the next connect dials again', async () => {
      const c = await cutPool.connect(sshd.connection({ port: proxy.port }));
      const s = await c.sftp();
      const f = await s.open(path.join(dir, 'cut.bin'), 'create-exclusive');
      proxy.setDropAfterBytes(proxy.bytes.up + proxy.bytes.down + 2 * 1024 * 1024);
      const e = await failure(f.write(0, randomBytes(32 * 1024 * 1024)));
      expect(e.code).toBe('CONNECTION');
      expect(e.message).toMatch(/Lost the connection to .* during SFTP write of '.*cut\.bin'/);
      expect(c.alive).toBe(false);
      // Later operations on the dead lease fail the same way, at once.
      expect((await failure(c.exec(['true']))).code).toBe('CONNECTION');
      expect((await failure(f.read(0, 10))).code).toBe('CONNECTION');
      c.release();
      proxy.setDropAfterBytes(undefined);
      const again = await cutPool.connect(sshd.connection({ port: proxy.port }));
      expect(cutPool.stats.handshakes).toBe(2);
      expect((await again.exec(['echo', 'back'])).stdout.toString()).toBe('back\n');
      again.release();
    });

    it('fails a read in flight when the link drops', async () => {
      const big = path.join(dir, 'big.bin');
      fs.writeFileSync(big, randomBytes(16 * 1024 * 1024));
      const c = await cutPool.connect(sshd.connection({ port: proxy.port }));
      const f = await (await c.sftp()).open(big, 'read');
      proxy.setDropAfterBytes(proxy.bytes.up + proxy.bytes.down + 4 * 1024 * 1024);
      const e = await failure(f.read(0, 16 * 1024 * 1024));
      proxy.setDropAfterBytes(undefined);
      expect(e.code).toBe('CONNECTION');
      expect(e.message).toMatch(/during SFTP read of/);
      c.release();
    });
  });
});
