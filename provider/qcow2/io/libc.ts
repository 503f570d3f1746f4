// The one binding to libc: the calls Node has no API for (fcntl for QEMU's OFD locks, lseek
// SEEK_DATA/SEEK_HOLE, fallocate PUNCH_HOLE, sync_file_range, copy_file_range for copies that
// never enter this process's memory), through koffi, loaded on first use so that a
// machine without the native module can still use the engine's other paths. Symbols come from
// the process itself (dlopen(NULL)), which has libc whether it is glibc or musl.
//
// Linux 64-bit only: the F_* values and struct flock layout are asm-generic's (alpha, mips,
// sparc and parisc differ; 32-bit ABIs need flock64), and refused.

/** fcntl(2) commands and lock types (asm-generic/fcntl.h). */
export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
/** lseek(2) whences: SEEK_DATA / SEEK_HOLE find a file's extents. */
export const SEEK_SET = 0;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
/** sync_file_range(2): start writeback of the range's dirty pages, without waiting for it. */
export const SYNC_FILE_RANGE_WRITE = 2;
/** fallocate(2) modes. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** 64-bit Linux architectures whose fcntl constants and struct flock are asm-generic's. */
const SUPPORTED_ARCHES = new Set(['x64', 'arm64', 'riscv64', 'ppc64', 's390x', 'loong64']);

/** Byte offsets of struct flock's fields (LP64 asm-generic: 32 bytes). */
export interface FlockLayout { size: number; type: number; whence: number; start: number; len: number; pid: number }

export interface Libc {
  /** fcntl(fd, cmd, &flock) on a struct flock buffer; returns the result, or -errno. */
  fcntl(fd: number, cmd: number, flock: Buffer): number;
  readonly flock: FlockLayout;
  /** lseek(2); returns the offset, or -errno. */
  lseek(fd: number, offset: number, whence: number): number;
  /** fallocate(2); returns 0, or -errno. */
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  /**
   * copy_file_range(2) of `length` bytes from `fdIn` at `offIn` to `fdOut` at `offOut` (explicit
   * offsets: the files' own positions are not used or moved); returns the bytes copied (0 at the
   * end of the input), or -errno.
   */
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): number;
  /**
   * The same on a thread of koffi's pool, leaving this one free. A failure resolves to -1 (the
   * errno of another thread is not this one's): the caller repeats the call with copyFileRange
   * to learn why, which copies nothing when the cause remains.
   */
  copyFileRangeAsync(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<number>;
  /** sync_file_range(2) (length 0: to the end of the file); returns 0, or -errno. */
  syncFileRange(fd: number, offset: number, length: number, flags: number): number;
  strerror(errno: number): string;
  /**
   * malloc_trim(0) where the C library has it (glibc; not musl): gives the system back the free
   * memory of malloc's arenas, whole pages inside them included. Does nothing elsewhere.
   */
  trimHeap(): void;
}

let loaded: Libc | undefined;
let failure: string | undefined;

/** Why libc cannot be bound here (platform, or koffi missing), or undefined when it can. */
export function libcUnavailable(): string | undefined {
  libc();
  return failure;
}

/** The binding, or undefined where it cannot be had (see libcUnavailable for why). */
export function libc(): Libc | undefined {
  if (loaded !== undefined || failure !== undefined) return loaded;
  if (process.platform !== 'linux' || !SUPPORTED_ARCHES.has(process.arch)) {
    failure = `implemented for 64-bit Linux only (this is ${process.platform}/${process.arch})`;
    return undefined;
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi') as typeof import('koffi');
    const lib = koffi.load(null);
    // Anonymous: a named koffi type is process-wide, and two copies of this module in one
    // process (a bundled and an installed copy, or sources beside their build) would collide.
    const flock = koffi.struct({
      l_type: 'int16_t', l_whence: 'int16_t', l_start: 'int64_t', l_len: 'int64_t', l_pid: 'int32_t',
    });
    const layout: FlockLayout = {
      size: koffi.sizeof(flock),
      type: koffi.offsetof(flock, 'l_type'),
      whence: koffi.offsetof(flock, 'l_whence'),
      start: koffi.offsetof(flock, 'l_start'),
      len: koffi.offsetof(flock, 'l_len'),
      pid: koffi.offsetof(flock, 'l_pid'),
    };
    // struct flock on LP64 asm-generic: 2+2 (+4 pad) + 8 + 8 + 4 (+4 pad) = 32 bytes.
    if (layout.size !== 32 || layout.whence !== 2 || layout.start !== 8 || layout.len !== 16 || layout.pid !== 24) {
      throw new Error(`unexpected struct flock layout (size ${layout.size})`);
    }
    const fcntl = lib.func('int fcntl(int fd, int cmd, ...)');
    const lseek = lib.func('int64_t lseek(int fd, int64_t offset, int whence)');
    const fallocate = lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
    const syncFileRange = lib.func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)');
    const strerror = lib.func('const char *strerror(int errnum)');
    const cfr = lib.func('int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)');
    const orErrno = (r: number) => (r === -1 ? -koffi.errno() : r);
    let mallocTrim: ((pad: number) => number) | undefined;
    try {
      mallocTrim = lib.func('int malloc_trim(size_t pad)') as unknown as (pad: number) => number;
    } catch {
      mallocTrim = undefined; // not glibc
    }
    loaded = {
      fcntl: (fd, cmd, buf) => orErrno(fcntl(fd, cmd, 'void *', buf) as number),
      flock: layout,
      lseek: (fd, offset, whence) => orErrno(Number(lseek(fd, offset, whence) as number | bigint)),
      fallocate: (fd, mode, offset, length) => orErrno(fallocate(fd, mode, offset, length) as number),
      copyFileRange: (fdIn, offIn, fdOut, offOut, length) => orErrno(Number(cfr(fdIn, [offIn], fdOut, [offOut], length, 0) as number | bigint)),
      copyFileRangeAsync: (fdIn, offIn, fdOut, offOut, length) => new Promise((resolve) => {
        cfr.async(fdIn, [offIn], fdOut, [offOut], length, 0, (err: unknown, r: number | bigint) => resolve(err ? -1 : Number(r)));
      }),
      syncFileRange: (fd, offset, length, flags) => orErrno(syncFileRange(fd, offset, length, flags) as number),
      strerror: (errno) => strerror(errno) as string,
      trimHeap: () => {
        mallocTrim?.(0);
      },
    };
  } catch (e) {
    failure = `cannot bind libc through koffi: ${(e as Error).message}`;
  }
  return loaded;
}
