// Copies between two local files whose bytes never enter this process: copy_file_range(2)
// (through io/libc.ts), on koffi's threads so the calling thread goes on planning. The kernel
// moves the bytes from page cache to page cache (or shares the blocks, on file systems that can),
// one copy where a read and a write through a buffer make two, and no JavaScript touches them.
//
// Where the kernel or the pair of file systems cannot (EXDEV: across file systems of different
// types, or any two before Linux 5.3; ENOSYS: an older kernel or a seccomp filter; EINVAL or
// EOPNOTSUPP: a file system without support), the copy goes through a buffer instead: pread
// and pwrite of at most FALLBACK_CHUNK bytes, through the files' own read and write (whose
// errors name the file). Such a refusal is remembered for the pair of descriptors (ENOSYS for
// the process), so it is asked once. Any other failure (EIO, ENOSPC, ...) is retried the same
// way, whose read or write then fails with the file's name and the cause in the C library's
// words. A copy cut short by the end of the input (a cluster stored past the end of its file)
// finishes the same way: the read gives zeros there, as QEMU's file driver reads them.

import * as os from 'os';
import { BlockFile, readIntoAsync, writeAsync } from './blockfile';
import { libc, Libc } from './libc';

const { EXDEV, ENOSYS, EINVAL, EOPNOTSUPP } = os.constants.errno;
/** The errnos that say "not here" rather than "this failed". */
const UNSUPPORTED = new Set([EXDEV, ENOSYS, EINVAL, EOPNOTSUPP]);
/** Bytes per pread/pwrite of the fallback, and per copy_file_range call (the kernel's own cap is about 2 GiB). */
const FALLBACK_CHUNK = 1 << 20;
const KERNEL_CHUNK = 1 << 30;

/** The calls this module makes; tests give refusing or short-copying ones. */
export type CopyCalls = Pick<Libc, 'copyFileRange' | 'copyFileRangeAsync'>;

/** Bytes copied each way so far, and copy_file_range calls that copied (for tests and diagnostics). */
export interface CopyStats { kernel: number; fallback: number; calls: number }

/** The process's totals over every RangeCopier (an import makes its own). */
export const copyTotals: CopyStats = { kernel: 0, fallback: 0, calls: 0 };

export class RangeCopier {
  readonly stats: CopyStats = { kernel: 0, fallback: 0, calls: 0 };
  private readonly refused = new Set<string>();
  private noKernel = false;
  private buffers: Buffer[] = [];

  private readonly calls: CopyCalls | undefined;

  /** `calls` default to libc's; without them (null, or no binding) every copy goes through a buffer. */
  constructor(calls?: CopyCalls | null) {
    this.calls = calls === undefined ? libc() : calls ?? undefined;
  }

  /** True when a copy between these files can use the kernel (both local, not refused before). */
  direct(src: BlockFile, dst: BlockFile): boolean {
    return this.calls !== undefined && !this.noKernel && src.fd !== undefined && dst.fd !== undefined && !this.refused.has(`${src.fd}>${dst.fd}`);
  }

  /** Copy `length` bytes of `src` at `from` to `dst` at `to`. */
  async copy(src: BlockFile, from: number, dst: BlockFile, to: number, length: number): Promise<void> {
    let done = 0;
    while (done < length && this.direct(src, dst)) {
      const n = Math.min(KERNEL_CHUNK, length - done);
      let r = await this.calls!.copyFileRangeAsync(src.fd!, from + done, dst.fd!, to + done, n);
      // Another thread's errno is not ours: ask again here to learn why (nothing was copied).
      if (r < 0) r = this.calls!.copyFileRange(src.fd!, from + done, dst.fd!, to + done, n);
      if (r > 0) {
        done += r;
        this.stats.kernel += r;
        copyTotals.kernel += r;
        this.stats.calls++;
        copyTotals.calls++;
        continue;
      }
      if (r < 0 && UNSUPPORTED.has(-r)) {
        if (-r === ENOSYS) this.noKernel = true;
        else this.refused.add(`${src.fd}>${dst.fd}`);
      }
      break; // the end of the input, a refusal or a failure: the rest through a buffer
    }
    if (done < length) await this.throughBuffer(src, from + done, dst, to + done, length - done);
  }

  private async throughBuffer(src: BlockFile, from: number, dst: BlockFile, to: number, length: number): Promise<void> {
    const buf = this.buffers.pop() ?? Buffer.allocUnsafe(FALLBACK_CHUNK);
    try {
      for (let p = 0; p < length; p += FALLBACK_CHUNK) {
        const view = buf.subarray(0, Math.min(FALLBACK_CHUNK, length - p));
        await readIntoAsync(src, view, from + p);
        await writeAsync(dst, to + p, view);
        this.stats.fallback += view.length;
        copyTotals.fallback += view.length;
      }
    } finally {
      this.buffers.push(buf);
    }
  }
}
