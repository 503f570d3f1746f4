// The native compression libraries, bound once per thread through koffi: libdeflate (zlib
// clusters decoded, about twice as fast as zlib), libzstd (zstd clusters decoded and made), and
// libz (zlib clusters made: QEMU's own library, so the bytes are qemu-img's; Node's bundled
// zlib is a fork whose deflate output differs). Each library is loaded on first use, once, and
// one that is missing leaves its entry out (decoding then falls back to spec/compress.ts;
// compressing refuses, naming the library).
//
// libz is loaded with RTLD_DEEPBIND: Node exports its own zlib's symbols, and without it libz's
// internal calls would bind to those (a different deflate_state: a crash).

type Koffi = typeof import('koffi');

/** A native call made on koffi's threads: `done` hears its result on this thread (`err` set if koffi could not make it). */
type Async<A extends unknown[], R> = (...args: [...A, (err: unknown, r: R) => void]) => void;

export interface DeflateLib {
  /** libdeflate_deflate_decompress with actual_out NULL: 0 only for a stream that fills `cap` exactly. */
  decompress(d: unknown, src: Uint8Array, n: number, out: Uint8Array, cap: number, actual: null): number;
  /** The same on koffi's threads; a decompressor serves one call at a time. */
  decompressAsync: Async<[d: unknown, src: Uint8Array, n: number, out: Uint8Array, cap: number, actual: null], number>;
  /** This thread's decompressor (for decompress). */
  decompressor: unknown;
  /** A new decompressor (libdeflate_alloc_decompressor), for calls made at once. */
  newDecompressor(): unknown;
}

export interface ZstdLib {
  decompress(out: Uint8Array, cap: number, src: Uint8Array, n: number): number | bigint;
  /** The same on koffi's threads (ZSTD_decompress makes its own context per call). */
  decompressAsync: Async<[out: Uint8Array, cap: number, src: Uint8Array, n: number], number | bigint>;
  isError(r: number | bigint): number;
  /** ZSTD_getErrorCode (70: dstSize_tooSmall). */
  errorCode(r: number | bigint): number;
  createCCtx(): unknown;
  /** ZSTD_compress2: one frame of `src`, as ZSTD_compressStream2(ZSTD_e_end) makes it in one call. */
  compress2(cctx: unknown, dst: Uint8Array, cap: number, src: Uint8Array, n: number): number | bigint;
}

export interface ZlibLib {
  deflateInit2(strm: unknown, level: number, method: number, windowBits: number, memLevel: number, strategy: number, version: string, size: number): number;
  deflate(strm: unknown, flush: number): number;
  deflateEnd(strm: unknown): number;
  version: string;
}

interface Loaded { koffi?: Koffi; deflate?: DeflateLib | null; zstd?: ZstdLib | null; zlib?: ZlibLib | null; errors: Record<string, string> }

const loaded: Loaded = { errors: {} };

/** The koffi module, or undefined (with the reason kept) when it cannot be loaded here. */
export function koffiModule(): Koffi | undefined {
  if (loaded.koffi === undefined && loaded.errors.koffi === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      loaded.koffi = require('koffi') as Koffi;
    } catch (e) {
      loaded.errors.koffi = (e as Error).message.split('\n')[0]!;
    }
  }
  return loaded.koffi;
}

function bind<K extends 'deflate' | 'zstd' | 'zlib'>(name: K, make: (k: Koffi) => NonNullable<Loaded[K]>): NonNullable<Loaded[K]> | undefined {
  if (loaded[name] === undefined) {
    const k = koffiModule();
    if (k === undefined) return undefined;
    try {
      (loaded as unknown as Record<string, unknown>)[name] = make(k);
    } catch (e) {
      loaded.errors[name] = (e as Error).message.split('\n')[0]!;
      (loaded as unknown as Record<string, unknown>)[name] = null;
    }
  }
  return loaded[name] ?? undefined;
}

/** libdeflate's decompressor (Debian: libdeflate0), or undefined. */
export function deflateLib(): DeflateLib | undefined {
  return bind('deflate', (k) => {
    const lib = k.load('libdeflate.so.0');
    const alloc = lib.func('void *libdeflate_alloc_decompressor()');
    const decompress = lib.func('int libdeflate_deflate_decompress(void *d, const uint8_t *in, size_t in_nbytes, uint8_t *out, size_t out_nbytes_avail, void *actual_out)');
    return {
      decompress: decompress as unknown as DeflateLib['decompress'],
      decompressAsync: decompress.async as DeflateLib['decompressAsync'],
      decompressor: alloc(),
      newDecompressor: () => alloc(),
    };
  });
}

/** libzstd, both ways (Debian: libzstd1), or undefined. */
export function zstdLib(): ZstdLib | undefined {
  return bind('zstd', (k) => {
    const lib = k.load('libzstd.so.1');
    const isError = lib.func('unsigned int ZSTD_isError(size_t code)');
    const errorCode = lib.func('int ZSTD_getErrorCode(size_t code)');
    const decompress = lib.func('size_t ZSTD_decompress(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t src_size)');
    return {
      decompress: decompress as unknown as ZstdLib['decompress'],
      decompressAsync: decompress.async as ZstdLib['decompressAsync'],
      isError: (r) => isError(r) as number,
      errorCode: (r) => errorCode(r) as number,
      createCCtx: lib.func('void *ZSTD_createCCtx()') as unknown as ZstdLib['createCCtx'],
      compress2: lib.func('size_t ZSTD_compress2(void *cctx, uint8_t *dst, size_t cap, const uint8_t *src, size_t n)') as unknown as ZstdLib['compress2'],
    };
  });
}

/** libz's deflate (Debian: zlib1g), or undefined. */
export function zlibLib(): ZlibLib | undefined {
  return bind('zlib', (k) => {
    const z = k.load('libz.so.1', { deep: true });
    return {
      deflateInit2: z.func('int deflateInit2_(void *strm, int level, int method, int windowBits, int memLevel, int strategy, const char *version, int stream_size)') as unknown as ZlibLib['deflateInit2'],
      deflate: z.func('int deflate(void *strm, int flush)') as unknown as ZlibLib['deflate'],
      deflateEnd: z.func('int deflateEnd(void *strm)') as unknown as ZlibLib['deflateEnd'],
      version: z.func('const char *zlibVersion()')() as string,
    };
  });
}

/** Why `name` ('koffi', 'deflate', 'zstd', 'zlib') could not be bound, once it was tried. */
export function codecLibError(name: 'koffi' | 'deflate' | 'zstd' | 'zlib'): string | undefined {
  return loaded.errors[name] ?? (name !== 'koffi' ? loaded.errors.koffi : undefined);
}
