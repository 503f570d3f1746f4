// HostFs and BlockFile on a remote host, for the format engine in a worker thread: each method is
// one synchronous call through the bridge (transport/bridge.ts) to the main thread, which serves
// it over SSH (transport/ssh/remote-fs.ts). The format engine above stays synchronous and
// unchanged. Loaded in workers: nothing here reaches SSH itself.
//
// What saves round trips: an open brings the file's size and first bytes (its first cluster), so
// opening an image and reading its header is one call; read-only opens bring the allocated size
// too. Extents come in batches and are kept until the file changes.

import type { BridgeClient, CallOptions } from '../bridge';
import { Qcow2Error } from '../../model/errors';
import { BlockFile, readNew } from '../../qcow2/io/blockfile';
import type { HostFs, HostStat, OpenMode, OpenedFile } from '../../qcow2/io/hostfs';
import type { ImageLock, LockMode } from '../../qcow2/io/lock';
import type { Extent } from '../../qcow2/io/sparse';
import { writeZeros } from '../../qcow2/io/sparse';
import type { LockAnswer, OpenAnswer, RemoteFsMethod } from './protocol';

/** Extents asked for at once: the rest of the file, in at most this many pieces. */
const EXTENT_BATCH = 256;
/** Reads this large of a read-only file skip its holes (smaller ones cost less fetched whole). */
const SPARSE_READ = 1 << 20;

/** The files of one remote host, through the bridge. */
export class BridgedHostFs implements HostFs {
  /** @param target the main thread's id of the host and its credentials (transport/ssh/remote-fs.ts) */
  constructor(private readonly bridge: BridgeClient, private readonly target: string) {}

  /** @internal */
  call(method: RemoteFsMethod, args: unknown[], opts?: CallOptions): { value: unknown; data?: Uint8Array } {
    return this.bridge.call(method, [this.target, ...args], opts);
  }

  open(path: string, mode: OpenMode, name = path): OpenedFile {
    const r = this.call('open', [path, mode, name]);
    const a = r.value as OpenAnswer;
    const file = new BridgedBlockFile(this, a.handle, path, a.size, mode !== 'read', r.data, a.allocated, a.id);
    return { file, size: a.size };
  }

  stat(path: string): HostStat | undefined {
    return (this.call('stat', [path, true]).value as HostStat | undefined) ?? undefined;
  }

  lstat(path: string): HostStat | undefined {
    return (this.call('stat', [path, false]).value as HostStat | undefined) ?? undefined;
  }

  link(existing: string, newPath: string, name = newPath): void {
    this.call('link', [existing, newPath, name]);
  }

  rename(from: string, to: string): void {
    this.call('rename', [from, to]);
  }

  unlink(path: string): boolean {
    return this.call('unlink', [path]).value as boolean;
  }

  readdir(path: string): string[] {
    return this.call('readdir', [path]).value as string[];
  }

  mkdir(path: string): void {
    this.call('mkdir', [path]);
  }

  mkdtemp(prefix: string): string {
    return this.call('mkdtemp', [prefix]).value as string;
  }

  removeTree(path: string): void {
    this.call('removeTree', [path]);
  }

  fsyncDir(path: string): void {
    this.call('fsyncDir', [path]);
  }

  lock(file: BlockFile, name: string, mode: LockMode): ImageLock {
    const f = bridged(file, name);
    const a = this.call('lock', [f.handle, mode]).value as LockAnswer;
    return new BridgedLock(this, a, name, mode);
  }

  probeLock(file: BlockFile, name: string, mode: LockMode): void {
    this.call('probeLock', [bridged(file, name).handle, mode]);
  }

  identity(file: BlockFile, name: string): string {
    const f = bridged(file, name);
    return f.id ?? (this.call('identity', [f.handle]).value as string);
  }

  extent(file: BlockFile, offset: number, length: number, fileSize = file.size()): Extent {
    if (offset >= fileSize) return { offset, length, data: false }; // past EOF reads as zeros
    return bridged(file, '').extent(offset, Math.min(length, fileSize - offset), fileSize);
  }

  /** SFTP cannot make holes: the range is written with zeros, which read the same. */
  punchHole(file: BlockFile, offset: number, length: number): void {
    if (length > 0) writeZeros(file, offset, length);
  }
}

function bridged(file: BlockFile, name: string): BridgedBlockFile {
  if (file instanceof BridgedBlockFile) return file;
  throw new Qcow2Error('UNSUPPORTED', `'${name}' is not a file of this remote host`, { file: name });
}

/** An open file on the remote host. */
export class BridgedBlockFile implements BlockFile {
  private closed = false;
  private head: Buffer | undefined;
  private extents: Extent[] = [];

  constructor(
    private readonly host: BridgedHostFs,
    readonly handle: number,
    readonly path: string,
    private length: number,
    readonly writable: boolean,
    head: Uint8Array | undefined,
    private readonly allocatedAtOpen: number | undefined,
    /** The file's identity ("dev:ino"), when the host told it at the open (read-only opens). */
    readonly id?: string,
  ) {
    if (head !== undefined && head.length > 0) this.head = Buffer.from(head.buffer, head.byteOffset, head.length);
  }

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    const h = this.head;
    if (h !== undefined && offset + target.length <= h.length) {
      target.set(h.subarray(offset, offset + target.length));
      return;
    }
    if (target.length === 0) return;
    if (this.writable || target.length < SPARSE_READ) {
      this.host.call('read', [this.handle, offset, target.length], { into: target });
      return;
    }
    // A large read of a file we do not write: holes are not fetched (they read as zeros), so a
    // sparse data file's gigabytes of nothing never cross the connection.
    const end = offset + target.length;
    for (let p = offset; p < end;) {
      const e = p < this.length ? this.extent(p, end - p, this.length) : { offset: p, length: end - p, data: false };
      const sub = target.subarray(p - offset, p - offset + e.length);
      if (e.data) this.host.call('read', [this.handle, p, sub.length], { into: sub });
      else sub.fill(0);
      p += e.length;
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length === 0) return;
    this.host.call('write', [this.handle, offset], { input: data });
    const h = this.head;
    if (h !== undefined && offset < h.length) {
      const n = Math.min(h.length - offset, data.length);
      h.set(data.subarray(0, n), offset);
    }
    this.length = Math.max(this.length, offset + data.length);
    this.extents = [];
  }

  size(): number {
    return this.length;
  }

  truncate(size: number): void {
    this.host.call('truncate', [this.handle, size]);
    if (this.head !== undefined && this.head.length > size) this.head = size > 0 ? this.head.subarray(0, size) : undefined;
    this.length = size;
    this.extents = [];
  }

  flush(): void {
    this.host.call('sync', [this.handle]);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.head = undefined;
    this.host.call('close', [this.handle]);
  }

  allocatedSize(): number {
    if (!this.writable && this.allocatedAtOpen !== undefined) return this.allocatedAtOpen;
    return this.host.call('allocated', [this.handle]).value as number;
  }

  /** The extent at `offset` (within the file), from the batch fetched last or a new one. */
  extent(offset: number, length: number, fileSize: number): Extent {
    let e = this.extents.find((x) => x.offset <= offset && offset < x.offset + x.length);
    if (e === undefined) {
      this.extents = this.host.call('extents', [this.handle, offset, fileSize - offset, EXTENT_BATCH]).value as Extent[];
      e = this.extents.find((x) => x.offset <= offset && offset < x.offset + x.length);
      // The file shrank under us: what is past its end reads as zeros.
      if (e === undefined) return { offset, length, data: false };
    }
    return { offset, length: Math.min(length, e.offset + e.length - offset), data: e.data };
  }
}

/** A QEMU image lock the host helper holds for us. */
class BridgedLock implements ImageLock {
  /** Held on the remote host: there is no local descriptor. */
  readonly fd = -1;
  private held: number[];
  private released = false;

  constructor(private readonly host: BridgedHostFs, private readonly answer: LockAnswer, readonly fileName: string, private current: LockMode) {
    this.held = answer.bytes;
  }

  get mode(): LockMode {
    return this.current;
  }

  get bytes(): readonly number[] {
    return this.held.slice();
  }

  change(mode: LockMode): void {
    if (this.released) throw new Qcow2Error('INVALID_OPTION', `image lock on ${this.fileName} was released`);
    const a = this.host.call('lockChange', [this.answer.id, mode]).value as LockAnswer;
    this.held = a.bytes;
    this.current = mode;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.held = [];
    this.host.call('unlock', [this.answer.id]);
  }
}
