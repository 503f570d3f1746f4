// Holes in files: lseek(SEEK_DATA/SEEK_HOLE) to find them (QEMU's file-posix find_allocation,
// which `map` and sparse-aware import rely on) and fallocate(PUNCH_HOLE|KEEP_SIZE) to make them
// (QEMU's discard on a data file). Node has neither, so both go through koffi, loaded on first
// use as lock.ts does; without koffi a file is all data and punching writes zeros.

import { BlockFile, NodeBlockFile } from './blockfile';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const ENXIO = 6;

interface Sys {
  lseek(fd: number, off: bigint, whence: number): bigint;
  fallocate(fd: number, mode: number, off: bigint, len: bigint): number;
  errno(): number;
}

let sys: Sys | null | undefined;

function binding(): Sys | null {
  if (sys !== undefined) return sys;
  sys = null;
  if (process.platform !== 'linux' || !['x64', 'arm64', 'riscv64', 'ppc64', 's390x', 'loong64'].includes(process.arch)) return sys;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi') as typeof import('koffi');
    const libc = koffi.load(null);
    const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
    const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
    sys = {
      lseek: (fd, off, whence) => BigInt(lseek(fd, off, whence) as number | bigint),
      fallocate: (fd, mode, off, len) => fallocate(fd, mode, off, len) as number,
      errno: () => koffi.errno(),
    };
  } catch {
    sys = null;
  }
  return sys;
}

/** An extent of a file: data, or a hole that reads as zeros. */
export interface Extent { offset: number; length: number; data: boolean }

/**
 * file-posix's find_allocation for [offset, offset+length) of `file`: the first extent starting
 * at `offset`. Files we cannot probe are reported as data, as QEMU does when lseek fails.
 */
export function extentAt(file: BlockFile, offset: number, length: number, fileSize = file.size()): Extent {
  const b = binding();
  if (offset >= fileSize) return { offset, length, data: false }; // past EOF reads as zeros
  if (!b || !(file instanceof NodeBlockFile)) return { offset, length: Math.min(length, fileSize - offset), data: true };
  const data = b.lseek(file.fd, BigInt(offset), SEEK_DATA);
  if (data < 0n) {
    // ENXIO: a trailing hole up to EOF.
    if (b.errno() === ENXIO) return { offset, length, data: false };
    return { offset, length: Math.min(length, fileSize - offset), data: true };
  }
  if (Number(data) > offset) return { offset, length: Math.min(length, Number(data) - offset), data: false };
  const hole = b.lseek(file.fd, BigInt(offset), SEEK_HOLE);
  if (hole < 0n) return { offset, length: Math.min(length, fileSize - offset), data: true };
  return { offset, length: Math.min(length, Number(hole) - offset), data: true };
}

/** Make [offset, offset+length) of a file read as zeros without changing its size. */
export function punchHole(file: BlockFile, offset: number, length: number): void {
  if (length <= 0) return;
  const b = binding();
  if (b && file instanceof NodeBlockFile) {
    if (b.fallocate(file.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(offset), BigInt(length)) === 0) return;
  }
  writeZeros(file, offset, length);
}

const ZERO_CHUNK = 1 << 20;
let zeroBuf: Buffer | undefined;

/** Write zeros over a range (bounded memory). Past EOF nothing is written: it reads as zeros. */
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
