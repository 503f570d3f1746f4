// The qemu-img engine on a remote host: qemu-img runs there over SSH exec, and the engine's file
// work goes through SFTP and the host helper (transport/ssh/remote-fs.ts).
//
// - qemu-img: `env LC_ALL=C LANG=C sh -c 'cd -- "$1" && ulimit -v "$2" && ulimit -t "$3" && exec "$@"'`
//   with the folder, the limits and qemu-img's argument array as positional parameters: each
//   argument quoted once by transport/ssh/quote.ts for the login shell, then never parsed by the
//   inner shell. The wall-clock limit is ours: the remote process group is killed.
// - A missing qemu-img (exit 127) is NOT_FOUND, an older one than 7.2 UNSUPPORTED, both naming
//   the host and how to install it there.
// - Locks: the probe before a change uses the host helper (QEMU's OFD locks, as the native engine
//   takes them); the change itself is protected by qemu-img's own locks on the host.
// - New files are published as locally (io/publish.ts): made durable (fsync@openssh.com), linked
//   into place with hardlink@openssh.com (never replacing a file), the temporary names removed,
//   the folder fsynced by the helper; undone on failure.

import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import type { PublishedKind } from '../../qcow2/io/publish';
import { existsError } from '../../qcow2/io/publish';
import { localFs } from '../../qcow2/io/hostfs';
import { backingOpenError, backingProbeOf, newImageFilesRefusal } from '../../qcow2/ops/create';
import { resolveBackingName } from '../../qcow2/spec/backing';
import { decodeHeader } from '../../qcow2/spec/header';
import * as C from '../../qcow2/spec/constants';
import type { ConnectionArgs } from '../../transport/ssh/connection';
import { RemoteFs, remoteFs } from '../../transport/ssh/remote-fs';
import type { CreateFacts } from '../../rules/create';
import type { RemoveOptions } from '../engine';
import type { Dependents, ImageChain } from '../../model/chain';
import { ChainFiles, findDependentsAsync, readImageChainAsync } from '../chain';
import { chainFilesOf } from '../remote-read';
import { HostPublication, QemuImgHost, notFound } from './host';
import { DEFAULT_LIMITS, MIN_VERSION, QemuImgBinary, RunResult, compareVersions } from './run';
import { peekOf } from './spec';

const INSTALL_HINT = 'apt-get install -y qemu-utils (Debian/Ubuntu; dnf install qemu-img on Fedora/RHEL)';

/** The constant script every qemu-img run goes through; everything variable is a positional parameter. */
const RUNNER = 'cd -- "$1" && ulimit -v "$2" && ulimit -t "$3" && shift 3 && exec "$@"';

/** Bytes of a local file sent at once when copying it to the host. */
const UPLOAD_CHUNK = 4 << 20;

const probes = new Map<string, Promise<QemuImgBinary>>();

/** What `fn` resolves to, or the error it rejects with, handed out later (CreateFacts are synchronous). */
async function settled<T>(fn: () => Promise<T>): Promise<() => T> {
  try {
    const v = await fn();
    return () => v;
  } catch (e) {
    return () => {
      throw e;
    };
  }
}

class SshHost implements QemuImgHost {
  constructor(private readonly fs: RemoteFs) {}

  get label(): string {
    return this.fs.label;
  }

  /** Paths on the host are given absolute; a relative name stored in an image is QEMU's to resolve there. */
  resolve(p: string): string {
    return p.startsWith('/') ? path.posix.normalize(p) : p;
  }

  binary(name: string): Promise<QemuImgBinary> {
    const key = `${this.fs.id}\0${name}`;
    let p = probes.get(key);
    if (p === undefined) {
      p = this.probe(name);
      probes.set(key, p);
      p.catch(() => probes.delete(key)); // installing qemu-utils there must not need a restart
    }
    return p;
  }

  private async probe(name: string): Promise<QemuImgBinary> {
    const r = await this.run(name, ['--version'], DEFAULT_LIMITS.read);
    if (r.status === 127) {
      throw new Qcow2Error('NOT_FOUND', `qemu-img not found on ${this.label} ('${name}' is not on its PATH): the qemu-img engine needs ` +
        `qemu-img ${MIN_VERSION.slice(0, 2).join('.')} or newer on the host. Install it there: ${INSTALL_HINT}`, { file: name });
    }
    const m = /qemu-img version (\d+)\.(\d+)(?:\.(\d+))?/.exec(r.stdout);
    if (r.status !== 0 || m === null) {
      throw new Qcow2Error('UNSUPPORTED', `'${name} --version' on ${this.label} did not report a qemu-img version ` +
        `(exit ${r.status ?? r.signal}): ${(r.stdout + r.stderr).trim().split('\n')[0] ?? ''}. Install qemu-img there: ${INSTALL_HINT}`, { file: name });
    }
    const version: [number, number, number] = [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
    if (compareVersions(version, MIN_VERSION) < 0) {
      throw new Qcow2Error('UNSUPPORTED', `qemu-img ${version.join('.')} on ${this.label} is too old: the qemu-img engine needs ` +
        `${MIN_VERSION.slice(0, 2).join('.')} or newer (its create, amend and locking behaviour). Upgrade it there: ${INSTALL_HINT}`, { file: name });
    }
    return { path: name, version, versionText: version.join('.') };
  }

  async run(bin: string, args: readonly string[], limits: typeof DEFAULT_LIMITS.read, cwd?: string): Promise<RunResult> {
    const kib = Math.max(1, Math.floor(limits.addressSpace / 1024));
    const cpu = Math.max(1, Math.ceil(limits.cpuSeconds));
    const argv = ['env', 'LC_ALL=C', 'LANG=C', 'sh', '-c', RUNNER, 'qemu-img', cwd ?? '.', String(kib), String(cpu), bin, ...args];
    const abort = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, limits.timeoutMs);
    try {
      const r = await this.fs.exec(argv, { signal: abort.signal });
      return { status: r.status, signal: r.signal as NodeJS.Signals | null, stdout: r.stdout.toString('utf8'), stderr: r.stderr, timedOut: false };
    } catch (e) {
      if (timedOut) return { status: null, signal: 'SIGKILL', stdout: '', stderr: '', timedOut: true };
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  stat(p: string) {
    return this.fs.stat(p);
  }

  async peek(p: string) {
    // Only regular files: sftp-server would block opening a FIFO (qemu-img refuses the rest).
    if ((await this.fs.stat(p).catch(() => undefined))?.kind !== 'file') return undefined;
    try {
      const { answer, head } = await this.fs.open(p, 'read');
      void this.fs.close(answer.handle);
      return head !== undefined ? peekOf(head.subarray(0, 80)) : undefined;
    } catch {
      return undefined;
    }
  }

  async probeLock(p: string, mode: 'read' | 'write'): Promise<void> {
    const { answer } = await this.fs.open(p, mode);
    try {
      await this.fs.probeLock(answer.handle, mode);
    } finally {
      await this.fs.close(answer.handle);
    }
  }

  async scratchFile(near: string, length: number) {
    const dir = await this.fs.mkdtemp(path.posix.join(path.posix.dirname(near), '.qcow2-tmp-'));
    try {
      const file = path.posix.join(dir, 'scratch.raw');
      const { answer } = await this.fs.open(file, 'create');
      try {
        if (length > 0) await this.fs.truncate(answer.handle, length);
      } finally {
        await this.fs.close(answer.handle);
      }
      return { path: file, dispose: () => this.fs.removeTree(dir) };
    } catch (e) {
      await this.fs.removeTree(dir).catch(() => undefined);
      throw e;
    }
  }

  async localFile(localPath: string, near: string) {
    const { file, size } = localFs.open(localPath, 'read');
    try {
      const head = file.read(0, Math.min(size, 512));
      const peek = peekOf(head);
      if (peek !== undefined) {
        const h = head.length >= 16 ? head.readBigUInt64BE(8) : 0n;
        if (h !== 0n || peek.hasDataFile) {
          throw new Qcow2Error('UNSUPPORTED', `The local source '${localPath}' is a qcow2 image with a backing file or a data file: it cannot ` +
            `be copied to ${this.label} as one file for qemu-img. Use the native engine, which reads the chain here and sends the guest data`, { property: 'source', file: localPath });
        }
      }
      const scratch = await this.scratchFile(near, 0);
      try {
        const { answer } = await this.fs.open(scratch.path, 'write');
        try {
          // Only the data extents are sent; the length is set at the end, holes stay holes.
          const pending: Promise<void>[] = [];
          for (let off = 0; off < size;) {
            const e = localFs.extent(file, off, size - off, size);
            if (e.data) {
              for (let p = e.offset; p < e.offset + e.length; p += UPLOAD_CHUNK) {
                const n = Math.min(UPLOAD_CHUNK, e.offset + e.length - p);
                pending.push(this.fs.write(answer.handle, p, file.read(p, n)));
                if (pending.length >= 4) await pending.shift();
              }
            }
            off = e.offset + e.length;
          }
          await Promise.all(pending);
          await this.fs.truncate(answer.handle, size);
        } finally {
          await this.fs.close(answer.handle);
        }
        return scratch;
      } catch (e) {
        await scratch.dispose().catch(() => undefined);
        throw e;
      }
    } finally {
      file.close();
    }
  }

  async createFacts(imagePath: string, options: { backingFile?: string; backingFormat?: string; dataFile?: string }): Promise<CreateFacts> {
    const backing = await settled(async () => {
      if (options.backingFile === undefined) throw new Qcow2Error('INVALID_OPTION', 'no backing file');
      const full = resolveBackingName(imagePath, options.backingFile);
      let opened;
      try {
        opened = await this.fs.open(full, 'read');
      } catch (e) {
        throw backingOpenError(full, e);
      }
      void this.fs.close(opened.answer.handle);
      return backingProbeOf(full, opened.head ?? Buffer.alloc(0), opened.answer.size, options.backingFormat);
    });
    const data = options.dataFile !== undefined ? await this.fs.stat(options.dataFile) : undefined;
    return {
      backing,
      adoptedDataFileSize: () => {
        if (data === undefined) throw notFound(options.dataFile!);
        if (data.kind !== 'file') throw new Qcow2Error('INVALID_OPTION', `Data file '${options.dataFile}' is not a regular file`, { property: 'data_file', file: options.dataFile! });
        return BigInt(data.size);
      },
      adoptedDataFileExists: () => data !== undefined,
    };
  }

  async assertNewImageFiles(imagePath: string, o: { dataFile?: string; adoptDataFile: boolean }): Promise<void> {
    const imageThere = (await this.fs.stat(imagePath, false)) !== undefined;
    const dataThere = !imageThere && o.dataFile !== undefined && (await this.fs.stat(o.dataFile)) !== undefined;
    const refusal = newImageFilesRefusal(imagePath, o, imageThere, dataThere);
    if (refusal !== undefined) throw refusal;
  }

  async sameFile(a: string, b: string): Promise<boolean> {
    const [x, y] = await Promise.all([this.fs.stat(a).catch(() => undefined), this.fs.stat(b).catch(() => undefined)]);
    return x !== undefined && y !== undefined && x.id === y.id;
  }

  /** engines/chain.ts on the host's files, driven from this thread over SFTP and the host helper. */
  chain(file: string, seen: string): Promise<ImageChain> {
    return readImageChainAsync(file, seen, this.chainFiles());
  }

  dependents(file: string, candidates: readonly string[]): Promise<Dependents> {
    return findDependentsAsync(file, candidates, this.chainFiles());
  }

  private chainFiles(): ChainFiles {
    return chainFilesOf(this.fs);
  }

  publication(): HostPublication {
    return new SshPublication(this.fs);
  }

  /** qcow2/ops/remove.ts over SFTP and the host helper: the same lock, the same rule for the data file. */
  async remove(file: string, options: RemoveOptions): Promise<void> {
    let dataFile: string | undefined;
    const { answer, head } = await this.fs.open(file, 'write');
    try {
      await this.fs.lock(answer.handle, 'write'); // held until close
      if (options.dataFile && head !== undefined) {
        const h = decodeHeader(head);
        const named = (h.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n && h.dataFile ? resolveBackingName(file, h.dataFile) : undefined;
        const recorded = options.recordedDataFile;
        if (recorded === undefined) dataFile = named;
        else if (recorded.identity !== undefined) {
          const st = await this.fs.stat(recorded.path, false).catch(() => undefined);
          if (st !== undefined && st.kind === 'file' && st.id === recorded.identity) dataFile = recorded.path;
        } else if (named === recorded.path) dataFile = recorded.path;
      }
      await this.fs.unlink(file);
    } finally {
      await this.fs.close(answer.handle);
    }
    if (dataFile !== undefined) await this.fs.unlink(dataFile); // gone already is fine
  }
}

/** io/publish.ts's protocol over SFTP (see there for the order and what abort undoes). */
class SshPublication implements HostPublication {
  private readonly staged: Array<{ temp: string; target: string; kind: PublishedKind }> = [];
  private readonly folders: string[] = [];
  private readonly linked: Array<{ target: string; id: string | undefined }> = [];

  constructor(private readonly fs: RemoteFs) {}

  async folderBeside(target: string): Promise<string> {
    const dir = await this.fs.mkdtemp(path.posix.join(path.posix.dirname(target), '.qcow2-tmp-'));
    this.folders.push(dir);
    return dir;
  }

  stage(temp: string, target: string, kind: PublishedKind): void {
    this.staged.push({ temp, target, kind });
  }

  async publish(opts: { durable?: boolean } = {}): Promise<void> {
    const durable = opts.durable ?? true;
    for (const s of durable ? this.staged : []) {
      const { answer } = await this.fs.open(s.temp, 'read', s.target);
      try {
        await this.fs.sync(answer.handle);
      } finally {
        await this.fs.close(answer.handle);
      }
    }
    for (const s of this.staged) {
      const id = (await this.fs.stat(s.temp))?.id;
      try {
        await this.fs.link(s.temp, s.target, s.target);
      } catch (e) {
        throw Qcow2Error.isInstance(e) && e.code === 'EXISTS' ? existsError(s.target, s.kind) : e;
      }
      this.linked.push({ target: s.target, id });
    }
    for (const s of this.staged) await this.fs.unlink(s.temp);
    if (durable) for (const dir of new Set(this.staged.map((s) => path.posix.dirname(s.target)))) await this.fs.fsyncDir(dir);
    this.staged.length = 0;
    await this.cleanup();
  }

  async abort(): Promise<void> {
    for (const l of this.linked.reverse()) {
      try {
        if (l.id !== undefined && (await this.fs.stat(l.target, false))?.id === l.id) await this.fs.unlink(l.target);
      } catch { /* leave it */ }
    }
    for (const s of this.staged) await this.fs.unlink(s.temp).catch(() => undefined);
    this.staged.length = 0;
    this.linked.length = 0;
    await this.cleanup();
  }

  private async cleanup(): Promise<void> {
    for (const dir of this.folders) await this.fs.removeTree(dir).catch(() => undefined);
    this.folders.length = 0;
  }
}

/** The qemu-img engine's host for `connection`. */
export function sshQemuImgHost(connection: ConnectionArgs): QemuImgHost {
  return new SshHost(remoteFs(connection));
}
