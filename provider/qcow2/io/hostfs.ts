// The host seam: everything qcow2/ asks of the machine that holds the files, besides reading and
// writing their bytes (BlockFile). The local implementation is Node's fs plus io/libc.ts; an
// implementation over SFTP serves remote hosts. Every method is synchronous (the format engine
// is; a remote implementation runs it in a worker behind a synchronous bridge) and coarse, so a
// remote host pays one round trip per call: open returns the size with the file, stat answers
// "missing" without an exception, lock takes QEMU's whole protocol in one call.

import { closeSync, fstatSync, fsyncSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, renameSync, rmSync, statSync, unlinkSync, type BigIntStats } from 'fs';
import { dirname } from 'path';
import { Qcow2Error } from '../../model/errors';
import { BlockFile, NodeBlockFile, ioError } from './blockfile';
import { lockImage, probeLock, type ImageLock, type LockMode } from './lock';
import { extentOfFd, punchHoleFd, type Extent } from './sparse';
import { SYNC_FILE_RANGE_WRITE, libc } from './libc';

export { notRegular } from './blockfile';

/** 'read' and 'write' open an existing file; 'create' makes a new one, EXISTS if anything is there. */
export type OpenMode = 'read' | 'write' | 'create';

/** What one stat call says about a path. */
export interface HostStat {
  kind: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  /** Bytes allocated on the medium (st_blocks * 512). */
  allocated: number;
  /** The file's identity on its host (device and inode): equal ids are the same file. */
  id: string;
  /** The owner's user id, where the host tells it. */
  uid?: number;
}

/** An open file and its size when opened. */
export interface OpenedFile { file: BlockFile; size: number }

export interface HostFs {
  /**
   * Open `path`; errors name `name` (default: the path), never a temporary name. Only regular
   * files: a folder, FIFO, socket or device is refused with qemu-img's words (notRegular), and
   * nothing waits (a FIFO without a writer must not block the open).
   */
  open(path: string, mode: OpenMode, name?: string): OpenedFile;
  /** stat(2), following links; undefined when nothing is there. */
  stat(path: string): HostStat | undefined;
  /** lstat(2): a link is reported as one; undefined when nothing is there. */
  lstat(path: string): HostStat | undefined;
  /** link(2): a second name for a file; fails (EXISTS) rather than replace `newPath`. Errors name `name`. */
  link(existing: string, newPath: string, name?: string): void;
  /** rename(2) (replaces `to`). */
  rename(from: string, to: string): void;
  /** unlink(2); false when nothing was there. */
  unlink(path: string): boolean;
  /** readdir(3): the names in a folder. */
  readdir(path: string): string[];
  /** mkdir(2) of one folder (mode 0700). */
  mkdir(path: string): void;
  /** A new folder `prefix` + a unique suffix (mkdtemp(3)); returns its path. */
  mkdtemp(prefix: string): string;
  /** Remove a folder and everything in it; nothing there is not an error. */
  removeTree(path: string): void;
  /** Make a folder's entries durable (after link, unlink); a no-op where the host cannot. */
  fsyncDir(path: string): void;
  /** Take QEMU's image lock on an open file (io/lock.ts); LOCKED when a QEMU user conflicts. */
  lock(file: BlockFile, name: string, mode: LockMode): ImageLock;
  /** Refuse (LOCKED) when another process holds a lock conflicting with `mode`, without taking one. */
  probeLock(file: BlockFile, name: string, mode: LockMode): void;
  /** The identity ("dev:ino") of an open file: fstat(2), or what the host said when it was opened. */
  identity(file: BlockFile, name: string): string;
  /** The extent at `offset` (SEEK_DATA / SEEK_HOLE): data, or a hole reading as zeros. */
  extent(file: BlockFile, offset: number, length: number, fileSize?: number): Extent;
  /** Make a range read as zeros without changing the size: a hole where the host can. */
  punchHole(file: BlockFile, offset: number, length: number): void;
  /**
   * Start writing the file's dirty pages back to the medium without waiting for them
   * (sync_file_range WRITE): the flush that must come later then waits for less, and the
   * writeback overlaps the work before it. Advisory: hosts that cannot leave it out, and a
   * failure is ignored (the flush still does it all).
   */
  startWriteback?(file: BlockFile): void;
  /**
   * Whether the process `pid` that named a temporary file (io/publish.ts) is gone. Hosts that
   * cannot tell leave it out, and their temporary files are never swept.
   */
  processGone?(pid: number): boolean;
  /** The user id files made here belong to (sweeping removes only such files), where known. */
  readonly uid?: number;
}

/** A stat call whose failures (other than "nothing there") name the path, never Node's text. */
function guarded(p: string, call: () => BigIntStats | undefined): BigIntStats | undefined {
  try {
    return call();
  } catch (e) {
    // ENOTDIR: a path through a file, which is nothing there as well.
    if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw ioError(e, p, 'stat');
  }
}

function statOf(st: BigIntStats | undefined): HostStat | undefined {
  if (st === undefined) return undefined;
  const kind = st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other';
  return { kind, size: Number(st.size), allocated: Number(st.blocks) * 512, id: `${st.dev}:${st.ino}`, uid: Number(st.uid) };
}

function fdOf(file: BlockFile): number | undefined {
  return file.fd;
}

/** The local machine: Node's fs, and libc for locks and holes. */
export const localFs: HostFs = {
  open(p, mode, name = p) {
    const file = mode === 'create' ? NodeBlockFile.createExclusive(p, name) : NodeBlockFile.open(p, mode === 'write', name);
    return { file, size: mode === 'create' ? 0 : file.size() };
  },
  stat(p) {
    return statOf(guarded(p, () => statSync(p, { bigint: true, throwIfNoEntry: false })));
  },
  lstat(p) {
    return statOf(guarded(p, () => lstatSync(p, { bigint: true, throwIfNoEntry: false })));
  },
  link(existing, newPath, name = newPath) {
    try {
      linkSync(existing, newPath);
    } catch (e) {
      throw ioError(e, name, 'create');
    }
  },
  rename(from, to) {
    try {
      renameSync(from, to);
    } catch (e) {
      throw ioError(e, to, 'create');
    }
  },
  unlink(p) {
    try {
      unlinkSync(p);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw ioError(e, p, 'remove');
    }
  },
  readdir(p) {
    try {
      return readdirSync(p);
    } catch (e) {
      throw ioError(e, p, 'read folder');
    }
  },
  mkdir(p) {
    try {
      mkdirSync(p, 0o700);
    } catch (e) {
      throw ioError(e, p, 'create');
    }
  },
  mkdtemp(prefix) {
    try {
      return mkdtempSync(prefix);
    } catch (e) {
      throw ioError(e, dirname(prefix), 'create a temporary folder in');
    }
  },
  removeTree(p) {
    rmSync(p, { recursive: true, force: true });
  },
  fsyncDir(p) {
    let fd: number | undefined;
    try {
      fd = openSync(p, 'r');
      fsyncSync(fd);
    } catch {
      // Some file systems do not allow fsync on folders; the entries are written all the same.
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  },
  lock(file, name, mode) {
    const fd = fdOf(file);
    if (fd === undefined) throw new Qcow2Error('UNSUPPORTED', `QEMU image locks need a local file: '${name}' is not one`, { file: name });
    return lockImage(fd, name, mode);
  },
  probeLock(file, name, mode) {
    const fd = fdOf(file);
    if (fd === undefined) throw new Qcow2Error('UNSUPPORTED', `QEMU image locks need a local file: '${name}' is not one`, { file: name });
    probeLock(fd, name, mode);
  },
  identity(file, name) {
    const fd = fdOf(file);
    if (fd === undefined) throw new Qcow2Error('UNSUPPORTED', `A file's identity needs a local file: '${name}' is not one`, { file: name });
    try {
      const st = fstatSync(fd, { bigint: true });
      return `${st.dev}:${st.ino}`;
    } catch (e) {
      throw ioError(e, name, 'stat');
    }
  },
  extent(file, offset, length, fileSize = file.size()) {
    return extentOfFd(fdOf(file), offset, length, fileSize);
  },
  punchHole(file, offset, length) {
    punchHoleFd(fdOf(file), file, offset, length);
  },
  startWriteback(file) {
    const fd = fdOf(file);
    if (fd !== undefined) libc()?.syncFileRange(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  },
  processGone(pid) {
    if (pid === process.pid) return false;
    try {
      process.kill(pid, 0);
      return false;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'ESRCH';
    }
  },
  uid: typeof process.geteuid === 'function' ? process.geteuid() : undefined,
};
