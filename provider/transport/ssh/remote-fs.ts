// A remote host's files for the format engine: every HostFs and BlockFile operation
// (provider/qcow2/io/hostfs.ts) as an asynchronous call over one pooled SSH connection. Bytes go
// through SFTP (pipelined reads and writes; fsync@openssh.com for durability; hardlink@openssh.com
// to publish a new file without ever replacing one); what SFTP protocol 3 cannot say (a file's
// identity and allocated blocks, data and hole extents, fsync of a folder) and QEMU's image locks
// come from the host helper (lock.ts). The native engine's worker threads reach this through the
// bridge (transport/remote/), one call per method; the qemu-img engine calls it directly.
//
// Round trips: open brings the file's first cluster and its size in the same exchange (open, then
// read + fstat pipelined; a larger first cluster costs one more), and asks the helper for the
// allocated size in parallel with the open, so reading an image's facts costs 2 SFTP round trips.
// A close is not waited for.
//
// Writes of up to 1 MiB are sent behind (write-behind): write() answers once its bytes are copied
// (into reused buffers) and sent, up to WRITE_BEHIND_BYTES in flight per host, so the engine
// prepares the next bytes while these travel; a larger write is sent from the caller's buffer and
// waited for, as it pays for its own round trip.
// Every other call on the same file (read, truncate, sync, close, allocation, extents, locks) first
// waits for the file's writes and fails with the first of them that failed; a close still closes
// and releases the locks, after the writes, then reports the failure. Calls by name (stat, link,
// rename, unlink, folders, exec) wait for the writes of every open file first, so a publication
// never overtakes the bytes it publishes, and a lock is never released with writes still on the way.
//
// Without the helper (no perl on the host): locks fail (changes are refused, UNSUPPORTED), a
// file's identity is its size, mode and times (only used to undo a failed publication), its
// allocation is its length rounded up to 4 KiB, it is all data (no holes found), and folders are
// not fsynced.

import { randomBytes } from 'crypto';
import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import { notRegular } from '../../qcow2/io/blockfile';
import type { LockMode } from '../../qcow2/io/lock';
import type { BridgeHandler, BridgeReply } from '../bridge';
import { OPEN_HEAD_BYTES, REMOTE_FS_METHODS, type LockAnswer, type OpenAnswer, type RemoteFsMethod } from '../remote/protocol';
import { ConnectionArgs, ResolvedConnection, resolveConnection } from './connection';
import { HelperExtent, HelperStat, HostHelper, RemoteImageLock } from './lock';
import { ExecOptions, ExecResult, SshConnection, SshPool, sshPool } from './pool';
import type { Sftp, SftpFile } from './sftp';

export type RemoteOpenMode = 'read' | 'write' | 'create';

/** A stat as HostFs reports it. */
export type RemoteFileStat = HelperStat;

interface Handle {
  handle: number;
  /** Writes sent and not yet answered. */
  inFlight: Set<Promise<void>>;
  /** The first of them that failed, until a call on this file reports it. */
  failed?: unknown;
  /** Failures reported so far: a write sent before a report that fails after it is the same failure, not reported again. */
  reports: number;
  /** The SFTP handle; a read-only file opened through the helper gets one on its first read past the head. */
  file?: SftpFile | Promise<SftpFile>;
  path: string;
  writable: boolean;
  locks: Set<number>;
}

const QCOW_MAGIC = 0x514649fb;
/** Bytes of writes in flight per host before write() waits for the oldest (see the header). */
const WRITE_BEHIND_BYTES = 4 << 20;
/** Size of the buffers writes are sent behind from (reused); a larger write is sent from its own and waited for. */
const SPARE_BYTES = 1 << 20;
/** Reads of a first cluster beyond this are not brought along with an open (qcow2's largest is 2 MiB). */
const MAX_HEAD = 2 << 20;

/** A file's allocation when the host cannot say: its length in whole 4 KiB blocks. */
export function approximateAllocation(size: number): number {
  return Math.ceil(size / 4096) * 4096;
}

/** The error `e` (about `path`) re-worded to name `name`: never a temporary name in a message. */
function named(e: unknown, where: Pick<Sftp, 'where'>, filePath: string, name: string): unknown {
  if (!Qcow2Error.isInstance(e) || filePath === name) return e;
  const from = where.where(filePath);
  const to = where.where(name);
  return new Qcow2Error(e.code, e.message.split(from).join(to), { file: to, cause: e, ...(e.property !== undefined ? { property: e.property } : {}) });
}

let nextPoolId = 0;
const poolIds = new WeakMap<SshPool, number>();
const hosts = new Map<string, RemoteFs>();

/** One remote host's files, reached through a pooled connection. */
export class RemoteFs {
  /** Identifies this host and its credentials in this process (never a secret). */
  readonly id: string;
  private lease?: Promise<SshConnection>;
  private users = 0;
  private readonly handles = new Map<number, Handle>();
  private readonly locks = new Map<number, { lock: RemoteImageLock; handle: number }>();
  private nextHandle = 1;
  private helperMissing?: Qcow2Error;
  /** Bytes of all files' writes in flight. */
  private writeBehind = 0;
  /** Buffers of finished writes, for the next ones' copies. */
  private readonly spare: Buffer[] = [];

  /** @internal use remoteFs() */
  constructor(readonly pool: SshPool, readonly rc: ResolvedConnection, id: string) {
    this.id = id;
  }

  /** "user@host:port". */
  get label(): string {
    return this.rc.label;
  }

  // -------------------------------------------------------------------------------------------
  // The connection: leased while a call runs or a file or lock is open, then left to the pool
  // (which closes it once idle).

  private async use<T>(fn: (c: SshConnection) => Promise<T>): Promise<T> {
    this.users++;
    try {
      return await fn(await this.connection());
    } finally {
      this.users--;
      this.maybeRelease();
    }
  }

  private async connection(): Promise<SshConnection> {
    if (this.lease !== undefined) {
      const c = await this.lease.catch(() => undefined);
      if (c?.alive) return c;
      c?.release();
      this.lease = undefined;
    }
    const p = this.pool.connectResolved(this.rc);
    this.lease = p;
    p.catch(() => {
      if (this.lease === p) this.lease = undefined;
    });
    return p;
  }

  private maybeRelease(): void {
    if (this.users > 0 || this.handles.size > 0 || this.locks.size > 0 || this.lease === undefined) return;
    const p = this.lease;
    this.lease = undefined;
    void p.then((c) => c.release(), () => undefined);
  }

  /**
   * Dial now, and start the SFTP session and the host helper, in the background: a first
   * operation then finds them ready (each costs the host's login shell starting). Failures are
   * left for that operation to report.
   */
  prepare(): void {
    void this.use(async (c) => {
      await Promise.all([c.sftp(), this.helped(c, (h) => h.ready())]);
    }).catch(() => undefined);
  }

  private helper(c: SshConnection): HostHelper | undefined {
    return this.helperMissing === undefined ? HostHelper.of(c) : undefined;
  }

  /** Run a helper request; undefined when the host has no helper (no perl), remembered. */
  private async helped<T>(c: SshConnection, fn: (h: HostHelper) => Promise<T>): Promise<T | undefined> {
    const h = this.helper(c);
    if (h === undefined) return undefined;
    try {
      return await fn(h);
    } catch (e) {
      if (Qcow2Error.isInstance(e) && e.code === 'UNSUPPORTED' && /perl is not installed|supported on 64-bit Linux only/.test(e.message)) {
        this.helperMissing = e;
        return undefined;
      }
      throw e;
    }
  }

  private handle(h: number): Handle {
    const x = this.handles.get(h);
    if (x === undefined) throw new Qcow2Error('IO', `A file on ${this.label} was used after it was closed`);
    return x;
  }

  // -------------------------------------------------------------------------------------------
  // Files

  /**
   * Open `filePath`: 'read' and 'write' an existing file, 'create' a new one (EXISTS if anything
   * is there). Answers the handle and size, and (read, write) the file's first bytes: its first
   * cluster when it is a qcow2 image, else OPEN_HEAD_BYTES. Errors name `name`.
   */
  async open(filePath: string, mode: RemoteOpenMode, name = filePath): Promise<{ answer: OpenAnswer; head?: Buffer }> {
    return this.use(async (c) => {
      if (mode === 'read') {
        // One request to the helper: the file's size, identity, allocation and first cluster. The
        // SFTP handle is opened only if something past the head is read.
        const where = { where: (p: string) => `${this.label}:${p}` };
        let viaHelper;
        try {
          viaHelper = await this.helped(c, (h) => h.head(filePath, OPEN_HEAD_BYTES));
        } catch (e) {
          throw named(e, where, filePath, name);
        }
        if (viaHelper !== undefined) {
          if ('notRegular' in viaHelper) throw notRegular(where.where(name));
          const handle = this.nextHandle++;
          this.handles.set(handle, { handle, path: filePath, writable: false, locks: new Set(), inFlight: new Set(), reports: 0 });
          return { answer: { handle, size: viaHelper.size, allocated: viaHelper.allocated, id: viaHelper.id }, head: viaHelper.head };
        }
      }
      // The helper's stat runs beside the open: the allocated size costs no round trip of its own.
      const allocated = mode === 'read' ? this.helped(c, (h) => h.stat(filePath)).catch(() => undefined) : undefined;
      const sftp = await c.sftp();
      let file: SftpFile;
      try {
        file = await sftp.open(filePath, mode === 'create' ? 'create-exclusive' : mode === 'write' ? 'read-write' : 'read', 0o644);
      } catch (e) {
        throw named(e, sftp, filePath, name);
      }
      let size = 0;
      let head: Buffer | undefined;
      try {
        if (mode !== 'create') {
          const [st, first] = await Promise.all([file.stat(), file.read(0, OPEN_HEAD_BYTES)]);
          size = st.size;
          head = first.subarray(0, Math.min(size, first.length));
          const bits = head.length >= 24 && head.readUInt32BE(0) === QCOW_MAGIC ? head.readUInt32BE(20) : 0;
          const cluster = bits >= 9 && bits <= 21 ? 2 ** bits : 0;
          if (cluster > head.length && size > head.length && cluster <= MAX_HEAD) {
            const rest = await file.read(head.length, Math.min(cluster, size) - head.length);
            head = Buffer.concat([head, rest]);
          }
        }
      } catch (e) {
        void file.close().catch(() => undefined);
        throw named(e, sftp, filePath, name);
      }
      // A new file is a temporary one until published: the helper removes it if we vanish first.
      if (mode === 'create') await this.helped(c, (h) => h.own(filePath)).catch(() => undefined);
      const handle = this.nextHandle++;
      this.handles.set(handle, { handle, file, path: filePath, writable: mode !== 'read', locks: new Set(), inFlight: new Set(), reports: 0 });
      const st = await allocated;
      const answer: OpenAnswer = { handle, size };
      if (mode === 'read') answer.allocated = st !== undefined ? st.allocated : approximateAllocation(size);
      if (st !== undefined) answer.id = st.id;
      return { answer, ...(head !== undefined ? { head } : {}) };
    });
  }

  /** The SFTP handle of an open file (opened now for a read-only file the helper opened). */
  private async sftpFile(h: Handle): Promise<SftpFile> {
    if (h.file === undefined) {
      const p = this.use(async (c) => (await c.sftp()).open(h.path, 'read', 0o644));
      h.file = p;
      p.then((f) => {
        if (this.handles.get(h.handle) === h) h.file = f;
        else void f.close().catch(() => undefined); // closed meanwhile
      }, () => {
        if (h.file === p) h.file = undefined;
      });
    }
    return h.file;
  }

  /** `length` bytes at `offset`; past the end, zeros. */
  async read(handle: number, offset: number, length: number): Promise<Buffer> {
    const h = this.handle(handle);
    await this.settle(h);
    return this.use(async () => (await this.sftpFile(h)).read(offset, length));
  }

  /** Refuse to change a file whose write lock was lost (the helper or the connection ended). */
  private checkLocks(h: Handle): void {
    for (const id of h.locks) {
      const l = this.locks.get(id)?.lock;
      if (l !== undefined && !l.held) {
        throw new Qcow2Error('CONNECTION', `The image lock on ${this.label}:${h.path} was lost (the connection or its helper ended); nothing more was written`, { file: `${this.label}:${h.path}` });
      }
    }
  }

  /** Send a write and answer (write-behind, see the header); its failure is reported by the file's next call. */
  async write(handle: number, offset: number, data: Uint8Array): Promise<void> {
    const h = this.handle(handle);
    this.checkLocks(h);
    this.reportFailure(h);
    if (data.length > SPARE_BYTES) {
      // A write this large pays for its own round trip: sent from the caller's buffer, waited for
      // (no copy, and no more of it queued in the SSH channel than before).
      await this.settle(h);
      await this.use(async () => (await this.sftpFile(h)).write(offset, data));
      return;
    }
    // The caller's buffer is reused once this answers: the bytes travel in a copy, in a buffer
    // of an earlier write when one is free (no new memory per write for the collector to find).
    const buf = this.spare.pop() ?? Buffer.allocUnsafeSlow(SPARE_BYTES);
    buf.set(data);
    const bytes = buf.subarray(0, data.length);
    this.writeBehind += bytes.length;
    const reports = h.reports;
    const sent: Promise<void> = this.use(async () => (await this.sftpFile(h)).write(offset, bytes))
      .catch((e: unknown) => {
        if (!('failed' in h) && h.reports === reports) h.failed = e;
      })
      .finally(() => {
        h.inFlight.delete(sent);
        this.writeBehind -= bytes.length;
        // SFTP has copied the bytes into its packets by now: the buffer is free.
        if ((this.spare.length + 1) * SPARE_BYTES <= WRITE_BEHIND_BYTES + SPARE_BYTES) this.spare.push(buf);
      });
    h.inFlight.add(sent);
    while (this.writeBehind > WRITE_BEHIND_BYTES && h.inFlight.size > 0) await Promise.race(h.inFlight);
    this.reportFailure(h);
  }

  /** Throw (once) the first failed write of `h`. */
  private reportFailure(h: Handle): void {
    if (!('failed' in h)) return;
    const e = h.failed;
    delete h.failed;
    h.reports++;
    throw e;
  }

  /** Wait for `h`'s writes; then throw the first that failed, if `report`. */
  private async settle(h: Handle, report = true): Promise<void> {
    while (h.inFlight.size > 0) await Promise.all([...h.inFlight]);
    if (report) this.reportFailure(h);
  }

  /** Wait for every open file's writes (their failures stay with their files). */
  private async settleAll(): Promise<void> {
    for (const h of [...this.handles.values()]) await this.settle(h, false);
  }

  /** use(), once every write sent is answered: for the calls by name. */
  private async useSettled<T>(fn: (c: SshConnection) => Promise<T>): Promise<T> {
    await this.settleAll();
    return this.use(fn);
  }

  async truncate(handle: number, size: number): Promise<void> {
    const h = this.handle(handle);
    await this.settle(h);
    this.checkLocks(h);
    await this.use(async () => (await this.sftpFile(h)).truncate(size));
  }

  /** fsync(2) through fsync@openssh.com; UNSUPPORTED when the server lacks it (nothing is promised durable then). */
  async sync(handle: number): Promise<void> {
    const h = this.handle(handle);
    await this.settle(h);
    this.checkLocks(h);
    await this.use(async () => (await this.sftpFile(h)).fsync());
  }

  /** Release the file's locks (waited for) and close it (not waited for). */
  async close(handle: number): Promise<void> {
    const h = this.handles.get(handle);
    if (h === undefined) return;
    await this.settle(h, false);
    try {
      for (const id of [...h.locks]) await this.unlock(id);
    } finally {
      this.handles.delete(handle);
      if (h.file !== undefined) void Promise.resolve(h.file).then((f) => f.close()).catch(() => undefined);
      this.maybeRelease();
    }
    this.reportFailure(h);
  }

  /** Bytes allocated for the file on the host (its length rounded up to 4 KiB without the helper). */
  async allocated(handle: number): Promise<number> {
    const h = this.handle(handle);
    await this.settle(h);
    return this.use(async (c) => {
      const st = await this.helped(c, (x) => x.stat(h.path));
      return st !== undefined ? st.allocated : approximateAllocation((await (await this.sftpFile(h)).stat()).size);
    });
  }

  /** Extents of [offset, offset+length) clipped to the file's size (all data without the helper). */
  async extents(handle: number, offset: number, length: number, max = 256): Promise<HelperExtent[]> {
    const h = this.handle(handle);
    await this.settle(h);
    return this.use(async (c) => {
      const e = await this.helped(c, (x) => x.extents(h.path, offset, length, max));
      if (e !== undefined) return e;
      const size = (await (await this.sftpFile(h)).stat()).size;
      return offset < size ? [{ offset, length: Math.min(length, size - offset), data: true }] : [];
    });
  }

  /** The identity ("dev:ino") of an open file's path; without the helper, stat's stand-in (see stat). */
  async identity(handle: number): Promise<string> {
    const h = this.handle(handle);
    const st = await this.stat(h.path);
    if (st === undefined) throw new Qcow2Error('NOT_FOUND', `Could not open '${h.path}': No such file or directory`, { file: `${this.label}:${h.path}` });
    return st.id;
  }

  // -------------------------------------------------------------------------------------------
  // Names

  /** stat(2) (lstat(2) with follow false); undefined when nothing is there. */
  async stat(filePath: string, follow = true): Promise<RemoteFileStat | undefined> {
    return this.useSettled(async (c) => {
      const viaHelper = await this.helped(c, (h) => h.stat(filePath, follow).then((s) => ({ s })));
      if (viaHelper !== undefined) return viaHelper.s;
      const sftp = await c.sftp();
      let st;
      try {
        st = follow ? await sftp.stat(filePath) : await sftp.lstat(filePath);
      } catch (e) {
        if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') return undefined;
        throw e;
      }
      const type = st.mode & 0o170000;
      return {
        kind: type === 0o100000 ? 'file' : type === 0o040000 ? 'directory' : type === 0o120000 ? 'symlink' : 'other',
        size: st.size,
        allocated: approximateAllocation(st.size),
        // No inode over SFTP: what identifies the file well enough to undo our own link.
        id: `sftp:${st.size}:${st.mode}:${st.uid}:${st.gid}:${st.mtime}`,
      };
    });
  }

  /**
   * A second name `newPath` for `existing`, never replacing anything there (EXISTS): link(2)
   * through hardlink@openssh.com, else the plain SFTP rename, which OpenSSH's server carries out
   * as link(2) + unlink(2) (the temporary name is then gone already).
   */
  async link(existing: string, newPath: string, name = newPath): Promise<void> {
    await this.useSettled(async (c) => {
      const sftp = await c.sftp();
      try {
        if (sftp.extensions.hardlink) await sftp.link(existing, newPath);
        else await sftp.renameNoReplace(existing, newPath);
      } catch (e) {
        throw named(e, sftp, newPath, name);
      }
    });
  }

  /** rename(2), replacing `to`: posix-rename@openssh.com (UNSUPPORTED without it). */
  async rename(from: string, to: string): Promise<void> {
    await this.useSettled(async (c) => {
      await (await c.sftp()).rename(from, to);
      await this.disowned(c, from);
    });
  }

  /** `p` is gone from its temporary name (published or removed): the helper must not remove it. */
  private async disowned(c: SshConnection, p: string): Promise<void> {
    await this.helped(c, (h) => h.forget(p)).catch(() => undefined);
  }

  /** unlink(2); false when nothing was there. */
  async unlink(filePath: string): Promise<boolean> {
    return this.useSettled(async (c) => {
      try {
        await (await c.sftp()).unlink(filePath);
        await this.disowned(c, filePath);
        return true;
      } catch (e) {
        if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') {
          await this.disowned(c, filePath);
          return false;
        }
        throw e;
      }
    });
  }

  /**
   * The regular files of a folder with their identities and stored backing names (engines/chain.ts's
   * dependents scan), at most `max` entries read: one helper request; without the helper, a
   * listing and a look at each file.
   */
  async scan(dir: string, max: number): Promise<{ files: Array<{ name: string; id: string; backing?: string }>; truncated: boolean }> {
    return this.useSettled(async (c) => {
      const viaHelper = await this.helped(c, (h) => h.scan(dir, max));
      if (viaHelper !== undefined) return viaHelper;
      const names = await this.readdir(dir);
      const files: Array<{ name: string; id: string; backing?: string }> = [];
      for (const name of names.slice(0, max)) {
        const p = path.posix.join(dir, name);
        if ((await this.stat(p).catch(() => undefined))?.kind !== 'file') continue;
        const { answer, head } = await this.open(p, 'read').catch(() => ({ answer: undefined, head: undefined }));
        if (answer === undefined) continue;
        void this.close(answer.handle);
        const h = head ?? Buffer.alloc(0);
        let backing: string | undefined;
        if (h.length >= 20 && h.readUInt32BE(0) === QCOW_MAGIC) {
          const off = Number(h.readBigUInt64BE(8)), len = h.readUInt32BE(16);
          if (off > 0 && len > 0 && len <= 1023 && off + len <= h.length) backing = h.subarray(off, off + len).toString('utf8');
        }
        files.push({ name, id: answer.id ?? (await this.stat(p))?.id ?? '', ...(backing !== undefined ? { backing } : {}) });
      }
      return { files, truncated: names.length > max };
    });
  }

  async readdir(filePath: string): Promise<string[]> {
    return this.useSettled(async (c) => (await c.sftp()).readdir(filePath));
  }

  async mkdir(filePath: string): Promise<void> {
    await this.useSettled(async (c) => (await c.sftp()).mkdir(filePath, 0o700));
  }

  /** A new folder `prefix` + a unique suffix (mode 0700), as mkdtemp(3). */
  async mkdtemp(prefix: string): Promise<string> {
    return this.useSettled(async (c) => {
      const sftp = await c.sftp();
      for (let attempt = 0; ; attempt++) {
        const dir = `${prefix}${randomBytes(6).toString('base64url')}`;
        try {
          await sftp.mkdir(dir, 0o700);
          await this.helped(c, (h) => h.own(dir)).catch(() => undefined);
          return dir;
        } catch (e) {
          // sftp-server reports EEXIST as a bare failure: try another name while one is there.
          if (attempt < 8 && Qcow2Error.isInstance(e) && e.code === 'IO' && (await sftp.statIfExists(dir)) !== undefined) continue;
          // The reason only: the SFTP error names the temporary folder, which the user never chose.
          const message = (e as Error).message;
          const quoted = message.startsWith('Could not ') ? message.lastIndexOf("': ") : -1;
          const reason = quoted < 0 ? message : message.slice(quoted + 3);
          throw new Qcow2Error(Qcow2Error.isInstance(e) ? e.code : 'IO',
            `Could not create a temporary folder in '${sftp.where(path.posix.dirname(prefix))}': ${reason}`,
            { file: sftp.where(path.posix.dirname(prefix)), cause: e });
        }
      }
    });
  }

  /** Remove a folder and everything in it; nothing there is not an error. */
  async removeTree(filePath: string): Promise<void> {
    await this.useSettled(async (c) => {
      const sftp = await c.sftp();
      const remove = async (p: string): Promise<void> => {
        const st = await sftp.lstat(p).catch(() => undefined);
        if (st === undefined) return;
        if (!st.isDirectory) {
          await sftp.unlink(p).catch(() => undefined);
          return;
        }
        const names = await sftp.readdir(p).catch(() => [] as string[]);
        await Promise.all(names.map((n) => remove(path.posix.join(p, n))));
        await sftp.rmdir(p).catch(() => undefined);
      };
      await remove(filePath);
      await this.disowned(c, filePath);
    });
  }

  /** fsync(2) a folder through the helper; skipped where the host has none (SFTP cannot). */
  async fsyncDir(filePath: string): Promise<void> {
    await this.useSettled(async (c) => {
      try {
        await this.helped(c, (h) => h.fsyncDir(filePath));
      } catch {
        // As locally: some file systems refuse fsync on folders; the entries are written all the same.
      }
    });
  }

  /** Run `argv` on the host, each argument quoted by quote.ts (SshConnection.exec). */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.useSettled((c) => c.exec(argv, opts));
  }

  // -------------------------------------------------------------------------------------------
  // QEMU's locks, held by the helper on the file's path while the file stays open here

  async lock(handle: number, mode: LockMode): Promise<LockAnswer> {
    const h = this.handle(handle);
    await this.settle(h);
    return this.use(async (c) => {
      const helper = this.helper(c);
      if (helper === undefined) throw this.helperMissing!;
      let lock: RemoteImageLock;
      try {
        lock = await helper.lock(h.path, mode);
      } catch (e) {
        if (Qcow2Error.isInstance(e) && e.code === 'UNSUPPORTED' && /perl is not installed|supported on 64-bit Linux only/.test(e.message)) this.helperMissing = e;
        throw e;
      }
      const id = this.nextHandle++;
      this.locks.set(id, { lock, handle });
      h.locks.add(id);
      return { id, bytes: [...lock.bytes] };
    });
  }

  async lockChange(id: number, mode: LockMode): Promise<LockAnswer> {
    const l = this.locks.get(id);
    if (l === undefined) throw new Qcow2Error('INVALID_OPTION', `image lock ${id} on ${this.label} was released`);
    const h = this.handles.get(l.handle);
    if (h !== undefined) await this.settle(h);
    await this.use(() => l.lock.change(mode));
    return { id, bytes: [...l.lock.bytes] };
  }

  async unlock(id: number): Promise<void> {
    const l = this.locks.get(id);
    if (l === undefined) return;
    const h = this.handles.get(l.handle);
    if (h !== undefined) await this.settle(h, false);
    if (!this.locks.has(id)) return;
    this.locks.delete(id);
    this.handles.get(l.handle)?.locks.delete(id);
    try {
      await l.lock.release();
    } finally {
      this.maybeRelease();
    }
  }

  /** Refuse (LOCKED) as lock() would, holding nothing afterwards. */
  async probeLock(handle: number, mode: LockMode): Promise<void> {
    const { id } = await this.lock(handle, mode);
    await this.unlock(id);
  }
}

/** The remote file system of `args` in this process (one per host and credentials per pool). */
export function remoteFs(args: ConnectionArgs | ResolvedConnection, pool: SshPool = sshPool()): RemoteFs {
  const rc = 'poolKey' in args ? args as ResolvedConnection : resolveConnection(args);
  let pid = poolIds.get(pool);
  if (pid === undefined) {
    pid = ++nextPoolId;
    poolIds.set(pool, pid);
  }
  const id = `${pid}:${rc.poolKey}`;
  let fs = hosts.get(id);
  if (fs === undefined) {
    fs = new RemoteFs(pool, rc, id);
    hosts.set(id, fs);
  }
  return fs;
}

/** The remote file system a target id names (made by remoteFs in this process). */
export function remoteFsById(id: string): RemoteFs {
  const fs = hosts.get(id);
  if (fs === undefined) throw new Qcow2Error('IO', 'A remote operation named a connection this process does not know (it was made in another process)');
  return fs;
}

type Served = (fs: RemoteFs, args: unknown[], input: Uint8Array | undefined) => Promise<BridgeReply | void>;

const SERVED: Record<RemoteFsMethod, Served> = {
  open: async (fs, [p, mode, name]) => {
    const r = await fs.open(p as string, mode as RemoteOpenMode, name as string);
    return { value: r.answer, ...(r.head !== undefined ? { data: r.head } : {}) };
  },
  read: async (fs, [h, offset, length]) => ({ data: await fs.read(h as number, offset as number, length as number) }),
  write: async (fs, [h, offset], input) => fs.write(h as number, offset as number, input ?? new Uint8Array(0)),
  truncate: async (fs, [h, size]) => fs.truncate(h as number, size as number),
  sync: async (fs, [h]) => fs.sync(h as number),
  close: async (fs, [h]) => fs.close(h as number),
  allocated: async (fs, [h]) => ({ value: await fs.allocated(h as number) }),
  extents: async (fs, [h, offset, length, max]) => ({ value: await fs.extents(h as number, offset as number, length as number, max as number) }),
  stat: async (fs, [p, follow]) => ({ value: await fs.stat(p as string, follow as boolean) }),
  link: async (fs, [a, b, name]) => fs.link(a as string, b as string, name as string),
  rename: async (fs, [a, b]) => fs.rename(a as string, b as string),
  unlink: async (fs, [p]) => ({ value: await fs.unlink(p as string) }),
  readdir: async (fs, [p]) => ({ value: await fs.readdir(p as string) }),
  mkdir: async (fs, [p]) => fs.mkdir(p as string),
  mkdtemp: async (fs, [p]) => ({ value: await fs.mkdtemp(p as string) }),
  removeTree: async (fs, [p]) => fs.removeTree(p as string),
  fsyncDir: async (fs, [p]) => fs.fsyncDir(p as string),
  lock: async (fs, [h, mode]) => ({ value: await fs.lock(h as number, mode as LockMode) }),
  lockChange: async (fs, [id, mode]) => ({ value: await fs.lockChange(id as number, mode as LockMode) }),
  unlock: async (fs, [id]) => fs.unlock(id as number),
  probeLock: async (fs, [h, mode]) => fs.probeLock(h as number, mode as LockMode),
  identity: async (fs, [h]) => ({ value: await fs.identity(h as number) }),
};

/** The bridge handlers that serve worker threads' calls (transport/remote/protocol.ts). */
export function remoteFsHandlers(): Record<RemoteFsMethod, BridgeHandler> {
  return Object.fromEntries(REMOTE_FS_METHODS.map((m) => [m, (args: unknown[], input: Uint8Array | undefined) =>
    SERVED[m](remoteFsById(args[0] as string), args.slice(1), input)])) as Record<RemoteFsMethod, BridgeHandler>;
}
