// QEMU-compatible image locking (QEMU 7.2 file-posix, Linux): OFD byte-range locks on the image
// file, so that QEMU cannot open an image while we change it, and we refuse to change an image
// that a VM, qemu-nbd or qemu-img holds. See QCOW2-NOTES.md §7.
//
// The protocol (block/file-posix.c raw_apply_lock_bytes / raw_check_lock_bytes, 7.2):
// - every lock is a shared READ lock (F_RDLCK) of one byte, taken with F_OFD_SETLK;
// - byte 100+i held = "I use permission i", byte 200+i held = "I do not share permission i";
//   i is the bit of BLK_PERM_*: 0 consistent read, 1 write, 2 write unchanged, 3 resize
//   (BLK_PERM_GRAPH_MOD was dropped before 7.2: qemu-img create unlocks exactly 100..103 and
//   200..203);
// - a user first takes its bytes, then probes with F_OFD_GETLK for a WRITE lock (which any other
//   open file description's read lock conflicts with, our own does not): for each permission it
//   uses, byte 200+i ("Failed to get "<perm>" lock"); for each permission it does not share,
//   byte 100+i ("Failed to get shared "<perm>" lock"). On a conflict it drops what it took.
// Taking before probing makes two racing users both see each other (both fail, neither proceeds
// unseen). The locks belong to the open file description: take them on the fd the image is
// written through; closing that fd releases them.

import { fstatSync, readFileSync, readdirSync, statSync } from 'fs';
import { Qcow2Error } from '../../model/errors';
import { F_OFD_GETLK, F_OFD_SETLK, F_RDLCK, F_UNLCK, F_WRLCK, Libc, SEEK_SET, libc, libcUnavailable } from './libc';

/** QEMU's BLK_PERM_* permissions, in bit order (index i = lock bytes 100+i and 200+i). */
export type Permission = 'consistent-read' | 'write' | 'write-unchanged' | 'resize';

/** All permissions in QEMU 7.2's bit order (BLK_PERM_ALL = 0x0f). */
export const PERMISSIONS: readonly Permission[] = ['consistent-read', 'write', 'write-unchanged', 'resize'];

/** The names QEMU prints in lock errors (bdrv_perm_names). */
const PERM_NAMES: Record<Permission, string> = {
  'consistent-read': 'consistent read',
  write: 'write',
  'write-unchanged': 'write unchanged',
  resize: 'resize',
};

/** Byte 100+i: the holder uses permission i (RAW_LOCK_PERM_BASE). */
export const LOCK_PERM_BASE = 100;
/** Byte 200+i: the holder does not share permission i (RAW_LOCK_SHARED_BASE). */
export const LOCK_SHARED_BASE = 200;

export type LockMode = 'read' | 'write';

export interface LockSpec {
  /** Permissions we use. */
  readonly perm: readonly Permission[];
  /** Permissions we let others have. */
  readonly shared: readonly Permission[];
}

/**
 * What qemu-img 7.2 itself locks (traced with strace, confirmed in /proc/locks):
 * - write: `qemu-img amend`, `resize`, `commit`, `rebase`, and qemu-nbd / qemu-io / a VM with a
 *   read-write image: uses consistent read + write + resize, shares consistent read + write
 *   unchanged. Holds 100 101 103 201 203; probes 200 201 203, then 101 103.
 * - read: `qemu-img check`, `snapshot -l`, `qemu-io -r`, a backing file opened by QEMU: uses
 *   consistent read, shares consistent read + write unchanged. Holds 100 201 203; probes 200,
 *   then 101 103. (`qemu-img info` holds only 201 203 and probes 101 103; the extra byte 100 says
 *   truthfully that we read image data, and it conflicts only with a holder of 200, which no
 *   qemu-img command or ordinary QEMU user takes.)
 */
export const LOCK_MODES: Readonly<Record<LockMode, LockSpec>> = {
  write: { perm: ['consistent-read', 'write', 'resize'], shared: ['consistent-read', 'write-unchanged'] },
  read: { perm: ['consistent-read'], shared: ['consistent-read', 'write-unchanged'] },
};

/** A held image lock. */
export interface ImageLock {
  readonly fd: number;
  readonly fileName: string;
  /** The mode currently held. */
  readonly mode: LockMode;
  /** The lock bytes currently held, ascending. */
  readonly bytes: readonly number[];
  /**
   * Switch to another mode on the same fd as QEMU does on a permission change: take the new
   * bytes, probe, then drop the bytes no longer needed. On a conflict the old mode is kept and
   * LOCKED is thrown.
   */
  change(mode: LockMode): void;
  /** Drop the lock bytes (idempotent). Call before closing the fd; closing also drops them. */
  release(): void;
}

// ---------------------------------------------------------------------------------------------
// fcntl (io/libc.ts). The binding (koffi) loads with the first lock taken: a probe through
// /proc/locks (`qcow2 info`) needs none.

const errnos = () => (require('os') as typeof import('os')).constants.errno;

function binding(): Libc {
  const b = libc();
  if (b === undefined) throw new Qcow2Error('UNSUPPORTED', `QEMU image locking is unavailable: ${libcUnavailable()}`);
  return b;
}

/** struct flock's fields are in host byte order. */
const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function flockBuffer(b: Libc, type: number, start: number): Buffer {
  const buf = Buffer.alloc(b.flock.size); // padding and l_pid = 0, as OFD locks require
  const w16 = (v: number, o: number) => (le ? buf.writeInt16LE(v, o) : buf.writeInt16BE(v, o));
  const w64 = (v: number, o: number) => (le ? buf.writeBigInt64LE(BigInt(v), o) : buf.writeBigInt64BE(BigInt(v), o));
  w16(type, b.flock.type);
  w16(SEEK_SET, b.flock.whence);
  w64(start, b.flock.start);
  w64(1, b.flock.len);
  return buf;
}

function readType(b: Libc, buf: Buffer): number {
  return le ? buf.readInt16LE(b.flock.type) : buf.readInt16BE(b.flock.type);
}

/** Set (F_RDLCK) or clear (F_UNLCK) our read lock on one byte; returns 0 or -errno. */
function setByte(fd: number, byte: number, type: 'lock' | 'unlock'): number {
  const b = binding();
  const r = b.fcntl(fd, F_OFD_SETLK, flockBuffer(b, type === 'lock' ? F_RDLCK : F_UNLCK, byte));
  return r < 0 ? r : 0;
}

/** qemu_lock_fd_test(fd, byte, 1, exclusive=true): 0 when free, -EAGAIN when another OFD holds it. */
function testByte(fd: number, byte: number): number {
  const b = binding();
  const buf = flockBuffer(b, F_WRLCK, byte);
  const r = b.fcntl(fd, F_OFD_GETLK, buf);
  if (r < 0) return r;
  return readType(b, buf) === F_UNLCK ? 0 : -errnos().EAGAIN;
}

// ---------------------------------------------------------------------------------------------
// QEMU's protocol

const bitsOf = (perms: readonly Permission[]): number =>
  perms.reduce((m, p) => {
    const i = PERMISSIONS.indexOf(p);
    if (i < 0) throw new Qcow2Error('INVALID_OPTION', `unknown permission '${String(p)}'`);
    return m | (1 << i);
  }, 0);

/** The bytes a user of `perm` bits not sharing the complement of `shared` bits holds, ascending. */
function heldBytes(perm: number, shared: number): number[] {
  const out: number[] = [];
  PERMISSIONS.forEach((_, i) => {
    if (perm & (1 << i)) out.push(LOCK_PERM_BASE + i);
  });
  PERMISSIONS.forEach((_, i) => {
    if (!(shared & (1 << i))) out.push(LOCK_SHARED_BASE + i);
  });
  return out;
}

/** The bytes held for a mode, as QEMU holds them. */
export function lockBytes(mode: LockMode | LockSpec): number[] {
  const spec = typeof mode === 'string' ? LOCK_MODES[mode] : mode;
  return heldBytes(bitsOf(spec.perm), bitsOf(spec.shared));
}

/** Another holder conflicts: LOCKED, in QEMU's words. */
function lockedError(what: string, fileName: string, hint: boolean): Qcow2Error {
  const msg = hint ? `${what}\nIs another process using the image [${fileName}]?` : what;
  return new Qcow2Error('LOCKED', msg, { file: fileName });
}

function lockError(errno: number, what: string, fileName: string, hint: boolean): Qcow2Error {
  const { EAGAIN, EACCES } = errnos();
  if (errno === EAGAIN || errno === EACCES) return lockedError(what, fileName, hint);
  return new Qcow2Error('IO', `${what}: ${binding().strerror(errno)}`, { file: fileName });
}

/** raw_check_lock_bytes: the first conflict as QEMU words it, or undefined. */
function checkBytes(fd: number, perm: number, shared: number, fileName: string): Qcow2Error | undefined {
  for (let i = 0; i < PERMISSIONS.length; i++) {
    if (!(perm & (1 << i))) continue;
    const r = testByte(fd, LOCK_SHARED_BASE + i);
    if (r < 0) return lockError(-r, `Failed to get "${PERM_NAMES[PERMISSIONS[i]!]}" lock`, fileName, true);
  }
  for (let i = 0; i < PERMISSIONS.length; i++) {
    if (shared & (1 << i)) continue;
    const r = testByte(fd, LOCK_PERM_BASE + i);
    if (r < 0) return lockError(-r, `Failed to get shared "${PERM_NAMES[PERMISSIONS[i]!]}" lock`, fileName, true);
  }
  return undefined;
}

/** Clear bytes, ignoring errors (QEMU ignores unlock failures too). */
function unlockBytes(fd: number, bytes: Iterable<number>): void {
  for (const byte of bytes) setByte(fd, byte, 'unlock');
}

/**
 * raw_handle_perm_lock PREPARE: take the union of what is held and what is wanted, probe for the
 * wanted permissions, and on failure go back to exactly `held`. Returns the new byte set.
 */
function transition(fd: number, fileName: string, held: readonly number[], spec: LockSpec): number[] {
  const perm = bitsOf(spec.perm);
  const shared = bitsOf(spec.shared);
  const want = heldBytes(perm, shared);
  const heldSet = new Set(held);
  const taken: number[] = [];
  let failure: Qcow2Error | undefined;
  for (const byte of want) {
    if (heldSet.has(byte)) continue;
    const r = setByte(fd, byte, 'lock');
    if (r < 0) {
      // raw_apply_lock_bytes: someone holds a write lock here (not QEMU, which never does).
      failure = lockError(-r, `Failed to lock byte ${byte}`, fileName, false);
      break;
    }
    taken.push(byte);
  }
  failure ??= checkBytes(fd, perm, shared, fileName);
  if (failure !== undefined) {
    unlockBytes(fd, taken);
    throw failure;
  }
  const wantSet = new Set(want);
  unlockBytes(fd, held.filter((b) => !wantSet.has(b)));
  return want;
}

/** dev:ino of what fd refers to, or undefined when it is not open. */
function fileId(fd: number): string | undefined {
  try {
    const st = fstatSync(fd, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * Take QEMU's image lock for `mode` on `fd` (an fd of the image file, the one it is read or
 * written through), as qemu-img 7.2 does for the same operation: 'write' like `qemu-img amend` /
 * `resize`, 'read' like `qemu-img check`. Throws LOCKED with QEMU's wording when a QEMU user
 * (VM, qemu-nbd, qemu-img, or another lock of ours on another fd) conflicts, having touched
 * nothing. Reading with `-U` semantics means not calling this at all.
 *
 * One lock per fd: a second lockImage on the same fd would share its bytes with the first (OFD
 * locks merge per open file description); use change() to switch modes instead.
 */
export function lockImage(fd: number, fileName: string, mode: LockMode): ImageLock {
  if (LOCK_MODES[mode] === undefined) throw new Qcow2Error('INVALID_OPTION', `unknown lock mode '${String(mode)}'`);
  const id = fileId(fd);
  if (id === undefined) throw new Qcow2Error('IO', `Failed to lock ${fileName}: bad file descriptor ${fd}`, { file: fileName });
  let bytes = transition(fd, fileName, [], LOCK_MODES[mode]);
  let current: LockMode = mode;
  let released = false;
  return {
    fd,
    fileName,
    get mode() {
      return current;
    },
    get bytes() {
      return bytes.slice();
    },
    change(next: LockMode) {
      if (released) throw new Qcow2Error('INVALID_OPTION', `image lock on ${fileName} was released`);
      if (LOCK_MODES[next] === undefined) throw new Qcow2Error('INVALID_OPTION', `unknown lock mode '${String(next)}'`);
      if (fileId(fd) !== id) throw new Qcow2Error('IO', `image lock on ${fileName}: fd ${fd} was closed`, { file: fileName });
      bytes = transition(fd, fileName, bytes, LOCK_MODES[next]);
      current = next;
    },
    release() {
      if (released) return;
      released = true;
      // After close() the locks are gone already, and the fd number may name another file now.
      if (fileId(fd) === id) unlockBytes(fd, bytes);
      bytes = [];
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Diagnostics

export interface LockHolder {
  /** The holding process, when /proc/<pid>/fdinfo could be read (OFD locks show pid -1 in /proc/locks). */
  pid?: number;
  /** Its fd of the image, with pid. */
  fd?: number;
  /** Lock bytes held (first..last inclusive, expanded), ascending. */
  bytes: number[];
  /** QEMU reading of the bytes: permissions used and not shared. */
  uses: Permission[];
  refusesToShare: Permission[];
}

interface LockLine {
  kind: string;
  type: string;
  start: number;
  end: number;
}

function parseLockLine(line: string, devIno: string): LockLine | undefined {
  // "1: OFDLCK ADVISORY  READ -1 fe:00:2146674 100 101" (fdinfo lines are prefixed "lock:\t")
  const m = /^\s*(?:lock:\s*)?\d+:\s+(?:->\s+)?(\S+)\s+\S+\s+(\S+)\s+-?\d+\s+(\S+)\s+(\d+)\s+(\d+|EOF)\s*$/.exec(line);
  if (m === null || m[3] !== devIno) return undefined;
  return { kind: m[1]!, type: m[2]!, start: Number(m[4]), end: m[5] === 'EOF' ? Number.MAX_SAFE_INTEGER : Number(m[5]) };
}

function devIno(file: string | number): string {
  const st = typeof file === 'number' ? fstatSync(file, { bigint: true }) : statSync(file, { bigint: true });
  const dev = st.dev;
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  return `${hex(major)}:${hex(minor)}:${st.ino}`;
}

function describe(bytes: number[]): Pick<LockHolder, 'uses' | 'refusesToShare'> {
  const pick = (base: number) => PERMISSIONS.filter((_, i) => bytes.includes(base + i));
  return { uses: pick(LOCK_PERM_BASE), refusesToShare: pick(LOCK_SHARED_BASE) };
}

function qemuBytes(lines: LockLine[]): number[] {
  const out = new Set<number>();
  for (const l of lines) {
    if (l.kind !== 'OFDLCK') continue;
    for (let b = Math.max(l.start, LOCK_PERM_BASE); b <= Math.min(l.end, LOCK_SHARED_BASE + PERMISSIONS.length - 1); b++) {
      if ((b >= LOCK_PERM_BASE && b < LOCK_PERM_BASE + PERMISSIONS.length) || b >= LOCK_SHARED_BASE) out.add(b);
    }
  }
  return [...out].sort((a, b) => a - b);
}

/**
 * Who holds QEMU lock bytes on `fileName`, for diagnostics only (the real check is lockImage's
 * fcntl probe). Reads /proc/<pid>/fdinfo of the processes we may inspect to name holders; when a
 * holder cannot be attributed (another user's process), its bytes from /proc/locks are reported
 * without pid. Includes this process's own locks. Linux only; elsewhere returns [].
 */
export function findLockHolders(fileName: string): LockHolder[] {
  if (process.platform !== 'linux') return [];
  const key = devIno(fileName);
  const holders: LockHolder[] = [];
  let pids: string[] = [];
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    /* no /proc */
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fdinfo`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let text: string;
      try {
        text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      } catch {
        continue;
      }
      if (!text.includes('lock:')) continue;
      const lines = text.split('\n').map((l) => parseLockLine(l, key)).filter((l): l is LockLine => l !== undefined);
      const bytes = qemuBytes(lines);
      if (bytes.length === 0) continue;
      holders.push({ pid: Number(pid), fd: Number(fd), bytes, ...describe(bytes) });
    }
  }
  if (holders.length > 0) return holders;
  // Nothing attributable (e.g. holders owned by another user): report /proc/locks' bytes as one.
  try {
    const all = readFileSync('/proc/locks', 'utf8')
      .split('\n')
      .map((l) => parseLockLine(l, key))
      .filter((l): l is LockLine => l !== undefined && l.kind === 'OFDLCK');
    const bytes = qemuBytes(all);
    if (bytes.length > 0) holders.push({ bytes, ...describe(bytes) });
  } catch {
    /* no /proc/locks */
  }
  return holders;
}

/**
 * Whether some open file description holds QEMU's "I use write" byte (101) on the file open as
 * `fd`: a VM, qemu-storage-daemon, qemu-nbd or qemu-io has the image open read-write (or this
 * process does, if it locked it). From /proc/locks; false where that cannot be read.
 */
export function heldForWriting(fd: number): boolean {
  if (process.platform !== 'linux') return false;
  let text: string;
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return false;
  }
  const key = devIno(fd);
  const write = LOCK_PERM_BASE + PERMISSIONS.indexOf('write');
  return text.split('\n').some((line) => {
    if (line.includes('->')) return false;
    const l = parseLockLine(line, key);
    return l !== undefined && (l.kind === 'OFDLCK' || l.kind === 'POSIX') && l.start <= write && l.end >= write;
  });
}

/**
 * Refuse as lockImage(fd, fileName, mode) would, without taking a lock: the conflicting bytes are
 * read from /proc/locks (any lock of another open file description, POSIX or OFD, as the fcntl
 * probe sees them; waiters are not holders). For a look that needs no lock of its own, such as
 * `qemu-img info` without -U: no fcntl binding is loaded. Where /proc/locks cannot be read, the
 * lock is taken and released on `fd` instead.
 */
export function probeLock(fd: number, fileName: string, mode: LockMode): void {
  let text: string | undefined;
  if (process.platform === 'linux') {
    try {
      text = readFileSync('/proc/locks', 'utf8');
    } catch {
      /* no /proc */
    }
  }
  if (text === undefined) {
    lockImage(fd, fileName, mode).release();
    return;
  }
  const key = devIno(fd);
  const held = new Set<number>();
  for (const line of text.split('\n')) {
    if (line.includes('->')) continue;
    const l = parseLockLine(line, key);
    if (l === undefined || (l.kind !== 'OFDLCK' && l.kind !== 'POSIX')) continue;
    for (let b = Math.max(l.start, LOCK_PERM_BASE); b <= Math.min(l.end, LOCK_SHARED_BASE + PERMISSIONS.length - 1); b++) held.add(b);
  }
  const spec = LOCK_MODES[mode];
  const perm = bitsOf(spec.perm), shared = bitsOf(spec.shared);
  for (let i = 0; i < PERMISSIONS.length; i++) {
    if (perm & (1 << i) && held.has(LOCK_SHARED_BASE + i)) throw lockedError(`Failed to get "${PERM_NAMES[PERMISSIONS[i]!]}" lock`, fileName, true);
  }
  for (let i = 0; i < PERMISSIONS.length; i++) {
    if (!(shared & (1 << i)) && held.has(LOCK_PERM_BASE + i)) throw lockedError(`Failed to get shared "${PERM_NAMES[PERMISSIONS[i]!]}" lock`, fileName, true);
  }
}
