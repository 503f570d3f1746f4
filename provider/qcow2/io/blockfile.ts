// The file seam: everything in qcow2/ reads and writes through BlockFile, so tests run on
// MemoryBlockFile and fault injection can wrap any implementation. Files are opened through
// HostFs (io/hostfs.ts), which owns everything else a host does to files.

import { closeSync, constants, fdatasyncSync, fstatSync, ftruncateSync, openSync, read, readSync, statSync, write, writeSync, type Stats } from 'fs';
import { Qcow2Error } from '../../model/errors';
import { libc } from './libc';

/** Synchronous random-access file. Offsets are byte offsets (< 2^53, checked by callers). */
export interface BlockFile {
  /** Read `length` bytes at `offset`; bytes past the end read as zeros (as QEMU's file driver). */
  read(offset: number, length: number): Buffer;
  /** Fill `target` from `offset` (one pread where the file allows); past the end, zeros. */
  readInto(target: Uint8Array, offset: number): void;
  write(offset: number, data: Uint8Array): void;
  size(): number;
  truncate(size: number): void;
  /** Make written data durable (fdatasync for real files). */
  flush(): void;
  close(): void;
  /** Bytes actually allocated on the medium (st_blocks * 512 for real files). */
  allocatedSize(): number;
  /**
   * readInto without blocking the calling thread, where the file can (a local file: a pread on
   * libuv's thread pool). Optional: bulk copies fall back to readInto.
   */
  readIntoAsync?(target: Uint8Array, offset: number): Promise<void>;
  /** write without blocking the calling thread, where the file can. Optional: falls back to write. */
  writeAsync?(offset: number, data: Uint8Array): Promise<void>;
  /**
   * The descriptor of a local file (what SEEK_DATA, locks and copy_file_range work on); absent
   * for any other file (remote, in memory, a wrapper that must see every read and write).
   */
  readonly fd?: number;
}

/** readIntoAsync where the file has it, else readInto. */
export function readIntoAsync(file: BlockFile, target: Uint8Array, offset: number): Promise<void> | void {
  return file.readIntoAsync ? file.readIntoAsync(target, offset) : file.readInto(target, offset);
}

/** writeAsync where the file has it, else write. */
export function writeAsync(file: BlockFile, offset: number, data: Uint8Array): Promise<void> | void {
  return file.writeAsync ? file.writeAsync(offset, data) : file.write(offset, data);
}

function readP(fd: number, target: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, target, at, len, pos, (e, n) => (e ? reject(e) : resolve(n))));
}

function writeP(fd: number, data: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => write(fd, data, at, len, pos, (e, n) => (e ? reject(e) : resolve(n))));
}

/** A BlockFile over a Node file descriptor. */
export class NodeBlockFile implements BlockFile {
  private closed = false;
  /** `name` is what errors call the file: the user's name, never a temporary one. */
  private constructor(readonly path: string, readonly fd: number, readonly writable: boolean, readonly name: string) {}

  /**
   * Open an existing regular file; errors name `name` (the caller's name for it). Anything else
   * (a folder, FIFO, socket or device) is refused before and after the open, and the open itself
   * never waits: O_NONBLOCK makes opening a FIFO return at once (then fstat refuses it), and
   * O_NOCTTY keeps a terminal from becoming ours.
   */
  static open(path: string, writable: boolean, name = path): NodeBlockFile {
    let fd: number;
    try {
      const st = statSync(path, { throwIfNoEntry: false });
      if (st !== undefined && !st.isFile()) throw notRegular(name);
      const { O_RDWR, O_RDONLY, O_NONBLOCK, O_NOCTTY } = constants;
      fd = openSync(path, (writable ? O_RDWR : O_RDONLY) | O_NONBLOCK | O_NOCTTY);
    } catch (e) {
      throw Qcow2Error.isInstance(e) ? e : ioError(e, name, 'open');
    }
    try {
      if (!fstatSync(fd).isFile()) throw notRegular(name);
    } catch (e) {
      closeSync(fd);
      throw Qcow2Error.isInstance(e) ? e : ioError(e, name, 'open');
    }
    return new NodeBlockFile(path, fd, writable, name);
  }

  /** Create a new file; fails with EXISTS rather than touch an existing one. Errors name `name`. */
  static createExclusive(path: string, name = path): NodeBlockFile {
    try {
      return new NodeBlockFile(path, openSync(path, 'wx+', 0o644), true, name);
    } catch (e) {
      throw ioError(e, name, 'create');
    }
  }

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    let done = 0;
    try {
      while (done < target.length) {
        const n = readSync(this.fd, target, done, target.length - done, offset + done);
        if (n === 0) break; // EOF: the rest reads as zeros
        done += n;
      }
    } catch (e) {
      throw ioError(e, this.name, 'read');
    }
    if (done < target.length) target.fill(0, done);
  }

  write(offset: number, data: Uint8Array): void {
    let done = 0;
    try {
      while (done < data.length) {
        done += writeSync(this.fd, data, done, data.length - done, offset + done);
      }
    } catch (e) {
      throw ioError(e, this.name, 'write');
    }
  }

  async readIntoAsync(target: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < target.length) {
        const n = await readP(this.fd, target, done, target.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw ioError(e, this.name, 'read');
    }
    if (done < target.length) target.fill(0, done);
  }

  async writeAsync(offset: number, data: Uint8Array): Promise<void> {
    try {
      for (let done = 0; done < data.length;) done += await writeP(this.fd, data, done, data.length - done, offset + done);
    } catch (e) {
      throw ioError(e, this.name, 'write');
    }
  }

  size(): number { return this.stat().size; }
  allocatedSize(): number { return this.stat().blocks * 512; }

  truncate(size: number): void {
    try {
      ftruncateSync(this.fd, size);
    } catch (e) {
      throw ioError(e, this.name, 'resize');
    }
  }

  flush(): void {
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      throw ioError(e, this.name, 'flush');
    }
  }

  private stat(): Stats {
    try {
      return fstatSync(this.fd);
    } catch (e) {
      throw ioError(e, this.name, 'stat');
    }
  }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      closeSync(this.fd);
    }
  }
}

/**
 * A BlockFile that gathers writes continuing the previous one (up to `limit` bytes) and writes
 * them as one; anything else (a read, a write elsewhere, size, truncate, flush, close) writes
 * them first, so every caller sees its writes. For a writer of many small sequential writes:
 * compressed clusters packed one after another. A gathered write's failure surfaces at the
 * operation that writes it, naming the file as any write does. No descriptor: nothing may
 * write around it.
 */
export class WriteCombiner implements BlockFile {
  private readonly buf: Buffer;
  private at = 0;
  private len = 0;

  constructor(private readonly f: BlockFile, limit = 1 << 20) {
    this.buf = Buffer.allocUnsafe(limit);
  }

  write(offset: number, data: Uint8Array): void {
    if (this.len > 0 && offset === this.at + this.len && this.len + data.length <= this.buf.length) {
      this.buf.set(data, this.len);
      this.len += data.length;
      return;
    }
    this.drain();
    if (data.length * 2 > this.buf.length) {
      this.f.write(offset, data);
      return;
    }
    this.buf.set(data, 0);
    this.at = offset;
    this.len = data.length;
  }

  /** Write what is gathered. */
  drain(): void {
    if (this.len === 0) return;
    const n = this.len;
    this.len = 0;
    this.f.write(this.at, this.buf.subarray(0, n));
  }

  read(offset: number, length: number): Buffer {
    this.drain();
    return this.f.read(offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    this.drain();
    this.f.readInto(target, offset);
  }

  size(): number {
    this.drain();
    return this.f.size();
  }

  truncate(size: number): void {
    this.drain();
    this.f.truncate(size);
  }

  flush(): void {
    this.drain();
    this.f.flush();
  }

  close(): void {
    this.drain();
    this.f.close();
  }

  allocatedSize(): number {
    this.drain();
    return this.f.allocatedSize();
  }
}

/** An in-memory BlockFile; grows on write like a sparse file. */
export class MemoryBlockFile implements BlockFile {
  private data: Buffer;
  private length: number;
  writes = 0;

  constructor(initial?: Uint8Array) {
    this.data = Buffer.alloc(Math.max(initial?.length ?? 0, 4096));
    if (initial) this.data.set(initial);
    this.length = initial?.length ?? 0;
  }

  private ensure(n: number): void {
    if (n > this.data.length) {
      const next = Buffer.alloc(Math.max(n, this.data.length * 2));
      this.data.copy(next, 0, 0, this.length);
      this.data = next;
    }
  }

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    const n = Math.max(0, Math.min(target.length, this.length - offset));
    if (n > 0) target.set(this.data.subarray(offset, offset + n));
    target.fill(0, n);
  }

  write(offset: number, data: Uint8Array): void {
    this.writes++;
    this.ensure(offset + data.length);
    this.data.set(data, offset);
    this.length = Math.max(this.length, offset + data.length);
  }

  size(): number { return this.length; }

  truncate(size: number): void {
    this.ensure(size);
    if (size < this.length) this.data.fill(0, size, this.length);
    this.length = size;
  }

  flush(): void {}
  close(): void {}
  allocatedSize(): number { return this.length; }

  /** A copy of the contents. */
  bytes(): Buffer { return Buffer.from(this.data.subarray(0, this.length)); }
}

/** `read` for whatever has `readInto`: a new buffer of `length` bytes from `offset`. */
export function readNew(from: { readInto(target: Uint8Array, offset: number): void }, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  from.readInto(out, offset);
  return out;
}

/** qemu-img's words for a path that is not a regular file (a folder, FIFO, socket or device). */
export function notRegular(name: string): Qcow2Error {
  return new Qcow2Error('UNSUPPORTED', `'file' driver requires '${name}' to be a regular file`, { file: name });
}

/** What each operation is called in a message ("Could not write to 'x': ..."). */
const OP_WORDS: Record<string, string> = { write: 'write to', read: 'read from', resize: 'resize', flush: 'flush', stat: 'stat' };

/**
 * A file operation's failure as a Qcow2Error naming `file` (the caller's name, never a
 * temporary one) with the C library's words for the cause, as QEMU prints them; never Node's
 * own text ("EISDIR: illegal operation on a directory, read"), which names the path it used.
 */
export function ioError(e: unknown, file: string, op: string): Qcow2Error {
  if (Qcow2Error.isInstance(e)) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'EEXIST') {
    return new Qcow2Error('EXISTS', `${file}: file exists; refusing to overwrite it`, { file, cause: e });
  }
  if (code === 'ENOENT') {
    return new Qcow2Error('NOT_FOUND', `Could not ${op === 'create' ? 'create' : 'open'} '${file}': No such file or directory`, { file, cause: e });
  }
  if (code === 'EISDIR' && (op === 'open' || op === 'read')) return notRegular(file);
  return new Qcow2Error('IO', `Could not ${OP_WORDS[op] ?? op} '${file}': ${errnoText(e)}`, { file, cause: e });
}

/** strerror() of a Node error's code ("Permission denied"), without Node's path-laden text. */
function errnoText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException)?.code;
  // os and the libc binding (koffi) load only here, on a failure: a command that succeeds needs neither.
  const errno = code !== undefined ? ((require('os') as typeof import('os')).constants.errno as Record<string, number>)[code] : undefined;
  if (errno !== undefined) {
    const text = libc()?.strerror(errno);
    return text ?? code!;
  }
  return code ?? (e instanceof Error ? e.message : String(e));
}
