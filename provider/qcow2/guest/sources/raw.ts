// A raw file as a guest view (QEMU's raw format over file-posix): bytes at guest offsets, holes
// reported through the host's SEEK_DATA / SEEK_HOLE.

import { BlockFile, readNew } from '../../io/blockfile';
import { HostFs, localFs } from '../../io/hostfs';
import { ImageLock } from '../../io/lock';
import { BlockStatus, GuestSource } from '../source';

export class RawSource implements GuestSource {
  readonly format = 'raw' as const;
  readonly backing = null;

  private constructor(readonly file: BlockFile, readonly size: number, readonly fileName: string, private readonly host: HostFs,
    private readonly locks: ImageLock[]) {}

  /** Open a raw file (locked as QEMU locks it, unless `lock` is false). */
  static open(fileName: string, opts: { lock?: boolean; writable?: boolean; host?: HostFs } = {}): RawSource {
    const host = opts.host ?? localFs;
    const { file, size } = host.open(fileName, opts.writable ? 'write' : 'read');
    const locks: ImageLock[] = [];
    try {
      if (opts.lock ?? true) locks.push(host.lock(file, fileName, opts.writable ? 'write' : 'read'));
    } catch (e) {
      file.close();
      throw e;
    }
    return new RawSource(file, size, fileName, host, locks);
  }

  /** A raw view of an open file (the caller owns it). */
  static over(file: BlockFile, fileName: string, host: HostFs = localFs): RawSource {
    return new RawSource(file, file.size(), fileName, host, []);
  }

  read(offset: number, length: number): Buffer {
    return readNew(this, offset, length);
  }

  readInto(target: Uint8Array, offset: number): void {
    const n = Math.max(0, Math.min(target.length, this.size - offset));
    if (n > 0) this.file.readInto(target.subarray(0, n), offset);
    target.fill(0, n);
  }

  isZeroFast(offset: number, length: number): boolean {
    return length === 0 || offset >= this.size;
  }

  blockStatus(offset: number, length: number): BlockStatus {
    const e = this.host.extent(this.file, offset, Math.min(length, this.size - offset), this.size);
    return { length: Math.max(1, e.length), data: e.data, zero: !e.data, allocated: true, offset, file: this.fileName };
  }

  close(): void {
    for (const l of this.locks) l.release();
    this.file.close();
  }
}
