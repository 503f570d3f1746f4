// Data safety on a remote host, against a real sshd on 127.0.0.1 reached through a loopback TCP
// proxy (test/helpers/tcp-proxy.ts) that can cut the link, kill the client or stop forwarding at a
// chosen byte of the conversation:
// - QEMU's image locks in both directions: an image qemu-nbd holds on the host is refused by both
//   engines (nothing changes); while the native engine changes an image, QEMU on the host cannot
//   open it.
// - Failures a user meets: a wrong key, a changed host key, a refused connection, permission
//   denied on the remote folder (when not run as root, who is never denied).
// - Trials: the command line (a process of its own) killed with SIGKILL, and its connection
//   dropped, at points spread over a create (convert into a new remote image) and an all-or-
//   nothing amend; after each, the host holds no corrupt image: the new image is absent or
//   complete, the amended one is the old or the new one, with the same guest data.

import { spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../provider/engines';
import type { ConnectionArgs } from '../../provider/transport/ssh/connection';
import { generateKey, skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy';
import { failure } from '../transport/support';
import { md5, must, scratchBase, skipWithoutTools, startHolder, stopHolder, tool } from './helpers';

const CLI = path.resolve(__dirname, '../../dist/provider/cli/main.js');
// The built engines (their worker threads load the build) and the connection pool they share.
const dist = (m: string) => path.resolve(__dirname, '../../dist/provider', m);
const { getEngine } = require(dist('engines/index.js')) as typeof import('../../provider/engines');
const { sshPool } = require(dist('transport/ssh/index.js')) as typeof import('../../provider/transport/ssh');
const skip = skipWithoutSshd('remote-safety') || skipWithoutTools('remote-safety');
/** Trials per kind (kill, drop) and operation (create, amend): 4 x 13 = 52. */
const TRIALS = 13;

interface Run { status: number | null; signal: NodeJS.Signals | null; stderr: string; hung?: string }
/** Tells a hung command line from a slow one (see qcow2() below). */
const HANG_MS = 300_000;

describe.skipIf(skip)('data safety on a remote host', () => {
  let sshd: Sshd;
  let proxy: TcpProxy;
  let home: string;
  let dir: string;
  let connection: ConnectionArgs;

  beforeAll(async () => {
    if (!fs.existsSync(CLI)) throw new Error('the command line is not built (npm run build)');
    sshd = await startSshd();
    proxy = await startTcpProxy({ host: '127.0.0.1', port: sshd.port });
    connection = { ...sshd.connection(), hostKey: sshd.hostKeyLine };
    home = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-safety-home-'));
    fs.mkdirSync(path.join(home, '.ssh'), { mode: 0o700 });
    fs.writeFileSync(path.join(home, '.ssh', 'id_ed25519'), sshd.clientKey.privateKey, { mode: 0o600 });
    fs.writeFileSync(path.join(home, '.ssh', 'known_hosts'), `[127.0.0.1]:${proxy.port} ${sshd.hostKeyLine}\n`);
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-safety-'));
  }, 60_000);
  afterAll(async () => {
    await sshPool().closeAll();
    await proxy?.close();
    await sshd?.stop();
    for (const d of [home, dir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const at = (name: string) => path.join(dir, name);
  const url = (name: string) => `ssh://127.0.0.1:${proxy.port}${at(name)}`;
  const engineFor = (name: 'native' | 'qemu-img', extra: Partial<ConnectionArgs> = {}): Engine =>
    getEngine(name, { connection: { ...connection, ...extra } });
  const leftovers = () => fs.readdirSync(dir).filter((f) => f.startsWith('.'));
  /** `look()` once it is empty, or after 100 looks 50 ms apart (the host side ends after the client). */
  const settled = async <T extends unknown[]>(look: () => T): Promise<T> => {
    let v = look();
    for (let i = 0; i < 100 && v.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      v = look();
    }
    return v;
  };

  /**
   * The command line in a process of its own (asynchronous: the proxy runs on this event loop).
   * One that has not ended after HANG_MS is stopped and reported as hung: its own limits (10 dials
   * of at most 15 s, keepalives) end it well before, so only a hang gets there.
   */
  const qcow2 = (args: string[], onStart: (kill: () => void) => void = () => undefined): Promise<Run> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, HOME: home, SSH_AUTH_SOCK: '' }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      let hung: string | undefined;
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      onStart(() => child.kill('SIGKILL'));
      const guard = setTimeout(() => {
        hung = `qcow2 ${args.join(' ')} had not ended after ${HANG_MS / 1000} s`;
        child.kill('SIGKILL');
      }, HANG_MS);
      child.on('close', (status, signal) => {
        clearTimeout(guard);
        resolve({ status, signal, stderr, ...(hung !== undefined ? { hung } : {}) });
      });
    });

  /** Bytes through the proxy (both directions) of one run of `args`. */
  const traffic = async (args: string[]): Promise<number> => {
    const before = proxy.bytes.up + proxy.bytes.down;
    const r = await qcow2(args);
    expect(r.hung, r.hung).toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    return proxy.bytes.up + proxy.bytes.down - before;
  };

  describe('QEMU image locks', () => {
    it.each(['native', 'qemu-img'] as const)('an image qemu-nbd holds on the host is refused and unchanged (%s engine)', async (name) => {
      const img = at(`held-${name}.qcow2`);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M'], dir);
      const before = md5(img);
      const pid = startHolder(dir, img);
      try {
        const e = engineFor(name);
        for (const op of [() => e.amend(img, { lazyRefcounts: true }), () => e.resize(img, 128n << 20n), () => e.info(img), () => e.remove(img, {})]) {
          const err = await failure(op());
          expect(err.code).toBe('LOCKED');
          expect(err.message).toMatch(/Failed to get (shared )?"write" lock/);
        }
        expect((await e.info(img, { forceShare: true })).virtualSize).toBe(64n << 20n);
      } finally {
        stopHolder(pid);
      }
      expect(md5(img)).toBe(before);
      expect(fs.existsSync(img)).toBe(true);
    });

    it('while the native engine changes an image, QEMU on the host cannot open it', async () => {
      const img = at('busy.qcow2');
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=16', img, '256M'], dir);
      must('qemu-io', ['-c', 'write -P 0x5a 0 8M', img], dir);
      must('cp', ['--sparse=always', img, at('busy-copy.qcow2')], dir);
      const total = () => proxy.bytes.up + proxy.bytes.down;
      // Calibration on a copy, on a connection of its own: the bytes up to the amend, and the amend's.
      await sshPool().closeAll();
      const e = engineFor('native', { port: proxy.port });
      const t0 = total();
      await e.info(at('busy-copy.qcow2'), { forceShare: true });
      const t1 = total();
      await e.amend(at('busy-copy.qcow2'), { refcountBits: 8 });
      const t2 = total();
      await sshPool().closeAll();
      // The same on the image, the link stopped halfway through the amend's traffic.
      let paused!: () => void;
      const stopped = new Promise<void>((resolve) => (paused = resolve));
      proxy.onBytes(t1 - t0 + (t2 - t1) / 2, () => {
        proxy.pause();
        paused();
      });
      let amend: Promise<void> | undefined;
      // The pause point and the pause are undone however this ends: a proxy left paused, or armed
      // to pause, would stall every later connection of the file.
      try {
        await e.info(img, { forceShare: true });
        amend = e.amend(img, { refcountBits: 8 });
        const first = await Promise.race([stopped.then(() => 'paused' as const), amend.then(() => 'finished' as const)]);
        if (first === 'finished') throw new Error(`the amend finished before its traffic reached the pause point (calibrated: ${t2 - t1} bytes)`);
        const q = tool('qemu-img', ['info', img], dir);
        expect(q.status).not.toBe(0);
        expect(q.stderr).toMatch(/Failed to get shared "write" lock/);
        const w = tool('qemu-io', ['-c', 'write 0 512', img], dir);
        expect(w.stdout + w.stderr).toMatch(/Failed to get "write" lock/);
      } finally {
        proxy.onBytes(undefined);
        proxy.resume();
      }
      await amend;
      await sshPool().closeAll();
      expect(tool('qemu-img', ['check', img], dir).status).toBe(0);
      expect(JSON.parse(must('qemu-img', ['info', '--output=json', img], dir).stdout)['format-specific'].data['refcount-bits']).toBe(8);
      expect(tool('qemu-img', ['compare', at('busy-copy.qcow2'), img], dir).status).toBe(0);
    });
  });

  describe('failures name the cause and the way forward', () => {
    it.each(['native', 'qemu-img'] as const)('a wrong key, a changed host key and a refused connection (%s engine)', async (name) => {
      const img = at(`f-${name}.qcow2`);
      const other = generateKey(dir, `other-${name}`);
      const wrong = await failure(engineFor(name, { privateKey: other.privateKey }).create(img, { size: 1n << 20n }));
      expect(wrong.code).toBe('AUTH');
      expect(wrong.message).toMatch(/refused the login: it accepted none of/);
      expect(wrong.message).not.toContain(other.privateKey.split('\n')[1]!);
      const changed = await failure(engineFor(name, { hostKey: other.publicLine }).create(img, { size: 1n << 20n }));
      expect(changed.code).toBe('HOST_KEY');
      expect(changed.message).toMatch(/Host key verification failed for .*connection\.hostKey/);
      const refused = await failure(engineFor(name, { port: 1, dialErrorLimit: 1 }).create(img, { size: 1n << 20n }));
      expect(refused.code).toBe('CONNECTION');
      expect(refused.message).toMatch(/connection refused/);
      expect(fs.existsSync(img)).toBe(false);
    });

    it('permission denied on the remote folder', async (ctx) => {
      const ro = at('readonly');
      fs.mkdirSync(ro, { mode: 0o555 });
      // Mode bits do not stop root (the user sshd logs in as here when tests run as root): there the
      // folder is made immutable, which refuses root as well.
      const root = process.getuid?.() === 0;
      if (root && tool('chattr', ['+i', ro], dir).status !== 0) {
        console.warn('remote-safety: running as root where chattr +i is not available; the permission-denied test is skipped');
        ctx.skip();
      }
      try {
        for (const name of ['native', 'qemu-img'] as const) {
          const e = await failure(engineFor(name).create(path.join(ro, 'x.qcow2'), { size: 1n << 20n }));
          expect(e.message).toMatch(root ? /Permission denied|not permitted/ : /Permission denied/);
          // The folder and the reason; never the name of a temporary file or folder of ours.
          expect(e.message).toContain(path.basename(ro));
          expect(e.message).not.toMatch(/qcow2-tmp|\.tmp/);
        }
        expect(fs.readdirSync(ro)).toEqual([]);
      } finally {
        if (root) tool('chattr', ['-i', ro], dir);
      }
    });
  });

  describe('trials: the command line killed, and its connection dropped, mid-operation', () => {
    let src: string;
    let pristine: string;

    beforeAll(() => {
      // A create: convert of a local raw file (2 MiB of data in 8 MiB) into a new image on the host.
      src = path.join(home, 'src.raw');
      fs.writeFileSync(src, crypto.randomBytes(2 << 20));
      fs.truncateSync(src, 8 << 20);
      // An amend: refcount width and lazy refcounts of an image with data, all or nothing.
      pristine = at('pristine.qcow2');
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096,refcount_bits=16', pristine, '64M'], dir);
      must('qemu-io', ['-c', 'write -P 0x11 0 2M', '-c', 'write -P 0x22 32M 1M', pristine], dir);
    });

    const createArgs = (n: string) => ['convert', '-O', 'qcow2', '-o', 'cluster_size=4096', src, url(n)];
    const amendArgs = (n: string) => ['amend', '-o', 'refcount_bits=8,lazy_refcounts=on', url(n)];
    const fresh = (n: string) => must('cp', ['--sparse=always', pristine, at(n)], dir);

    /** A new image is absent or whole (its data the source's); anything else is a corrupt image. */
    const createdImageOk = (n: string): boolean => {
      if (!fs.existsSync(at(n))) return true;
      return tool('qemu-img', ['check', '-U', at(n)], dir).status === 0 &&
        tool('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', src, at(n)], dir).status === 0;
    };
    /** An amended image is the old one or the new one (never a mix), consistent, with the same guest data. */
    const amendedImageOk = (n: string): boolean => {
      if (tool('qemu-img', ['check', '-U', at(n)], dir).status !== 0) return false;
      const d = JSON.parse(must('qemu-img', ['info', '-U', '--output=json', at(n)], dir).stdout)['format-specific'].data;
      const state = `${d['refcount-bits']}/${d['lazy-refcounts']}`;
      if (state !== '16/false' && state !== '8/true') return false;
      return tool('qemu-img', ['compare', '-U', pristine, at(n)], dir).status === 0;
    };

    /** Run `op` once per point spread over its traffic, with `stop` at that point; count corrupt results. */
    const trials = async (kind: 'kill' | 'drop', op: 'create' | 'amend') => {
      const args = op === 'create' ? createArgs : amendArgs;
      const ok = op === 'create' ? createdImageOk : amendedImageOk;
      if (op === 'amend') fresh('calibrate.qcow2');
      const whole = await traffic(args('calibrate.qcow2'));
      fs.rmSync(at('calibrate.qcow2'));
      const outcomes = { stopped: 0, completed: 0, corrupt: [] as string[] };
      for (let j = 1; j <= TRIALS; j++) {
        const n = `${kind}-${op}-${j}.qcow2`;
        if (op === 'amend') fresh(n);
        const point = Math.round((whole * j) / (TRIALS + 1));
        let r: Run;
        // The proxy's setting is cleared however the trial ends, so that a trial that overruns its
        // time fails alone instead of leaving every later connection of the file dropped.
        if (kind === 'drop') {
          proxy.setDropAfterBytes(point);
          try {
            r = await qcow2(args(n));
          } finally {
            proxy.setDropAfterBytes(undefined);
          }
          if (r.status !== 0) expect(r.stderr).toMatch(/connection|Connection|closed/);
        } else {
          let kill = () => undefined as void;
          proxy.onBytes(point, () => kill());
          try {
            r = await qcow2(args(n), (k) => (kill = k));
          } finally {
            proxy.onBytes(undefined);
          }
        }
        expect(r.hung, r.hung).toBeUndefined();
        expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
        if (r.status === 0) outcomes.completed++;
        else outcomes.stopped++;
        if (!ok(n)) outcomes.corrupt.push(`${n} (${kind} at byte ${point} of ${whole})`);
      }
      return outcomes;
    };

    const results: Record<string, { stopped: number; completed: number; corrupt: string[] }> = {};
    afterAll(() => {
      console.log(`[remote-safety] trials: ${JSON.stringify(results)}`);
    });

    it.each([
      { how: 'killed (SIGKILL)', kind: 'kill', op: 'create' },
      { how: 'link dropped', kind: 'drop', op: 'create' },
      { how: 'killed (SIGKILL)', kind: 'kill', op: 'amend' },
      { how: 'link dropped', kind: 'drop', op: 'amend' },
    ] as const)('$how mid-$op: no corrupt image on the host, nothing temporary left', async ({ kind, op }) => {
      const r = await trials(kind, op);
      results[`${kind}-${op}`] = r;
      expect(r.corrupt).toEqual([]);
      // The points reach into the operation: most trials are stopped before it completes.
      expect(r.stopped).toBeGreaterThan(TRIALS / 2);
      // Nothing temporary is left behind either (the host helper removes what was not published).
      expect(await settled(() => leftovers().filter((f) => f.includes('.qcow2-tmp-')))).toEqual([]);
    }, 600_000);
  });
});
