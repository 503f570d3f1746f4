// A real OpenSSH server for tests: /usr/sbin/sshd on 127.0.0.1, a free port, a host key and a
// user key generated with ssh-keygen, a private known_hosts; as the current user (root included,
// logging in as that user). Without sshd the suites skip with the reason; under CI=true or
// REQUIRE_QEMU=1 they fail instead.

import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type { ConnectionArgs } from '../../provider/transport/ssh/connection';
import { requireQemu } from './qemu';

export const SSHD = process.env.SSHD ?? '/usr/sbin/sshd';
const SFTP_SERVER_CANDIDATES = ['/usr/lib/openssh/sftp-server', '/usr/libexec/openssh/sftp-server', '/usr/libexec/sftp-server'];

/** Why the sshd suites cannot run here, or undefined when they can. */
export function sshdMissing(): string | undefined {
  if (!fs.existsSync(SSHD)) return `${SSHD} not found (apt-get install -y openssh-server)`;
  const keygen = spawnSync('ssh-keygen', ['-?'], { encoding: 'utf8' });
  if (keygen.error !== undefined) return 'ssh-keygen not found (apt-get install -y openssh-client)';
  if (sftpServer() === undefined) return 'sftp-server not found (apt-get install -y openssh-sftp-server)';
  return undefined;
}

function sftpServer(): string | undefined {
  return SFTP_SERVER_CANDIDATES.find((p) => fs.existsSync(p));
}

/** True when the suite must skip (no sshd, not required); says why on the console. */
export function skipWithoutSshd(suite: string): boolean {
  const why = sshdMissing();
  if (why === undefined || requireQemu) return false;
  console.warn(`[${suite}] SKIPPED: ${why} (CI=true or REQUIRE_QEMU=1 turns this into a failure)`);
  return true;
}

export interface KeyPair {
  /** The private key file's contents (OpenSSH format). */
  privateKey: string;
  privateKeyPath: string;
  /** "ssh-ed25519 AAAA... comment". */
  publicLine: string;
}

/** Generate a key with ssh-keygen (ed25519 unless asked), optionally encrypted. */
export function generateKey(dir: string, name: string, opts: { type?: string; passphrase?: string } = {}): KeyPair {
  const p = path.join(dir, name);
  const r = spawnSync('ssh-keygen', ['-q', '-t', opts.type ?? 'ed25519', '-N', opts.passphrase ?? '', '-C', name, '-f', p], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  return { privateKey: fs.readFileSync(p, 'utf8'), privateKeyPath: p, publicLine: fs.readFileSync(`${p}.pub`, 'utf8').trim() };
}

export interface SshdOptions {
  /** More sshd_config lines (e.g. "MaxSessions 3", "LogLevel DEBUG1"). */
  config?: string[];
  /** More public key lines for authorized_keys. */
  authorizedKeys?: string[];
}

export interface Sshd {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  /** A scratch folder of the fixture (keys, config, log); removed by stop(). */
  readonly dir: string;
  /** The host's public key line: "ssh-ed25519 AAAA...". */
  readonly hostKeyLine: string;
  /** The authorized client key. */
  readonly clientKey: KeyPair;
  /** A known_hosts holding this host's key for [127.0.0.1]:port. */
  readonly knownHostsPath: string;
  /** Connection settings that log in with the client key. */
  connection(extra?: Partial<ConnectionArgs>): ConnectionArgs;
  /** What sshd logged so far. */
  log(): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Start sshd; resolves once it listens. */
export async function startSshd(opts: SshdOptions = {}): Promise<Sshd> {
  const missing = sshdMissing();
  if (missing !== undefined) throw new Error(`cannot start sshd${requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : ''}: ${missing}`);
  const user = os.userInfo().username;
  const root = process.getuid?.() === 0;
  if (root && !fs.existsSync('/run/sshd')) {
    // sshd's privilege separation directory; the service manager makes it on a real host.
    fs.mkdirSync('/run/sshd', { mode: 0o755 });
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-sshd-'));
  const hostKey = generateKey(dir, 'host_key');
  const clientKey = generateKey(dir, 'client_key');
  const authorized = path.join(dir, 'authorized_keys');
  fs.writeFileSync(authorized, [clientKey.publicLine, ...(opts.authorizedKeys ?? [])].join('\n') + '\n', { mode: 0o600 });
  const hostKeyLine = hostKey.publicLine.split(' ').slice(0, 2).join(' ');

  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    // sshd keeps the first value it reads for a keyword: the caller's lines come first.
    const config = [
      ...(opts.config ?? []),
      `ListenAddress 127.0.0.1:${port}`,
      `HostKey ${hostKey.privateKeyPath}`,
      `AuthorizedKeysFile ${authorized}`,
      'PidFile none',
      'StrictModes no',
      'UsePAM no',
      'PasswordAuthentication yes',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      ...(root ? ['PermitRootLogin yes'] : []),
      `Subsystem sftp ${sftpServer()}`,
      'LogLevel VERBOSE',
      'MaxStartups 100',
    ];
    const cfgPath = path.join(dir, 'sshd_config');
    fs.writeFileSync(cfgPath, config.join('\n') + '\n');
    const knownHostsPath = path.join(dir, 'known_hosts');
    fs.writeFileSync(knownHostsPath, `[127.0.0.1]:${port} ${hostKeyLine}\n`);
    let log = '';
    const child: ChildProcess = spawn(SSHD, ['-D', '-e', '-f', cfgPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const started = await new Promise<boolean>((resolve) => {
      const onData = () => {
        if (/Server listening on/.test(log)) resolve(true);
      };
      child.stderr!.on('data', onData);
      child.once('exit', () => resolve(false));
      child.once('error', () => resolve(false));
    });
    if (!started) {
      if (/Address already in use/.test(log) && attempt < 5) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`sshd did not start: ${log.trim()}`);
    }
    let stopped: Promise<void> | undefined;
    return {
      host: '127.0.0.1',
      port,
      user,
      dir,
      hostKeyLine,
      clientKey,
      knownHostsPath,
      connection: (extra = {}) => ({ host: '127.0.0.1', port, user, privateKey: clientKey.privateKey, dialErrorLimit: 1, ...extra }),
      log: () => log,
      stop() {
        stopped ??= new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        }).then(() => fs.rmSync(dir, { recursive: true, force: true }));
        return stopped;
      },
    };
  }
}
