// The file seam: everything in qcow2/ reads and writes through BlockFile, so tests run on
// MemoryBlockFile and fault injection can wrap any implementation.

import * as fs from 'fs';
import { Qcow2Error } from '../../model/errors';

/** Synchronous random-access file. Offsets are byte offsets (< 2^53, checked by callers). */
export interface BlockFile {
  /** Read `length` bytes at `offset`; bytes past the end read as zeros (as QEMU's file driver). */
  read(offset: number, length: number): Buffer;
  write(offset: number, data: Uint8Array): void;
  size(): number;
  truncate(size: number): void;
  /** Make written data durable (fdatasync for real files). */
  flush(): void;
  close(): void;
  /** Bytes actually allocated on the medium (st_blocks * 512 for real files). */
  allocatedSize(): number;
}

/** A BlockFile over a Node file descriptor. */
export class NodeBlockFile implements BlockFile {
  private closed = false;
  private constructor(readonly path: string, readonly fd: number, readonly writable: boolean) {}

  /** Open an existing file. */
  static open(path: string, writable: boolean): NodeBlockFile {
    try {
      return new NodeBlockFile(path, fs.openSync(path, writable ? 'r+' : 'r'), writable);
    } catch (e) {
      throw ioError(e, path, 'open');
    }
  }

  /** Create a new file; fails with EXISTS rather than touch an existing one. */
  static createExclusive(path: string): NodeBlockFile {
    try {
      return new NodeBlockFile(path, fs.openSync(path, 'wx+', 0o644), true);
    } catch (e) {
      throw ioError(e, path, 'create');
    }
  }

  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) break; // EOF: the rest stays zero
      done += n;
    }
    return buf;
  }

  write(offset: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      done += fs.writeSync(this.fd, data, done, data.length - done, offset + done);
    }
  }

  size(): number { return fs.fstatSync(this.fd).size; }
  truncate(size: number): void { fs.ftruncateSync(this.fd, size); }
  flush(): void { fs.fdatasyncSync(this.fd); }
  allocatedSize(): number { return fs.fstatSync(this.fd).blocks * 512; }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      fs.closeSync(this.fd);
    }
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
    const out = Buffer.alloc(length);
    if (offset < this.length) this.data.copy(out, 0, offset, Math.min(this.length, offset + length));
    return out;
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

export function ioError(e: unknown, file: string, op: string): Qcow2Error {
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'EEXIST') {
    return new Qcow2Error('EXISTS', `${file}: file exists; refusing to overwrite it`, { file, cause: e });
  }
  if (err?.code === 'ENOENT') {
    return new Qcow2Error('NOT_FOUND', `Could not ${op === 'create' ? 'create' : 'open'} '${file}': No such file or directory`, { file, cause: e });
  }
  return new Qcow2Error('IO', `Could not ${op} '${file}': ${err?.message ?? String(e)}`, { file, cause: e });
}
