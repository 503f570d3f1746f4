// SFTP (OpenSSH's sftp-server, protocol 3) with pipelined requests: a read or write is split into
// requests of at most the server's limit (limits@openssh.com; 255 KiB for OpenSSH) and they are
// all sent before the first answer is awaited, up to a window of requests in flight. A batch of
// ranges (readMany / writeMany) costs one round trip, not one per range.
//
// Extensions are read from the server's VERSION packet:
// - posix-rename@openssh.com: rename() that replaces the target atomically (rename(2)).
// - hardlink@openssh.com: link(), which fails when the target exists: a publish that never
//   overwrites. Without it, renameNoReplace() uses the plain SSH_FXP_RENAME, which OpenSSH's
//   server carries out as link()+unlink() for regular files, so it does not replace either;
//   other servers may replace, so callers that must not overwrite need hardlink or an exec check.
// - fsync@openssh.com: fsync() of an open file. Without it, fsync() throws UNSUPPORTED, and data
//   is durable only when the host's page cache reaches the disk. There is no SFTP request that
//   syncs a directory.
// - statvfs@openssh.com: free space (optional).
// sftp-server reports EEXIST as a bare SSH_FX_FAILURE, so an exclusive create that fails is
// followed by a stat to tell "exists" from other failures.

import type { SFTPWrapper, Stats } from 'ssh2';
import { Qcow2Error } from '../../model/errors';

/** SSH_FXF_* open flags (draft-ietf-secsh-filexfer-02). */
const FXF = { READ: 0x01, WRITE: 0x02, CREAT: 0x08, TRUNC: 0x10, EXCL: 0x20 } as const;
/** SSH_FX_* status codes. */
const FX = { EOF: 1, NO_SUCH_FILE: 2, PERMISSION_DENIED: 3, FAILURE: 4, BAD_MESSAGE: 5, OP_UNSUPPORTED: 8 } as const;

/** Requests in flight at once per operation (each at most the server's read/write limit). */
const WINDOW = 64;

export type OpenMode = 'read' | 'read-write' | 'create-exclusive';

export interface SftpExtensions {
  posixRename: boolean;
  hardlink: boolean;
  fsync: boolean;
  statvfs: boolean;
}

export interface SftpLimits {
  /** Largest read one request may ask for. */
  maxReadLength: number;
  /** Largest write one request may carry. */
  maxWriteLength: number;
}

export interface RemoteStat {
  size: number;
  /** st_mode, type bits included. */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds. */
  mtime: number;
  isFile: boolean;
  isDirectory: boolean;
}

export interface StatVfs {
  blockSize: number;
  fragmentSize: number;
  blocks: number;
  freeBlocks: number;
  availableBlocks: number;
}

export interface ReadRange {
  offset: number;
  length: number;
}

export interface WriteRange {
  offset: number;
  data: Uint8Array;
}

function toStat(s: Stats): RemoteStat {
  return {
    size: s.size,
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    mtime: s.mtime,
    isFile: s.isFile(),
    isDirectory: s.isDirectory(),
  };
}

/** Run `tasks` with at most `limit` in flight; rejects with the first failure after all settle. */
async function windowed(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  let failure: unknown;
  const lane = async () => {
    while (next < tasks.length) {
      const t = tasks[next++]!;
      try {
        await t();
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, lane));
  if (failure !== undefined) throw failure;
}

/** Counters of one session, for tests and benchmarks. */
export interface SftpStats {
  /** Requests sent. */
  requests: number;
  /**
   * Times a request was sent while none was outstanding: the waits a lone caller pays, one per
   * round trip (requests sent together, or while others are in flight, share it).
   */
  roundTrips: number;
}

/** An SFTP session on one connection. */
export class Sftp {
  readonly extensions: SftpExtensions;
  readonly limits: SftpLimits;
  readonly stats: SftpStats = { requests: 0, roundTrips: 0 };
  private ended = false;
  private inflight = 0;

  /** @internal */
  constructor(
    private readonly sftp: SFTPWrapper,
    /** "user@host:port", for messages. */
    readonly label: string,
    private readonly lostReason: () => Qcow2Error | undefined,
  ) {
    // ssh2 keeps what the VERSION packet and limits@openssh.com said in these fields.
    const inner = sftp as unknown as { _extensions?: Record<string, string>; _maxReadLen?: number; _maxWriteLen?: number };
    const ext = inner._extensions ?? {};
    this.extensions = {
      posixRename: ext['posix-rename@openssh.com'] === '1',
      hardlink: ext['hardlink@openssh.com'] === '1',
      fsync: ext['fsync@openssh.com'] === '1',
      statvfs: ext['statvfs@openssh.com'] === '2',
    };
    this.limits = { maxReadLength: inner._maxReadLen ?? 32 * 1024, maxWriteLength: inner._maxWriteLen ?? 32 * 1024 };
    // ssh2 queues requests on a closed channel without sending or failing them: refuse them here.
    sftp.once('close', () => (this.ended = true));
  }

  /** @internal The error for a request on a session that has ended, or undefined while it is up. */
  gone(op: string, path: string): Qcow2Error | undefined {
    if (!this.ended && this.lostReason() === undefined) return undefined;
    return this.fail(new Error('session ended'), op, path);
  }

  /** A readable name for a remote path in messages. */
  where(path: string): string {
    return `${this.label}:${path}`;
  }

  /** @internal Count a request going out; call the returned function when its answer is in. */
  sent(): () => void {
    this.stats.requests++;
    if (this.inflight++ === 0) this.stats.roundTrips++;
    let done = false;
    return () => {
      if (!done) {
        done = true;
        this.inflight--;
      }
    };
  }

  /** @internal Translate an ssh2 failure into our error. */
  fail(e: unknown, op: string, path: string): Qcow2Error {
    if (Qcow2Error.isInstance(e)) return e;
    const file = this.where(path);
    const code = (e as { code?: unknown })?.code;
    if (typeof code !== 'number') {
      return new Qcow2Error(
        'CONNECTION',
        `Lost the connection to ${this.label} during SFTP ${op} of '${path}'. The operation did not complete; retry when the host is reachable.`,
        { file, cause: this.lostReason() ?? e },
      );
    }
    switch (code) {
      case FX.NO_SUCH_FILE:
        return new Qcow2Error('NOT_FOUND', `Could not ${op} '${file}': No such file or directory`, { file, cause: e });
      case FX.PERMISSION_DENIED:
        return new Qcow2Error('IO', `Could not ${op} '${file}': Permission denied (user ${this.label.split('@')[0]} on the host)`, { file, cause: e });
      case FX.OP_UNSUPPORTED:
        return new Qcow2Error('UNSUPPORTED', `Could not ${op} '${file}': the host's SFTP server does not support it`, { file, cause: e });
      default:
        return new Qcow2Error('IO', `Could not ${op} '${file}': the host's SFTP server reported a failure`, { file, cause: e });
    }
  }

  private call<T>(op: string, path: string, run: (cb: (err: Error | null | undefined, v?: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const gone = this.gone(op, path);
      if (gone !== undefined) return reject(gone);
      const answered = this.sent();
      try {
        run((err, v) => {
          answered();
          if (err) reject(this.fail(err, op, path));
          else resolve(v as T);
        });
      } catch (e) {
        answered();
        reject(this.fail(e, op, path));
      }
    });
  }

  /** Stat a path (following symlinks); NOT_FOUND when it does not exist. */
  stat(path: string): Promise<RemoteStat> {
    return this.call<Stats>('stat', path, (cb) => this.sftp.stat(path, cb)).then(toStat);
  }

  /** Stat a path, or undefined when it does not exist. */
  async statIfExists(path: string): Promise<RemoteStat | undefined> {
    try {
      return await this.stat(path);
    } catch (e) {
      if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') return undefined;
      throw e;
    }
  }

  /**
   * Open a file. 'create-exclusive' creates it with `mode` and fails with EXISTS when the path
   * exists (never opening, truncating or following what is there).
   */
  async open(path: string, how: OpenMode, mode = 0o644): Promise<SftpFile> {
    const flags =
      how === 'read' ? FXF.READ : how === 'read-write' ? FXF.READ | FXF.WRITE : FXF.READ | FXF.WRITE | FXF.CREAT | FXF.EXCL;
    const op = how === 'create-exclusive' ? 'create' : 'open';
    let handle: Buffer | undefined;
    const open = async () => {
      handle = await this.call<Buffer>(op, path, (cb) => this.sftp.open(path, flags, { mode }, cb));
    };
    await (how === 'create-exclusive' ? this.noClobber(path, open) : open());
    return new SftpFile(this, this.sftp, handle!, path, how !== 'read');
  }

  /** Stat a path without following a final symlink. */
  lstat(path: string): Promise<RemoteStat> {
    return this.call<Stats>('stat', path, (cb) => this.sftp.lstat(path, cb)).then(toStat);
  }

  /** Whether anything (a dangling symlink included) is at `path`; false when that cannot be told. */
  private async existsQuietly(path: string): Promise<boolean> {
    try {
      await this.lstat(path);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Run a request that must not replace `target`; sftp-server reports EEXIST as a bare failure,
   * so a failure with something at `target` becomes EXISTS.
   */
  private async noClobber(target: string, run: () => Promise<void>): Promise<void> {
    try {
      await run();
    } catch (e) {
      if (Qcow2Error.isInstance(e) && e.code === 'IO' && (await this.existsQuietly(target))) {
        throw new Qcow2Error('EXISTS', `${this.where(target)}: file exists; refusing to overwrite it`, { file: this.where(target), cause: e });
      }
      throw e;
    }
  }

  /** rename(2) through posix-rename@openssh.com: replaces `to` atomically. UNSUPPORTED without the extension. */
  rename(from: string, to: string): Promise<void> {
    if (!this.extensions.posixRename) {
      return Promise.reject(new Qcow2Error('UNSUPPORTED', `${this.label}'s SFTP server has no posix-rename@openssh.com: cannot replace '${to}' atomically`));
    }
    return this.call<void>('rename', from, (cb) => this.sftp.ext_openssh_rename(from, to, cb));
  }

  /**
   * The plain SSH_FXP_RENAME. OpenSSH's server never replaces an existing `to` with it (EXISTS
   * then); other servers may.
   */
  renameNoReplace(from: string, to: string): Promise<void> {
    return this.noClobber(to, () => this.call<void>('rename', from, (cb) => this.sftp.rename(from, to, cb)));
  }

  /** link(2) through hardlink@openssh.com: EXISTS when `to` exists. UNSUPPORTED without the extension. */
  async link(from: string, to: string): Promise<void> {
    if (!this.extensions.hardlink) {
      throw new Qcow2Error('UNSUPPORTED', `${this.label}'s SFTP server has no hardlink@openssh.com`);
    }
    return this.noClobber(to, () => this.call<void>('link', from, (cb) => this.sftp.ext_openssh_hardlink(from, to, cb)));
  }

  unlink(path: string): Promise<void> {
    return this.call<void>('remove', path, (cb) => this.sftp.unlink(path, cb));
  }

  mkdir(path: string, mode = 0o755): Promise<void> {
    return this.call<void>('create folder', path, (cb) => this.sftp.mkdir(path, { mode }, cb));
  }

  rmdir(path: string): Promise<void> {
    return this.call<void>('remove folder', path, (cb) => this.sftp.rmdir(path, cb));
  }

  /** The names in a folder (without . and ..). */
  readdir(path: string): Promise<string[]> {
    return this.call<{ filename: string }[]>('list', path, (cb) => this.sftp.readdir(path, cb)).then((l) =>
      l.map((x) => x.filename).filter((n) => n !== '.' && n !== '..'),
    );
  }

  /** The canonical absolute path (the server resolves symlinks and ..). */
  realpath(path: string): Promise<string> {
    return this.call<string>('resolve', path, (cb) => this.sftp.realpath(path, cb));
  }

  /** Free space of the file system holding `path`, or undefined without statvfs@openssh.com. */
  async statvfs(path: string): Promise<StatVfs | undefined> {
    if (!this.extensions.statvfs) return undefined;
    type Raw = Record<'f_bsize' | 'f_frsize' | 'f_blocks' | 'f_bfree' | 'f_bavail', number | bigint | string>;
    const s = await this.call<Raw>('statvfs', path, (cb) => this.sftp.ext_openssh_statvfs(path, cb as never));
    return {
      blockSize: Number(s.f_bsize),
      fragmentSize: Number(s.f_frsize),
      blocks: Number(s.f_blocks),
      freeBlocks: Number(s.f_bfree),
      availableBlocks: Number(s.f_bavail),
    };
  }
}

/** An open remote file. Offsets must stay below 2^53. */
export class SftpFile {
  private closed = false;

  /** @internal */
  constructor(
    private readonly session: Sftp,
    private readonly sftp: SFTPWrapper,
    private readonly handle: Buffer,
    readonly path: string,
    readonly writable: boolean,
  ) {}

  private call<T>(op: string, run: (cb: (err: Error | null | undefined, v?: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new Qcow2Error('IO', `${this.session.where(this.path)} was closed`));
      const gone = this.session.gone(op, this.path);
      if (gone !== undefined) return reject(gone);
      const answered = this.session.sent();
      try {
        run((err, v) => {
          answered();
          if (err) reject(this.session.fail(err, op, this.path));
          else resolve(v as T);
        });
      } catch (e) {
        answered();
        reject(this.session.fail(e, op, this.path));
      }
    });
  }

  /** Read `length` bytes at `offset`; bytes past the end read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    return (await this.readMany([{ offset, length }]))[0]!;
  }

  /** Read several ranges with all requests pipelined (one round trip for a batch that fits the window). */
  async readMany(ranges: readonly ReadRange[]): Promise<Buffer[]> {
    const max = this.session.limits.maxReadLength;
    const outs = ranges.map((r) => Buffer.alloc(r.length));
    const tasks: (() => Promise<void>)[] = [];
    ranges.forEach((r, i) => {
      for (let done = 0; done < r.length; done += max) {
        const at = done;
        const len = Math.min(max, r.length - done);
        tasks.push(() => this.readInto(outs[i]!, at, len, r.offset + at));
      }
    });
    await windowed(tasks, WINDOW);
    return outs;
  }

  /** Fill buf[off, off+len) from `position`, following short reads; stops (zeros) at end of file. */
  private async readInto(buf: Buffer, off: number, len: number, position: number): Promise<void> {
    while (len > 0) {
      const n = await this.call<number>('read', (cb) => this.sftp.read(this.handle, buf, off, len, position, (err, bytes) => cb(err, bytes)));
      if (n === 0) return;
      off += n;
      len -= n;
      position += n;
    }
  }

  /** Write `data` at `offset`. */
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.writeMany([{ offset, data }]);
  }

  /** Write several ranges with all requests pipelined. The caller keeps the data unchanged until this settles. */
  async writeMany(writes: readonly WriteRange[]): Promise<void> {
    const max = this.session.limits.maxWriteLength;
    const tasks: (() => Promise<void>)[] = [];
    for (const w of writes) {
      const buf = Buffer.isBuffer(w.data) ? w.data : Buffer.from(w.data.buffer, w.data.byteOffset, w.data.byteLength);
      for (let done = 0; done < buf.length; done += max) {
        const at = done;
        const len = Math.min(max, buf.length - done);
        tasks.push(() => this.call<void>('write', (cb) => this.sftp.write(this.handle, buf, at, len, w.offset + at, (err) => cb(err))));
      }
    }
    await windowed(tasks, WINDOW);
  }

  stat(): Promise<RemoteStat> {
    return this.call<Stats>('stat', (cb) => this.sftp.fstat(this.handle, cb)).then(toStat);
  }

  /** Set the file's size (ftruncate). */
  truncate(size: number): Promise<void> {
    return this.call<void>('truncate', (cb) => this.sftp.fsetstat(this.handle, { size }, cb));
  }

  /** fsync(2) through fsync@openssh.com; UNSUPPORTED without the extension. */
  fsync(): Promise<void> {
    if (!this.session.extensions.fsync) {
      return Promise.reject(
        new Qcow2Error('UNSUPPORTED', `${this.session.label}'s SFTP server has no fsync@openssh.com: cannot make ${this.path} durable`),
      );
    }
    return this.call<void>('sync', (cb) => this.sftp.ext_openssh_fsync(this.handle, cb));
  }

  /** Close the handle (idempotent). */
  async close(): Promise<void> {
    if (this.closed) return;
    const p = this.call<void>('close', (cb) => this.sftp.close(this.handle, cb));
    this.closed = true;
    await p;
  }
}
