// Holes in files: lseek(SEEK_DATA/SEEK_HOLE) to find them (QEMU's file-posix find_allocation,
// which `map` and sparse-aware import rely on) and fallocate(PUNCH_HOLE|KEEP_SIZE) to make them
// (QEMU's discard on a data file), on a local file descriptor through io/libc.ts. Without the
// binding a file is all data and punching writes zeros. Callers reach these through HostFs.

import * as os from 'os';
import { BlockFile } from './blockfile';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, SEEK_DATA, SEEK_HOLE, libc } from './libc';

const { ENXIO } = os.constants.errno;

/** An extent of a file: data, or a hole that reads as zeros. */
export interface Extent { offset: number; length: number; data: boolean }

/**
 * file-posix's find_allocation for [offset, offset+length) of the file open as `fd` (or, with
 * fd undefined, of a file that cannot be probed: all data, as QEMU says when lseek fails).
 */
export function extentOfFd(fd: number | undefined, offset: number, length: number, fileSize: number): Extent {
  if (offset >= fileSize) return { offset, length, data: false }; // past EOF reads as zeros
  const all: Extent = { offset, length: Math.min(length, fileSize - offset), data: true };
  const b = libc();
  if (b === undefined || fd === undefined) return all;
  const data = b.lseek(fd, offset, SEEK_DATA);
  if (data < 0) return data === -ENXIO ? { offset, length, data: false } : all; // ENXIO: a trailing hole
  if (data > offset) return { offset, length: Math.min(length, data - offset), data: false };
  const hole = b.lseek(fd, offset, SEEK_HOLE);
  if (hole < 0) return all;
  return { offset, length: Math.min(length, hole - offset), data: true };
}

/** Make [offset, offset+length) read as zeros without changing the size: a hole where it can. */
export function punchHoleFd(fd: number | undefined, file: BlockFile, offset: number, length: number): void {
  if (length <= 0) return;
  const b = libc();
  if (b !== undefined && fd !== undefined && b.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return;
  writeZeros(file, offset, length);
}

/** fallocate(2) FALLOC_FL_ZERO_RANGE. */
const FALLOC_FL_ZERO_RANGE = 0x10;

/**
 * Make [offset, offset+length) read as zeros the way QEMU's write-zeroes of a file does it
 * (file-posix handle_aiocb_write_zeroes): fallocate(ZERO_RANGE), which also extends the file;
 * where that is not available (no fd, another file system), zeros are written.
 */
export function zeroRange(file: BlockFile, offset: number, length: number): void {
  if (length <= 0) return;
  const b = libc();
  if (b !== undefined && file.fd !== undefined && b.fallocate(file.fd, FALLOC_FL_ZERO_RANGE, offset, length) === 0) return;
  writeZeros(file, offset, length, true);
}

const ZERO_CHUNK = 1 << 20;
let zeroBuf: Buffer | undefined;

/** Write zeros over a range (bounded memory). Past EOF nothing is written unless `extend`: it reads as zeros. */
export function writeZeros(file: BlockFile, offset: number, length: number, extend = false): void {
  const end = extend ? offset + length : Math.min(offset + length, file.size());
  zeroBuf ??= Buffer.alloc(ZERO_CHUNK);
  for (let p = offset; p < end; p += ZERO_CHUNK) file.write(p, zeroBuf.subarray(0, Math.min(ZERO_CHUNK, end - p)));
}

/** True when every byte of buf[start, end) is zero (memcmp against a zero page, natively). */
export function isZeroBuffer(buf: Uint8Array, start = 0, end = buf.length): boolean {
  zeroBuf ??= Buffer.alloc(ZERO_CHUNK);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let p = start; p < end; p += ZERO_CHUNK) {
    const n = Math.min(ZERO_CHUNK, end - p);
    if (Buffer.compare(b.subarray(p, p + n), zeroBuf.subarray(0, n)) !== 0) return false;
  }
  return true;
}
