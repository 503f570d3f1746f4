// QEMU image locking against real QEMU holders (qemu-nbd, qemu-io, qemu-img), both directions.
// No mocks: the locks are real OFD locks on a real file, and the QEMU side is QEMU 7.2 itself.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { findLockHolders, lockBytes, lockImage, type ImageLock } from '../../../provider/qcow2/io/lock';
import { qemuImgAvailable, requireQemu, runQemuImg } from '../../helpers/qemu';
import { stopProcess } from '../../helpers/common';

const IMG = 'img.qcow2';
const WRITE_MSG = `Failed to get "write" lock\nIs another process using the image [${IMG}]?`;
const SHARED_WRITE_MSG = `Failed to get shared "write" lock\nIs another process using the image [${IMG}]?`;

function toolAvailable(tool: string): boolean {
  const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
  return r.error === undefined && r.status === 0;
}

const missing = [
  ...(qemuImgAvailable() ? [] : ['qemu-img']),
  ...['qemu-nbd', 'qemu-io'].filter((t) => !toolAvailable(t)),
];
const skip = missing.length > 0 && !requireQemu;
if (skip) {
  console.warn(`[lock] skipping QEMU locking tests: ${missing.join(', ')} not found (set REQUIRE_QEMU=1 to make this fail)`);
}
const onLinux = process.platform === 'linux';

let dir = '';
let file = '';
const fds: number[] = [];
const locks: ImageLock[] = [];
const daemons: number[] = [];

function run(tool: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(tool, args, { cwd: dir, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, timeout: 15_000 });
  if (r.error !== undefined) {
    const why = requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : '';
    throw new Error(`cannot run ${tool}${why}: ${r.error.message}`);
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function open(): number {
  const fd = fs.openSync(file, 'r+');
  fds.push(fd);
  return fd;
}

function lock(fd: number, mode: 'read' | 'write'): ImageLock {
  const l = lockImage(fd, IMG, mode);
  locks.push(l);
  return l;
}

/** The Qcow2Error lockImage throws (fails the test when it does not throw). */
function lockFailure(fd: number, mode: 'read' | 'write'): Qcow2Error {
  try {
    lock(fd, mode);
  } catch (e) {
    if (Qcow2Error.isInstance(e)) return e;
    throw e;
  }
  throw new Error(`lockImage(${mode}) succeeded against a conflicting holder`);
}

/** Lock bytes this process holds on fd, from /proc/self/fdinfo (the kernel's view). */
function heldOn(fd: number): number[] {
  const self = findLockHolders(file).filter((h) => h.pid === process.pid && h.fd === fd);
  return self.flatMap((h) => h.bytes);
}

const stopDaemon = stopProcess;

function stopDaemons(): void {
  while (daemons.length > 0) stopDaemon(daemons.pop()!);
}
// Even if the worker dies between tests, no qemu-nbd outlives it.
process.on('exit', stopDaemons);

/** qemu-nbd --fork: returns once the server has the image open (and locked); its pid. */
function startNbd(extra: string[] = []): number {
  const sock = path.join(dir, `nbd-${daemons.length}.sock`);
  const pidFile = path.join(dir, `nbd-${daemons.length}.pid`);
  const r = run('qemu-nbd', ['--fork', '--persistent', '-k', sock, '--pid-file', pidFile, '-f', 'qcow2', ...extra, IMG]);
  if (fs.existsSync(pidFile)) daemons.push(Number(fs.readFileSync(pidFile, 'utf8').trim()));
  expect(r.status, r.stderr).toBe(0);
  return daemons[daemons.length - 1]!;
}

describe.skipIf(skip || !onLinux)('QEMU image locking (qemu 7.2 protocol)', () => {
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-lock-'));
    file = path.join(dir, IMG);
    const r = runQemuImg(['create', '-f', 'qcow2', IMG, '1M'], { cwd: dir });
    expect(r.status, r.stderr).toBe(0);
  });

  afterEach(() => {
    stopDaemons();
    for (const l of locks.splice(0)) l.release();
    for (const fd of fds.splice(0)) fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  afterAll(stopDaemons);

  it('holds the bytes qemu-img holds for the same operation', () => {
    expect(lockBytes('write')).toEqual([100, 101, 103, 201, 203]);
    expect(lockBytes('read')).toEqual([100, 201, 203]);

    // A read-write QEMU user (qemu-nbd, like a VM) holds exactly our 'write' bytes ...
    const rw = startNbd();
    expect(findLockHolders(file)).toEqual([
      { pid: rw, fd: expect.any(Number), bytes: lockBytes('write'), uses: ['consistent-read', 'write', 'resize'], refusesToShare: ['write', 'resize'] },
    ]);
    stopDaemons();
    // ... and a read-only one (qemu-nbd -r, like qemu-img check or a backing file) our 'read' bytes.
    const ro = startNbd(['--read-only']);
    expect(findLockHolders(file).map((h) => [h.pid, h.bytes])).toEqual([[ro, lockBytes('read')]]);
    stopDaemons();

    const fd = open();
    const w = lock(fd, 'write');
    expect(w.bytes).toEqual(lockBytes('write'));
    expect(heldOn(fd)).toEqual(lockBytes('write'));
    w.release();
    expect(heldOn(fd)).toEqual([]);
    lock(fd, 'read');
    expect(heldOn(fd)).toEqual(lockBytes('read'));
  });

  it('refuses, with qemu-img\'s wording and touching nothing, while qemu-nbd serves the image', () => {
    const nbd = startNbd();
    const before = fs.readFileSync(file);
    const mtime = fs.statSync(file).mtimeMs;
    const fd = open();

    const w = lockFailure(fd, 'write');
    expect(w.code).toBe('LOCKED');
    expect(w.message).toBe(WRITE_MSG);
    expect(w.file).toBe(IMG);
    // Exactly what qemu-img amend says in the same situation.
    const amend = run('qemu-img', ['amend', '-o', 'lazy_refcounts=on', IMG]);
    expect(amend.status).toBe(1);
    expect(amend.stderr).toBe(`qemu-img: Could not open '${IMG}': ${w.message}\n`);

    const r = lockFailure(fd, 'read');
    expect(r.code).toBe('LOCKED');
    expect(r.message).toBe(SHARED_WRITE_MSG);
    // Exactly what qemu-img info (without -U) says.
    const info = run('qemu-img', ['info', IMG]);
    expect(info.status).toBe(1);
    expect(info.stderr).toBe(`qemu-img: Could not open '${IMG}': ${r.message}\n`);
    // -U semantics (no lock at all) still read: that is simply not calling lockImage.
    expect(run('qemu-img', ['info', '-U', IMG]).status).toBe(0);

    // Nothing touched: no bytes left locked by the failed attempts, file unchanged, holder intact.
    expect(heldOn(fd)).toEqual([]);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(fs.statSync(file).mtimeMs).toBe(mtime);
    expect(findLockHolders(file).map((h) => [h.pid, h.bytes])).toEqual([[nbd, lockBytes('write')]]);

    // Once the holder is gone, the same fd locks.
    stopDaemons();
    expect(lock(fd, 'write').bytes).toEqual(lockBytes('write'));
  });

  it('keeps QEMU out while we hold a write lock, and lets it in after release', () => {
    const fd = open();
    const l = lock(fd, 'write');

    const info = run('qemu-img', ['info', IMG]);
    expect(info.status).toBe(1);
    expect(info.stderr).toBe(`qemu-img: Could not open '${IMG}': ${SHARED_WRITE_MSG}\n`);
    expect(run('qemu-img', ['info', '-U', IMG]).status).toBe(0);
    const amend = run('qemu-img', ['amend', '-o', 'lazy_refcounts=on', IMG]);
    expect(amend.status).toBe(1);
    expect(amend.stderr).toBe(`qemu-img: Could not open '${IMG}': ${WRITE_MSG}\n`);
    const io = run('qemu-io', ['-c', 'read 0 512', IMG]);
    expect(io.status).not.toBe(0);
    expect(io.stderr).toBe(`qemu-io: can't open device ${IMG}: ${WRITE_MSG}\n`);
    const nbd = run('qemu-nbd', ['--fork', '-k', path.join(dir, 'x.sock'), '--pid-file', path.join(dir, 'x.pid'), '-f', 'qcow2', IMG]);
    if (fs.existsSync(path.join(dir, 'x.pid'))) daemons.push(Number(fs.readFileSync(path.join(dir, 'x.pid'), 'utf8')));
    expect(nbd.status).not.toBe(0);
    expect(nbd.stderr).toContain(WRITE_MSG);

    l.release();
    expect(run('qemu-img', ['info', IMG]).status).toBe(0);
    const amended = run('qemu-img', ['amend', '-o', 'lazy_refcounts=on', IMG]);
    expect(amended.status, amended.stderr).toBe(0);
    const read = run('qemu-io', ['-c', 'read 0 512', IMG]);
    expect(read.status, read.stderr).toBe(0);
    expect(read.stdout).toContain('read 512/512 bytes');
  });

  it('a read lock lets QEMU readers in and keeps QEMU writers out', () => {
    const fd = open();
    lock(fd, 'read');
    expect(run('qemu-img', ['info', IMG]).status).toBe(0);
    expect(run('qemu-img', ['check', IMG]).status).toBe(0);
    expect(run('qemu-io', ['-r', '-c', 'read 0 512', IMG]).status).toBe(0);
    const amend = run('qemu-img', ['amend', '-o', 'lazy_refcounts=on', IMG]);
    expect(amend.stderr).toBe(`qemu-img: Could not open '${IMG}': ${WRITE_MSG}\n`);
    const io = run('qemu-io', ['-c', 'read 0 512', IMG]);
    expect(io.stderr).toBe(`qemu-io: can't open device ${IMG}: ${WRITE_MSG}\n`);
  });

  it('our own locks on two fds: one writer, many readers', () => {
    const a = open();
    const b = open();

    const w = lock(a, 'write');
    expect(lockFailure(b, 'write').message).toBe(WRITE_MSG);
    expect(lockFailure(b, 'read').message).toBe(SHARED_WRITE_MSG);
    expect(heldOn(b)).toEqual([]);
    w.release();

    const ra = lock(a, 'read');
    const rb = lock(b, 'read');
    expect(heldOn(a)).toEqual(lockBytes('read'));
    expect(heldOn(b)).toEqual(lockBytes('read'));
    // Upgrading while another reader is there fails like QEMU's and keeps the read lock.
    const up = (() => {
      try {
        ra.change('write');
      } catch (e) {
        return e as Qcow2Error;
      }
      throw new Error('upgrade succeeded with another reader present');
    })();
    expect(up.code).toBe('LOCKED');
    expect(up.message).toBe(WRITE_MSG);
    expect(ra.mode).toBe('read');
    expect(heldOn(a)).toEqual(lockBytes('read'));
    rb.release();
    ra.change('write');
    expect(heldOn(a)).toEqual(lockBytes('write'));
    ra.change('read');
    expect(heldOn(a)).toEqual(lockBytes('read'));
  });

  it('closing the fd releases the lock (OFD locks belong to the open file description)', () => {
    const a = fs.openSync(file, 'r+');
    const la = lockImage(a, IMG, 'write');
    const b = open();
    expect(lockFailure(b, 'write').code).toBe('LOCKED');
    fs.closeSync(a);
    const lb = lock(b, 'write');
    expect(lb.bytes).toEqual(lockBytes('write'));
    // Releasing a lock whose fd was closed is a no-op and leaves the new holder alone.
    la.release();
    expect(heldOn(b)).toEqual(lockBytes('write'));
    expect(() => la.change('read')).toThrow(/released/);
    expect(run('qemu-img', ['info', IMG]).status).toBe(1);
  });
});

describe.skipIf(onLinux)('QEMU image locking off Linux', () => {
  it('refuses clearly', () => {
    expect(() => lockImage(0, IMG, 'write')).toThrow(/64-bit Linux only/);
  });
});
