// Connecting to a real OpenSSH sshd: authentication (key, encrypted key, agent, refused
// credentials), host key verification (known_hosts plain, hashed, wildcard, @revoked; hostKey),
// dialling (refused, retried up to dialErrorLimit, per-dial timeout), the pool (one handshake per
// host and credentials, channels bounded below sshd's MaxSessions) and a jump host.
// No secret may appear in any error.

import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { inspect } from 'util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../provider/model/errors';
import { SshPool, resolveConnection, type ConnectionArgs } from '../../provider/transport/ssh';
import { fingerprint, parseHostKey } from '../../provider/transport/ssh/hostkeys';
import { generateKey, skipWithoutSshd, startSshd, type KeyPair, type Sshd } from '../helpers/sshd';
import { failure } from './support';

const skip = skipWithoutSshd('ssh-connect');

const SECRET_PASSWORD = 'hunter2-Sup3rSecret-pw';
const SECRET_PASSPHRASE = 'passphrase-Sup3rSecret-pp';

/** Every secret of `args`, and long fragments of private keys, absent from the error and its causes. */
function expectNoSecrets(e: unknown, args: ConnectionArgs): void {
  const text = `${String((e as Error).message)}\n${(e as Error).stack ?? ''}\n${inspect(e, { depth: 10 })}`;
  const secrets = [args.password, args.privateKeyPassword, args.proxy?.password].filter((s): s is string => s !== undefined);
  for (const s of secrets) expect(text).not.toContain(s);
  for (const key of [args.privateKey, args.proxy?.privateKey]) {
    if (key === undefined) continue;
    const body = key.split('\n').filter((l) => l.length > 0 && !l.startsWith('-----'));
    for (const line of body) expect(text).not.toContain(line.slice(0, 24));
  }
}

describe.skipIf(skip)('SSH connections to a real sshd', () => {
  let sshd: Sshd;
  let dir: string;
  let other: KeyPair;
  let encrypted: KeyPair;
  const pools: SshPool[] = [];
  const pool = (knownHosts?: string[], extra: ConstructorParameters<typeof SshPool>[0] = {}): SshPool => {
    const p = new SshPool({ knownHostsFiles: knownHosts ?? [sshd.knownHostsPath], env: {}, retryDelayMs: 10, ...extra });
    pools.push(p);
    return p;
  };

  beforeAll(async () => {
    const keysDir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'qcow2-keys-'));
    other = generateKey(keysDir, 'other');
    encrypted = generateKey(keysDir, 'encrypted', { passphrase: SECRET_PASSPHRASE });
    sshd = await startSshd({ authorizedKeys: [encrypted.publicLine], config: ['MaxSessions 3', 'LogLevel DEBUG1'] });
    dir = sshd.dir;
    fs.rmSync(keysDir, { recursive: true, force: true });
  });

  afterAll(async () => {
    await Promise.all(pools.map((p) => p.closeAll()));
    await sshd?.stop();
  });

  it('logs in with a private key and runs a command', async () => {
    const p = pool();
    const conn = await p.connect(sshd.connection());
    const r = await conn.exec(['id', '-un']);
    expect(r.status).toBe(0);
    expect(r.stdout.toString().trim()).toBe(sshd.user);
    conn.release();
  });

  it('logs in with an encrypted private key and its passphrase', async () => {
    const args = sshd.connection({ privateKey: encrypted.privateKey, privateKeyPassword: SECRET_PASSPHRASE });
    const conn = await pool().connect(args);
    expect((await conn.exec(['true'])).status).toBe(0);
    conn.release();
  });

  it('rejects a wrong passphrase as a property error, without the passphrase or the key', async () => {
    const args = sshd.connection({ privateKey: encrypted.privateKey, privateKeyPassword: 'not-it-Sup3rSecret' });
    const e = await failure(pool().connect(args));
    expect(e.code).toBe('INVALID_OPTION');
    expect(e.property).toBe('connection.privateKeyPassword');
    expectNoSecrets(e, args);
    const missing = await failure(pool().connect(sshd.connection({ privateKey: encrypted.privateKey })));
    expect(missing.message).toMatch(/encrypted: give its passphrase/);
  });

  it('logs in through an SSH agent', async () => {
    const sock = path.join(dir, 'agent.sock');
    const agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 10));
      // The socket exists a moment before the agent accepts on it: retry the add briefly.
      let add = spawnSync('ssh-add', [sshd.clientKey.privateKeyPath], { env: { ...process.env, SSH_AUTH_SOCK: sock }, encoding: 'utf8' });
      for (let i = 0; i < 50 && add.status !== 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
        add = spawnSync('ssh-add', [sshd.clientKey.privateKeyPath], { env: { ...process.env, SSH_AUTH_SOCK: sock }, encoding: 'utf8' });
      }
      expect(add.status, add.stderr).toBe(0);
      const p = new SshPool({ knownHostsFiles: [sshd.knownHostsPath], env: { SSH_AUTH_SOCK: sock } });
      pools.push(p);
      const conn = await p.connect({ host: sshd.host, port: sshd.port, user: sshd.user, dialErrorLimit: 1 });
      expect((await conn.exec(['echo', 'agent'])).stdout.toString()).toBe('agent\n');
      conn.release();
      await p.closeAll();
    } finally {
      agent.kill();
    }
  });

  it('refuses a key the host does not know: AUTH, naming the key by fingerprint only', async () => {
    const args = sshd.connection({ privateKey: other.privateKey });
    const e = await failure(pool().connect(args));
    expect(e.code).toBe('AUTH');
    expect(e.message).toContain(`refused the login`);
    expect(e.message).toContain(fingerprint(parseHostKey(other.publicLine).blob));
    expectNoSecrets(e, args);
  });

  it('refuses a wrong password: AUTH, without the password', async () => {
    const args: ConnectionArgs = { host: sshd.host, port: sshd.port, user: sshd.user, password: SECRET_PASSWORD, dialErrorLimit: 1 };
    const e = await failure(pool().connect(args));
    expect(e.code).toBe('AUTH');
    expect(e.message).toContain('the password');
    expectNoSecrets(e, args);
  });

  it('says so when there is no credential at all', async () => {
    const e = await failure(pool().connect({ host: sshd.host, port: sshd.port, user: sshd.user }));
    expect(e.code).toBe('AUTH');
    expect(e.message).toMatch(/No credentials/);
  });

  it('refuses an unknown host key with its fingerprint and how to accept it', async () => {
    const empty = path.join(dir, 'known_hosts.empty');
    fs.writeFileSync(empty, '');
    const args = sshd.connection();
    const e = await failure(pool([empty]).connect(args));
    expect(e.code).toBe('HOST_KEY');
    const fp = fingerprint(parseHostKey(sshd.hostKeyLine).blob);
    expect(e.message).toContain(fp);
    expect(e.message).toContain('not in');
    expect(e.message).toContain(`ssh-keyscan -p ${sshd.port} -t ssh-ed25519 127.0.0.1`);
    expect(e.message).toContain('connection.hostKey');
    expectNoSecrets(e, args);
  });

  it('refuses a changed host key, naming both fingerprints', async () => {
    const changed = path.join(dir, 'known_hosts.changed');
    const old = parseHostKey(other.publicLine);
    fs.writeFileSync(changed, `[127.0.0.1]:${sshd.port} ${other.publicLine}\n`);
    const e = await failure(pool([changed]).connect(sshd.connection()));
    expect(e.code).toBe('HOST_KEY');
    expect(e.message).toContain('HOST KEY HAS CHANGED');
    expect(e.message).toContain(fingerprint(old.blob));
    expect(e.message).toContain(fingerprint(parseHostKey(sshd.hostKeyLine).blob));
    expect(e.message).toContain(`ssh-keygen -R '[127.0.0.1]:${sshd.port}'`);
  });

  it('refuses a key marked @revoked even when it is also listed', async () => {
    const revoked = path.join(dir, 'known_hosts.revoked');
    fs.writeFileSync(revoked, `@revoked * ${sshd.hostKeyLine}\n[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    const e = await failure(pool([revoked]).connect(sshd.connection()));
    expect(e.code).toBe('HOST_KEY');
    expect(e.message).toMatch(/@revoked/);
  });

  it('accepts hashed known_hosts entries and wildcard patterns', async () => {
    const hashed = path.join(dir, 'known_hosts.hashed');
    fs.writeFileSync(hashed, `[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    const r = spawnSync('ssh-keygen', ['-H', '-f', hashed], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(hashed, 'utf8')).toMatch(/^\|1\|/);
    const c1 = await pool([hashed]).connect(sshd.connection());
    c1.release();
    const wild = path.join(dir, 'known_hosts.wild');
    fs.writeFileSync(wild, `# comment\nexample.org,!*.example.org ${other.publicLine}\n[127.0.0.?]:*,other ${sshd.hostKeyLine}\n`);
    const c2 = await pool([wild]).connect(sshd.connection());
    c2.release();
    const negated = path.join(dir, 'known_hosts.negated');
    fs.writeFileSync(negated, `[127.0.0.?]:*,![127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    expect((await failure(pool([negated]).connect(sshd.connection()))).code).toBe('HOST_KEY');
  });

  it('uses hostKey instead of known_hosts when given, and refuses another key', async () => {
    const empty = path.join(dir, 'known_hosts.none');
    const ok = await pool([empty]).connect(sshd.connection({ hostKey: `${sshd.hostKeyLine} comment` }));
    ok.release();
    const e = await failure(pool([empty]).connect(sshd.connection({ hostKey: other.publicLine })));
    expect(e.code).toBe('HOST_KEY');
    expect(e.message).toContain('connection.hostKey is ssh-ed25519 key');
    const bad = await failure(pool([empty]).connect(sshd.connection({ hostKey: 'not a key' })));
    expect(bad.code).toBe('INVALID_OPTION');
    expect(bad.property).toBe('connection.hostKey');
  });

  it('reports a refused connection', async () => {
    const closed = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    const p = pool();
    const e = await failure(p.connect(sshd.connection({ port: closed, dialErrorLimit: 2 })));
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toContain(`connection refused: is sshd listening on port ${closed}?`);
    expect(e.message).toContain('gave up after 2 attempts');
    expect(p.stats.dialErrors).toBe(2);
  });

  it('retries failed dials exactly up to dialErrorLimit, each within perDialTimeout', async () => {
    // A listener that accepts and hangs up: "closed before the SSH handshake", a transient failure.
    let hangups = 0;
    const rude = net.createServer((s) => {
      hangups++;
      s.destroy();
    });
    await new Promise<void>((r) => rude.listen(0, '127.0.0.1', () => r()));
    const rudePort = (rude.address() as net.AddressInfo).port;
    // A listener that accepts and says nothing: every dial times out.
    let silent = 0;
    const held: net.Socket[] = [];
    const mute = net.createServer((s) => {
      silent++;
      held.push(s);
    });
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
    const mutePort = (mute.address() as net.AddressInfo).port;
    try {
      const e = await failure(pool().connect(sshd.connection({ port: rudePort, dialErrorLimit: 3 })));
      expect(e.code).toBe('CONNECTION');
      expect(e.message).toMatch(/closed the connection before the SSH handshake.*gave up after 3 attempts/s);
      expect(hangups).toBe(3);
      const t = await failure(pool().connect(sshd.connection({ port: mutePort, dialErrorLimit: 2, perDialTimeout: 1 })));
      expect(t.message).toMatch(/no SSH session within 1 s \(connection.perDialTimeout\).*gave up after 2 attempts/s);
      expect(silent).toBe(2);
    } finally {
      for (const s of held) s.destroy();
      rude.close();
      mute.close();
    }
  });

  it('validates the settings, naming the property', () => {
    const bad = (args: unknown, property: string) => {
      try {
        resolveConnection(args as ConnectionArgs, {});
      } catch (e) {
        expect((e as Qcow2Error).code).toBe('INVALID_OPTION');
        expect((e as Qcow2Error).property).toBe(property);
        return;
      }
      throw new Error(`accepted ${JSON.stringify(args)}`);
    };
    bad({}, 'connection.host');
    bad({ host: 'root@h' }, 'connection.host');
    bad({ host: 'h', port: 0 }, 'connection.port');
    bad({ host: 'h', dialErrorLimit: 0 }, 'connection.dialErrorLimit');
    bad({ host: 'h', perDialTimeout: -1 }, 'connection.perDialTimeout');
    bad({ host: 'h', privateKey: 'nope' }, 'connection.privateKey');
    bad({ host: 'h', proxy: { host: '' } }, 'connection.proxy.host');
    const r = resolveConnection({ host: 'h' }, { SSH_AUTH_SOCK: '/agent' });
    expect([r.port, r.user, r.dialErrorLimit, r.perDialTimeoutMs, r.agentSocketPath]).toEqual([22, 'root', 10, 15000, '/agent']);
  });

  it('keeps secrets out of an inspected or serialized connection', () => {
    const args = { host: 'h', password: SECRET_PASSWORD, privateKey: encrypted.privateKey, privateKeyPassword: SECRET_PASSPHRASE };
    const r = resolveConnection(args, {});
    expect(r.password).toBe(SECRET_PASSWORD);
    expect(r.privateKeyPassword).toBe(SECRET_PASSPHRASE);
    expectNoSecrets(new Error(`${inspect(r, { depth: 5 })}\n${JSON.stringify(r)}\n${JSON.stringify({ ...r })}`), args);
  });

  it('shares one connection per host and credentials, and bounds its channels below MaxSessions', async () => {
    // sshd here allows 3 sessions per connection; 12 commands at once must queue, not fail.
    const p = pool(undefined, { maxChannels: 3 });
    const leases = await Promise.all([1, 2, 3].map(() => p.connect(sshd.connection())));
    expect(p.stats.handshakes).toBe(1);
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => leases[i % 3]!.exec(['sh', '-c', 'sleep 0.1; echo "$1"', 'sh', String(i)])),
    );
    expect(results.map((r) => r.stdout.toString().trim())).toEqual(Array.from({ length: 12 }, (_, i) => String(i)));
    const other = await p.connect(sshd.connection({ privateKey: encrypted.privateKey, privateKeyPassword: SECRET_PASSPHRASE }));
    expect(p.stats.handshakes).toBe(2);
    for (const l of [...leases, other]) l.release();
    // Past sshd's limit without the bound: the 4th session is refused.
    const unbounded = pool(undefined, { maxChannels: 10 });
    const c = await unbounded.connect(sshd.connection());
    const all = await Promise.allSettled(Array.from({ length: 6 }, () => c.exec(['sleep', '1'])));
    const refused = all.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as Qcow2Error);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]!.message).toMatch(/refused a new channel.*MaxSessions/);
    c.release();
  });

  it('reaches the host through a jump host (proxy), verifying both host keys', async () => {
    const p = pool();
    const before = (sshd.log().match(/server_request_direct_tcpip/g) ?? []).length;
    const conn = await p.connect(sshd.connection({ proxy: sshd.connection() }));
    expect((await conn.exec(['echo', 'via jump'])).stdout.toString()).toBe('via jump\n');
    expect(p.stats.handshakes).toBe(2); // the jump host, then the target through it
    await new Promise((r) => setTimeout(r, 50));
    const after = (sshd.log().match(/server_request_direct_tcpip/g) ?? []).length;
    expect(after).toBe(before + 1);
    conn.release();
    // The target's key is checked too: unknown behind a known jump host.
    const jumpOnly = path.join(dir, 'known_hosts.jump');
    fs.writeFileSync(jumpOnly, `[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    const e = await failure(pool([jumpOnly]).connect(sshd.connection({ host: 'localhost', proxy: sshd.connection() })));
    expect(e.code).toBe('HOST_KEY');
    expect(e.message).toContain(`for localhost:${sshd.port}`);
  });
});
