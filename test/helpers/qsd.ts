// A running QEMU for tests, without a guest: qemu-storage-daemon (Debian's qemu-system-common)
// opens a qcow2 image with --blockdev (a file node and a qcow2 node, holding QEMU's image locks
// like a VM), exports it for guest writes (NBD on a unix socket, or FUSE on a file), and answers
// QMP on a unix socket. Helpers write through the export, stop the daemon cleanly (it then
// stores persistent bitmaps in the image) or kill it hard, and read a bitmap's dirty extents
// from the stopped image. Without the daemon the suites skip with the reason; under CI=true or
// REQUIRE_QEMU=1 they fail instead.

import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { alive } from './common';
import { requireQemu } from './qemu';

export const QSD = process.env.QEMU_STORAGE_DAEMON ?? 'qemu-storage-daemon';
const QEMU_IO = process.env.QEMU_IO ?? 'qemu-io';
const QEMU_NBD = process.env.QEMU_NBD ?? 'qemu-nbd';
const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';

function runs(bin: string, args: string[]): boolean {
  const r = spawnSync(bin, args, { encoding: 'utf8' });
  return r.error === undefined && r.status === 0;
}

/** Why the daemon suites cannot run here, or undefined when they can. */
export function qsdMissing(): string | undefined {
  if (!runs(QSD, ['--version'])) return `${QSD} not found (apt-get install -y qemu-system-common)`;
  for (const t of [QEMU_IO, QEMU_NBD, QEMU_IMG]) if (!runs(t, ['--version'])) return `${t} not found (apt-get install -y qemu-utils)`;
  return undefined;
}

/** Why a FUSE export cannot be mounted here, or undefined when it can. */
export function fuseMissing(): string | undefined {
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse is missing (no FUSE in this kernel or container)';
  if (process.getuid?.() !== 0 && !runs('fusermount3', ['-V'])) return 'not root and fusermount3 is missing (apt-get install -y fuse3)';
  return undefined;
}

/** True when the suite must skip (not required); says why on the console. */
export function skipWithoutQsd(suite: string, opts: { fuse?: boolean } = {}): boolean {
  const why = qsdMissing() ?? (opts.fuse ? fuseMissing() : undefined);
  if (why === undefined || requireQemu) return false;
  console.warn(`[${suite}] SKIPPED: ${why} (CI=true or REQUIRE_QEMU=1 turns this into a failure)`);
  return true;
}

export interface QsdOptions {
  /** The qcow2 image to open (read-write). */
  image: string;
  /** How guests write: an NBD export on a unix socket (default; it refuses live resizes), FUSE (allows them), or none. */
  export?: 'nbd' | 'fuse' | 'none';
  /** The qcow2 node's name. Default "disk0" (the file node is "<name>-file"). */
  nodeName?: string;
  /** More --blockdev options for the qcow2 node ("discard=unmap"). */
  qcow2Options?: string[];
}

export interface Qsd {
  readonly pid: number;
  readonly image: string;
  readonly nodeName: string;
  readonly qmpSocket: string;
  /** The NBD export's URI (export 'nbd'). */
  readonly nbdUri?: string;
  /** The FUSE export's file (export 'fuse'): read, write and stat it as a disk. */
  readonly fuseFile?: string;
  /** Write `length` bytes of `pattern` at guest `offset` through the export (qemu-io, or the FUSE file). */
  write(offset: number, length: number, pattern: number): void;
  /** The disk's size as a guest sees it through the export, in bytes. */
  exportSize(): number;
  /** What the daemon printed. */
  log(): string;
  /** True while the process runs. */
  readonly running: boolean;
  /** SIGSTOP / SIGCONT: a frozen QEMU that accepts connections but answers nothing. */
  freeze(): void;
  thaw(): void;
  /** Stop cleanly (SIGTERM): QEMU flushes and stores persistent bitmaps, then exits 0. Idempotent; removes the sockets. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /**
   * Kill hard (SIGKILL) and wait until every thread is gone: nothing is flushed, bitmaps stay
   * `in-use` in the image. `keepFiles` leaves the sockets behind (stale) until stop() or kill().
   */
  kill(opts?: { keepFiles?: boolean }): Promise<void>;
}

/** A short scratch folder (unix socket paths are limited to 107 bytes). */
function scratch(): string {
  const base = fs.existsSync('/tmp') ? '/tmp' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'qsd-'));
}

function run(bin: string, args: string[]): string {
  const r = spawnSync(bin, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 64 * 1024 * 1024 });
  if (r.error !== undefined) throw new Error(`cannot run ${bin}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Wait (in steps of 10 ms, at most `steps` of them) until `ready()`, or until the process exits. */
async function until(ready: () => boolean, child: ChildProcess, steps: number): Promise<boolean> {
  for (let i = 0; i < steps; i++) {
    if (ready()) return true;
    if (child.exitCode !== null || child.signalCode !== null) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return ready();
}

/** Detach a FUSE mount left by a daemon that died (ignore failures: nothing may be mounted). */
function unmount(file: string): void {
  if (!fs.existsSync('/proc/self/mounts') || !fs.readFileSync('/proc/self/mounts', 'utf8').includes(` ${file} `)) return;
  if (process.getuid?.() === 0) spawnSync('umount', ['-l', file]);
  else spawnSync('fusermount3', ['-u', '-z', file]);
}

/** Start qemu-storage-daemon on `opts.image`; resolves once its exports and QMP socket are up. */
export async function startQsd(opts: QsdOptions): Promise<Qsd> {
  const missing = qsdMissing() ?? (opts.export === 'fuse' ? fuseMissing() : undefined);
  if (missing !== undefined) throw new Error(`cannot start qemu-storage-daemon${requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : ''}: ${missing}`);
  const dir = scratch();
  const node = opts.nodeName ?? 'disk0';
  const image = path.resolve(opts.image);
  const qmpSocket = path.join(dir, 'qmp.sock');
  const pidFile = path.join(dir, 'qsd.pid');
  const kind = opts.export ?? 'nbd';
  const args = [
    '--blockdev', `driver=file,node-name=${node}-file,filename=${image}`,
    '--blockdev', ['driver=qcow2', `node-name=${node}`, `file=${node}-file`, ...(opts.qcow2Options ?? [])].join(','),
  ];
  let nbdUri: string | undefined;
  let fuseFile: string | undefined;
  if (kind === 'nbd') {
    const nbdSocket = path.join(dir, 'nbd.sock');
    args.push('--nbd-server', `addr.type=unix,addr.path=${nbdSocket}`);
    args.push('--export', `type=nbd,id=${node}-export,node-name=${node},name=${node},writable=on`);
    nbdUri = `nbd+unix:///${node}?socket=${nbdSocket}`;
  } else if (kind === 'fuse') {
    fuseFile = path.join(dir, 'disk');
    fs.writeFileSync(fuseFile, '');
    args.push('--export', `type=fuse,id=${node}-export,node-name=${node},mountpoint=${fuseFile},writable=on`);
  }
  args.push('--chardev', `socket,id=${node}-qmp,path=${qmpSocket},server=on,wait=off`, '--monitor', `chardev=${node}-qmp`);
  args.push('--pidfile', pidFile);

  let log = '';
  const child = spawn(QSD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  // The pid file is written once every option has been carried out.
  const started = await until(() => fs.existsSync(pidFile) && fs.statSync(pidFile).size > 0, child, 3000);
  const cleanup = () => {
    if (fuseFile !== undefined) unmount(fuseFile);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  if (!started) {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
    cleanup();
    throw new Error(`qemu-storage-daemon did not start: ${log.trim() || 'no output'}`);
  }
  const pid = child.pid!;
  let signalled = false;
  let cleaned = false;
  const finish = async (sig: NodeJS.Signals, keepFiles = false) => {
    if (!signalled && child.exitCode === null && child.signalCode === null) {
      signalled = true;
      // A frozen daemon must be thawed to act on SIGTERM.
      if (sig !== 'SIGKILL') process.kill(pid, 'SIGCONT');
      child.kill(sig);
    }
    // The exit event comes from waitpid, which waits for every thread: only then are all its fds closed.
    const r = await exited;
    if (!keepFiles && !cleaned) {
      cleaned = true;
      cleanup();
    }
    return r;
  };
  return {
    pid,
    image,
    nodeName: node,
    qmpSocket,
    ...(nbdUri !== undefined ? { nbdUri } : {}),
    ...(fuseFile !== undefined ? { fuseFile } : {}),
    write(offset, length, pattern) {
      if (fuseFile !== undefined) {
        const fd = fs.openSync(fuseFile, 'r+');
        try {
          fs.writeSync(fd, Buffer.alloc(length, pattern), 0, length, offset);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        return;
      }
      if (nbdUri === undefined) throw new Error('this daemon has no export to write through');
      run(QEMU_IO, ['-f', 'raw', '-c', `write -q -P ${pattern} ${offset} ${length}`, nbdUri]);
    },
    exportSize() {
      if (fuseFile !== undefined) return fs.statSync(fuseFile).size;
      if (nbdUri === undefined) throw new Error('this daemon has no export');
      return Number((JSON.parse(run(QEMU_IMG, ['info', '--output=json', '-f', 'raw', nbdUri])) as { 'virtual-size': number })['virtual-size']);
    },
    log: () => log,
    get running() {
      return child.exitCode === null && child.signalCode === null;
    },
    freeze: () => process.kill(pid, 'SIGSTOP'),
    thaw: () => process.kill(pid, 'SIGCONT'),
    stop: () => finish('SIGTERM'),
    kill: async (opts = {}) => {
      await finish('SIGKILL', opts.keepFiles);
    },
  };
}

/**
 * Whether a process that is not our child is entirely gone: its main thread exited and no other
 * thread is left holding its files (a zombie leader's fds may live on in its other threads).
 */
function gone(pid: number): boolean {
  try {
    if (fs.readdirSync(`/proc/${pid}/task`).length > 1) return false;
  } catch {
    return true;
  }
  return !alive(pid);
}

export interface Extent {
  start: number;
  length: number;
}

/**
 * The dirty extents of bitmap `bitmap` in the (closed) qcow2 image, as QEMU reads them: qemu-nbd
 * exports the image read-only with the bitmap, and `qemu-img map` over NBD with
 * x-dirty-bitmap reports dirty areas as "data": false. Adjacent extents are merged.
 */
export async function dirtyExtents(image: string, bitmap: string): Promise<Extent[]> {
  const dir = scratch();
  const sock = path.join(dir, 'nbd.sock');
  const pidFile = path.join(dir, 'nbd.pid');
  try {
    run(QEMU_NBD, ['--read-only', '-f', 'qcow2', '-B', bitmap, '-k', sock, `--pid-file=${pidFile}`, '--fork', image]);
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    try {
      const opts = `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${bitmap}`;
      const map = JSON.parse(run(QEMU_IMG, ['map', '--output=json', '--image-opts', opts])) as { start: number; length: number; data: boolean }[];
      const out: Extent[] = [];
      for (const e of map) {
        if (e.data) continue;
        const last = out[out.length - 1];
        if (last !== undefined && last.start + last.length === e.start) last.length += e.length;
        else out.push({ start: e.start, length: e.length });
      }
      return out;
    } finally {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      for (let i = 0; i < 500 && !gone(pid); i++) await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** `qemu-img info --output=json` of an image nobody holds. */
export function imageInfo(image: string): Record<string, unknown> & { 'virtual-size': number } {
  return JSON.parse(run(QEMU_IMG, ['info', '--output=json', image])) as Record<string, unknown> & { 'virtual-size': number };
}

/** `qemu-img check --output=json`: its exit status and report (2 = corruptions, 3 = leaks). */
export function imageCheck(image: string): { status: number | null; report: Record<string, unknown> } {
  const r = spawnSync(QEMU_IMG, ['check', '--output=json', image], { encoding: 'utf8' });
  return { status: r.status, report: r.stdout.trim() === '' ? {} : (JSON.parse(r.stdout) as Record<string, unknown>) };
}

/** Create a qcow2 image with qemu-img. */
export function createImage(image: string, size: string, options: string[] = []): void {
  run(QEMU_IMG, ['create', '-q', '-f', 'qcow2', ...(options.length > 0 ? ['-o', options.join(',')] : []), image, size]);
}
