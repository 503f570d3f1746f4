// The command line on ssh://[user@]host[:port]/path image arguments, against a real sshd on
// 127.0.0.1, logging in as OpenSSH does (the key ~/.ssh/id_ed25519 of a private HOME, the host's
// key from ~/.ssh/known_hosts). Every command is run twice on the same paths, once locally and
// once through the URL, and must give the same output (but for the name), the same exit status
// and the same bytes on disk; qcow2 and raw images. Also: convert either way and host to host,
// and the failures a user meets first (unknown host key, nothing listening, a bad URL).

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';
import { md5, must, scratchBase, skipWithoutTools } from '../engines/helpers';

const CLI = path.resolve(__dirname, '../../dist/provider/cli/main.js');
/** The installed executable: the bundle, which loads the remote side from the installed files. */
const EXECUTABLE = path.resolve(__dirname, '../../dist/provider/cli/qcow2.js');
const skip = skipWithoutSshd('cli-remote') || skipWithoutTools('cli-remote');

interface Run { status: number | null; stdout: string; stderr: string }

describe.skipIf(skip)('qcow2 on ssh:// image arguments', () => {
  let sshd: Sshd;
  let home: string;
  let dir: string;
  let url: (p: string) => string;

  beforeAll(async () => {
    if (!fs.existsSync(CLI)) throw new Error('the command line is not built (npm run build)');
    sshd = await startSshd();
    home = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-home-'));
    fs.mkdirSync(path.join(home, '.ssh'), { mode: 0o700 });
    fs.writeFileSync(path.join(home, '.ssh', 'id_ed25519'), sshd.clientKey.privateKey, { mode: 0o600 });
    fs.writeFileSync(path.join(home, '.ssh', 'known_hosts'), `[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    // A hostile folder name: spaces, quotes, a $( ) and a comma, percent-escaped in the URL.
    dir = fs.mkdtempSync(path.join(scratchBase(), "qcow2 cli 'remote' $(x),"));
    url = (p) => `ssh://127.0.0.1:${sshd.port}${p.split('/').map(encodeURIComponent).join('/')}`;
  });
  afterAll(async () => {
    await sshd?.stop();
    for (const d of [home, dir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const qcow2 = (args: string[], env: Record<string, string> = {}, entry = CLI): Run => {
    const r = spawnSync(process.execPath, [entry, ...args], { encoding: 'utf8', env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '', ...env }, timeout: 120_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const at = (name: string) => path.join(dir, name);
  /** A file name inside an -o list (QemuOpts: a comma is written twice). */
  const opt = (name: string) => at(name).replace(/,/g, ',,');
  /** What a run says, the remote name written as the local one. */
  const said = (r: Run) => ({ status: r.status, stdout: r.stdout.split(url(dir)).join(dir), stderr: r.stderr.split(url(dir)).join(dir) });
  const bytes = (...names: string[]) => Object.fromEntries(names.map((n) => [n, fs.existsSync(at(n)) ? md5(at(n)) : 'missing']));
  const clean = () => {
    for (const f of fs.readdirSync(dir)) fs.rmSync(at(f), { recursive: true, force: true });
  };

  /**
   * Run `steps` (each an argv with FILE(name) placeholders for image arguments) once locally and
   * once through URLs on the same paths; each step's output and the files' bytes must agree.
   */
  const same = (steps: Array<(file: (n: string) => string) => string[]>, files: string[], setup: () => void = () => undefined) => {
    const outcome = (file: (n: string) => string) => {
      clean();
      setup();
      const runs = steps.map((s) => said(qcow2(s(file))));
      return { runs, bytes: bytes(...files) };
    };
    const local = outcome((n) => at(n));
    const remote = outcome((n) => url(at(n)));
    for (let i = 0; i < steps.length; i++) expect(remote.runs[i], `step ${i}: ${steps[i]!((n) => n).join(' ')}`).toEqual(local.runs[i]);
    expect(remote.bytes).toEqual(local.bytes);
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]); // nothing temporary left
    return local;
  };

  it('create, info, map, check, amend and resize give the same output and the same bytes', () => {
    const local = same([
      (f) => ['create', '-f', 'qcow2', '-o', `data_file=${opt('img.raw')},data_file_raw=on,lazy_refcounts=on`, f('img.qcow2'), '64M'],
      (f) => ['info', f('img.qcow2')],
      (f) => ['info', '--output=json', f('img.qcow2')],
      (f) => ['map', '--output=json', f('img.qcow2')],
      (f) => ['map', f('img.qcow2')],
      (f) => ['check', '--output=json', f('img.qcow2')],
      (f) => ['amend', '-o', 'size=128M,refcount_bits=8', f('img.qcow2')],
      (f) => ['resize', f('img.qcow2'), '+64M'],
      (f) => ['info', '--output=json', '-U', f('img.qcow2')],
      (f) => ['check', f('img.qcow2')],
    ], ['img.qcow2', 'img.raw']);
    expect(local.runs.map((r) => r.status)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(JSON.parse(local.runs[8]!.stdout)['virtual-size']).toBe(192 * 2 ** 20);
  });

  it('rebase (unsafe and copying) and map through a chain agree', () => {
    const setup = () => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', at('base.qcow2'), '64M'], dir);
      must('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 8M 64k', at('base.qcow2')], dir);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', at('base2.qcow2'), '64M'], dir);
      must('qemu-io', ['-c', 'write -P 0x33 0 64k', at('base2.qcow2')], dir);
    };
    same([
      (f) => ['create', '-f', 'qcow2', '-b', at('base.qcow2'), '-F', 'qcow2', f('top.qcow2')],
      (f) => ['map', '--output=json', f('top.qcow2')],
      (f) => ['rebase', '-u', '-b', at('base2.qcow2'), '-F', 'qcow2', f('top.qcow2')],
      (f) => ['rebase', '-b', at('base.qcow2'), '-F', 'qcow2', f('top.qcow2')],
      (f) => ['map', '--output=json', f('top.qcow2')],
      (f) => ['info', f('top.qcow2')],
      (f) => ['info', '--backing-chain', '--output=json', f('top.qcow2')],
    ], ['top.qcow2', 'base.qcow2', 'base2.qcow2'], setup);
  });

  it('raw images: create -f raw, info and map (probed and with -f raw) agree', () => {
    const local = same([
      (f) => ['create', '-f', 'raw', f('r.img'), '3M'],
      (f) => ['info', f('r.img')],
      (f) => ['map', '--output=json', '-f', 'raw', f('r.img')],
      (f) => ['check', f('r.img')],
    ], ['r.img']);
    expect(local.runs.map((r) => r.status)).toEqual([0, 0, 0, 63]);
  });

  it('convert to, from and between remote images gives the bytes a local convert gives', () => {
    const src = at('src.raw');
    const data = crypto.randomBytes(512 << 10);
    const setup = () => {
      fs.writeFileSync(src, data);
      fs.truncateSync(src, 16 << 20);
    };
    // Local to local, the reference; then every placement of source and destination.
    const want = same([(f) => ['convert', '-O', 'qcow2', '-o', 'cluster_size=4096', f('src.raw'), f('dst.qcow2')]], ['dst.qcow2'], setup);
    expect(want.runs[0]!.status).toBe(0);
    const reference = md5(at('dst.qcow2'));
    for (const [s, d] of [[src, url(at('dst.qcow2'))], [url(src), at('dst.qcow2')]]) {
      clean();
      setup();
      const r = qcow2(['convert', '-O', 'qcow2', '-o', 'cluster_size=4096', s!, d!]);
      expect(r.status, r.stderr).toBe(0);
      expect(md5(at('dst.qcow2'))).toBe(reference);
    }
    // A qcow2 chain on the host read from here, and a data-file-raw target on the host.
    clean();
    setup();
    must('qemu-img', ['convert', '-O', 'qcow2', src, at('chain-base.qcow2')], dir);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', at('chain-base.qcow2'), '-F', 'qcow2', at('chain.qcow2')], dir);
    must('qemu-io', ['-c', 'write -P 0x44 4M 64k', at('chain.qcow2')], dir);
    const r = qcow2(['convert', '-O', 'qcow2', '-o', `data_file=${opt('flat.raw')},data_file_raw=on`, url(at('chain.qcow2')), url(at('flat.qcow2'))]);
    expect(r.status, r.stderr).toBe(0);
    expect(must('qemu-img', ['compare', at('chain.qcow2'), at('flat.qcow2')], dir).stdout).toMatch(/identical/);
  });

  it('the bundled executable reaches remote hosts as the command line does; check -r repairs there; commands taking names as given refuse ssh://', () => {
    clean();
    must('qemu-img', ['create', '-q', '-f', 'qcow2', at('e.qcow2'), '16M'], dir);
    must('qemu-io', ['-c', 'write -P 1 0 256k', at('e.qcow2')], dir);
    const local = qcow2(['info', '--output=json', at('e.qcow2')], {}, EXECUTABLE);
    const remote = qcow2(['info', '--output=json', url(at('e.qcow2'))], {}, EXECUTABLE);
    expect(local.status, local.stderr).toBe(0);
    expect(said(remote)).toEqual(said(local));
    // check -r on the host: a refcount raised by hand (a leak), repaired there as locally.
    const fd = fs.openSync(at('e.qcow2'), 'r+');
    fs.writeSync(fd, Buffer.from([2]), 0, 1, 0x20000 + 2 * 6 + 1);
    fs.closeSync(fd);
    const rep = qcow2(['check', '-r', 'leaks', url(at('e.qcow2'))], {}, EXECUTABLE);
    expect(rep.status, rep.stderr).toBe(0);
    expect(rep.stdout).toMatch(/The following inconsistencies were found and repaired:\s+1 leaked clusters/);
    expect(must('qemu-img', ['check', at('e.qcow2')], dir).stdout).toMatch(/No errors were found/);
    // Commands that take names as given refuse an ssh:// name rather than open a local path.
    for (const argv of [['snapshot', '-l'], ['commit'], ['bitmap', '--add']]) {
      const r = qcow2([...argv, url(at('e.qcow2')), ...(argv[0] === 'bitmap' ? ['b0'] : [])]);
      expect(r.status, argv.join(' ')).not.toBe(0);
      expect(r.stderr).toMatch(new RegExp(`${argv[0]} works on images on this machine only: .* names a remote host`));
    }
    expect(must('qemu-img', ['snapshot', '-l', at('e.qcow2')], dir).stdout).toBe('');
  });

  it('refuses an unknown host key, nothing listening and a bad URL with the way forward', () => {
    clean();
    must('qemu-img', ['create', '-q', '-f', 'qcow2', at('k.qcow2'), '1M'], dir);
    fs.writeFileSync(path.join(home, '.ssh', 'known_hosts'), '');
    try {
      const r = qcow2(['info', url(at('k.qcow2'))]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/Host key verification failed for 127\.0\.0\.1:\d+: the host is not in .*known_hosts.*ssh-keyscan -p \d+/s);
    } finally {
      fs.writeFileSync(path.join(home, '.ssh', 'known_hosts'), `[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n`);
    }
    const refused = qcow2(['info', `ssh://127.0.0.1:1${at('k.qcow2')}`]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/connection refused: is sshd listening on port 1\?/);
    const bad = qcow2(['info', `ssh://127.0.0.1:${sshd.port}/x.qcow2?host_key_check=no`]);
    expect(bad.stderr).toMatch(/ssh:\/\/\[user@\]host\[:port\]\/absolute\/path/);
  });
});
