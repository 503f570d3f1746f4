// A unix socket on a remote host through OpenSSH stream-local forwarding (a real sshd on
// 127.0.0.1): a plain echo server, the refusals (no such socket, forwarding disabled), and QMP
// to qemu-storage-daemon carried over the channel.

import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { afterEach, describe, expect, it } from 'vitest';
import { SshPool } from '../../provider/transport/ssh';
import { findNodeByImage, QmpClient, queryNamedBlockNodes } from '../../provider/transport/qmp';
import { createImage, skipWithoutQsd, startQsd, type Qsd } from '../helpers/qsd';
import { skipWithoutSshd, startSshd } from '../helpers/sshd';
import { failure, useSshd } from './support';

describe.skipIf(skipWithoutSshd('qmp-ssh'))('stream-local forwarding to a socket on the host', () => {
  const ctx = useSshd();
  let cleanup: (() => Promise<void> | void)[] = [];

  afterEach(async () => {
    for (const c of cleanup.reverse()) await c();
    cleanup = [];
  });

  it('carries_bytes_both_ways_to_a_unix_socket_on_the_host', async () => {
    const sock = path.join(ctx.sshd.dir, 'echo.sock');
    const server = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => server.listen(sock, r));
    cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
    const stream = await ctx.conn.openStreamLocal(sock);
    const got: Buffer[] = [];
    stream.on('data', (d: Buffer) => got.push(d));
    const payload = Buffer.alloc(300_000, 0).map((_, i) => i % 251);
    stream.write(payload);
    for (let i = 0; i < 500 && Buffer.concat(got).length < payload.length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    const closed = new Promise<void>((r) => stream.once('close', () => r()));
    stream.end();
    await closed;
  });

  it('says_what_may_be_wrong_when_the_socket_cannot_be_opened', async () => {
    const missing = path.join(ctx.sshd.dir, 'missing.sock');
    const e = await failure(ctx.conn.openStreamLocal(missing));
    expect(e).toMatchObject({ code: 'CONNECTION', file: missing });
    expect(e.message).toContain(`${ctx.conn.label} could not connect to the socket ${missing}: the host could not open it: the process`);
    // The connection stays usable.
    expect((await ctx.conn.exec(['true'])).status).toBe(0);
  });

  it('names_the_sshd_setting_when_forwarding_is_forbidden', async () => {
    const sshd = await startSshd({ config: ['AllowStreamLocalForwarding no'] });
    const pool = new SshPool({ knownHostsFiles: [sshd.knownHostsPath], env: {} });
    cleanup.push(() => sshd.stop(), () => pool.closeAll());
    // The socket exists and listens: only the configuration stands in the way.
    const sock = path.join(sshd.dir, 'listening.sock');
    const server = net.createServer((s) => s.end());
    await new Promise<void>((r) => server.listen(sock, r));
    cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
    const conn = await pool.connect(sshd.connection());
    cleanup.push(() => conn.release());
    const e = await failure(conn.openStreamLocal(sock));
    expect(e.message).toContain(`could not connect to the socket ${sock}`);
    expect(e.message).toContain('"AllowStreamLocalForwarding no"');
  });

  describe.skipIf(skipWithoutQsd('qmp-ssh'))('QMP over the channel', () => {
    let qsd: Qsd | undefined;
    let dir: string | undefined;
    afterEach(async () => {
      await qsd?.kill();
      qsd = undefined;
      if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('talks_to_qemu_on_the_host_and_reports_its_death_with_the_hosts_name', async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-qmp-ssh-'));
      const image = path.join(dir, 'vm.qcow2');
      createImage(image, '1M');
      qsd = await startQsd({ image, export: 'none' });
      const where = `the QMP socket ${qsd.qmpSocket} on ${ctx.conn.label}`;
      const qmp = await QmpClient.over(await ctx.conn.openStreamLocal(qsd.qmpSocket), where, { file: qsd.qmpSocket });
      expect(qmp.where).toBe(where);
      expect((await findNodeByImage(qmp, image)).nodeName).toBe('disk0');
      qsd.freeze();
      // The rejection is awaited from the start: it may land while the daemon is being killed.
      const pending = failure(queryNamedBlockNodes(qmp));
      await qsd.kill();
      const e = await pending;
      expect(e.message).toContain(`${where} closed while 'query-named-block-nodes' was pending`);
    });
  });
});
