// Cluster compression for compressed output (`convert -c`), as QEMU's qcow2-threads.c does it,
// with the same libraries QEMU links: the system's libz.so.1 and libzstd.so.1 through koffi, so
// that a compressed cluster holds the bytes qemu-img writes (Node's bundled zlib is a fork whose
// deflate output differs). zlib: raw deflate, default level, 4 KiB window, memLevel 9; zstd: one
// frame from ZSTD_compressStream2(ZSTD_e_end) with default parameters. A cluster whose
// compressed form does not fit in cluster size - 1 bytes is written uncompressed (-ENOMEM).
//
// The work runs on a pool of threads sized to the machine's cores, as io/codecs.ts decodes: the
// calling thread and (cores - 1) worker threads take clusters from one shared batch
// (SharedArrayBuffer, an atomic cursor) and the caller waits (Atomics.wait) until the batch is
// done. The caller stays synchronous (the compressed copy places clusters in guest order as each
// batch completes); the order of the results is the clusters' order whatever thread made them.
// The workers run this module's binding from its source text (no file to find beside a bundle).
//
// libz is loaded with RTLD_DEEPBIND: Node exports its own zlib's symbols, and without it libz's
// internal calls would bind to those (a different deflate_state: a crash).

import { Qcow2Error } from '../../model/errors';
import { cores } from './threads';

export type CompressionKind = 'zlib' | 'zstd';

export interface ClusterCompressor {
  /**
   * Compress the `input.length / cs` clusters of `input` (its length a multiple of `cs`). Each
   * result is the compressed bytes, or undefined when they would not fit in cs - 1 bytes.
   */
  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined>;
  /** Clusters the worker threads compressed so far (the rest: the calling thread). */
  readonly byWorkers: number;
  close(): void;
}

/**
 * One thread's binding: compress one cluster from native memory. Self-contained (no imports,
 * nothing from outside its body) because worker threads get its source text.
 */
function makeBinding(koffi: typeof import('koffi'), kind: CompressionKind, cs: number) {
  const inPtr = koffi.alloc('uint8', cs);
  const outPtr = koffi.alloc('uint8', cs);
  const input = new Uint8Array(koffi.view(inPtr, cs));
  const output = new Uint8Array(koffi.view(outPtr, cs));
  const limit = cs - 1;
  let run: () => number;
  if (kind === 'zlib') {
    const z = koffi.load('libz.so.1', { deep: true });
    const deflateInit2 = z.func('int deflateInit2_(void *strm, int level, int method, int windowBits, int memLevel, int strategy, const char *version, int stream_size)');
    const deflate = z.func('int deflate(void *strm, int flush)');
    const deflateEnd = z.func('int deflateEnd(void *strm)');
    const version = z.func('const char *zlibVersion()')() as string;
    // z_stream on LP64: next_in 0, avail_in 8, next_out 24, avail_out 32; 112 bytes.
    const SIZE = 112;
    const strmPtr = koffi.alloc('uint8', SIZE);
    const strm = new DataView(koffi.view(strmPtr, SIZE));
    run = () => {
      for (let i = 0; i < SIZE; i += 4) strm.setUint32(i, 0);
      if (deflateInit2(strmPtr, -1, 8, -12, 9, 0, version, SIZE) !== 0) return -2;
      strm.setBigUint64(0, koffi.address(inPtr), true);
      strm.setUint32(8, cs, true);
      strm.setBigUint64(24, koffi.address(outPtr), true);
      strm.setUint32(32, limit, true);
      const r = deflate(strmPtr, 4 /* Z_FINISH */) as number;
      const n = limit - strm.getUint32(32, true);
      deflateEnd(strmPtr);
      return r === 1 /* Z_STREAM_END */ ? n : r === 0 ? -1 : -2;
    };
  } else {
    const z = koffi.load('libzstd.so.1');
    const create = z.func('void *ZSTD_createCCtx()');
    const free = z.func('size_t ZSTD_freeCCtx(void *cctx)');
    const compress2 = z.func('size_t ZSTD_compressStream2(void *cctx, void *output, void *input, int endOp)');
    // ZSTD_outBuffer / ZSTD_inBuffer: { pointer, size_t size, size_t pos }.
    const outBufPtr = koffi.alloc('uint8', 24), inBufPtr = koffi.alloc('uint8', 24);
    const outBuf = new DataView(koffi.view(outBufPtr, 24)), inBuf = new DataView(koffi.view(inBufPtr, 24));
    run = () => {
      const cctx = create();
      if (!cctx) return -2;
      outBuf.setBigUint64(0, koffi.address(outPtr), true);
      outBuf.setBigUint64(8, BigInt(limit), true);
      outBuf.setBigUint64(16, 0n, true);
      inBuf.setBigUint64(0, koffi.address(inPtr), true);
      inBuf.setBigUint64(8, BigInt(cs), true);
      inBuf.setBigUint64(16, 0n, true);
      const ret = BigInt(compress2(cctx, outBufPtr, inBufPtr, 2 /* ZSTD_e_end */) as number | bigint);
      const pos = Number(outBuf.getBigUint64(16, true));
      free(cctx);
      // qcow2_zstd_compress: not finished in one call is -ENOMEM when more room was asked for.
      if (ret !== 0n) return ret > BigInt(limit - pos) ? -1 : -2;
      return pos;
    };
  }
  return { input, output, run };
}

/** Batch layout in shared memory: control words, then per-cluster result lengths. */
const GEN = 0, NEXT = 1, DONE = 2, COUNT = 3, STOP = 4, EXITED = 5, BY_WORKERS = 6, CTRL_WORDS = 8;

/**
 * Claim the next cluster of batch `gen` (of `n`), or -1. The cursor holds the batch's
 * generation beside the index, so a thread still looking at an earlier batch claims nothing of
 * a later one. Self-contained: worker threads get its source text.
 */
function claim(ctrl: Int32Array, gen: number, n: number): number {
  for (;;) {
    const v = Atomics.load(ctrl, 1 /* NEXT */);
    if (v >>> 16 !== (gen & 0x7fff) || (v & 0xffff) >= n) return -1;
    if (Atomics.compareExchange(ctrl, 1, v, v + 1) === v) return v & 0xffff;
  }
}

/** A worker thread's loop over batches (its source text is what the thread runs). */
function workerLoop(koffiPath: string, kind: CompressionKind, cs: number, ctrlSab: SharedArrayBuffer, inSab: SharedArrayBuffer, outSab: SharedArrayBuffer, lensSab: SharedArrayBuffer, bindingSource: string, claimSource: string) {
  // The control words again: this function runs from its source text, without the module's names.
  // eslint-disable-next-line @typescript-eslint/no-shadow
  const GEN = 0, DONE = 2, COUNT = 3, STOP = 4, EXITED = 5, BY_WORKERS = 6;
  const ctrl = new Int32Array(ctrlSab), lens = new Int32Array(lensSab);
  try {
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    const make = new Function(`return (${bindingSource});`)();
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    const claimNext = new Function(`return (${claimSource});`)() as (c: Int32Array, g: number, n: number) => number;
    loop(make(require(koffiPath), kind, cs), claimNext);
  } finally {
    // The pool waits for this before it lets the process go on: a thread torn down while it is
    // inside the native binding brings the process down.
    Atomics.add(ctrl, EXITED, 1);
    Atomics.notify(ctrl, EXITED);
  }
  function loop(b: ReturnType<typeof makeBinding>, claimNext: (c: Int32Array, g: number, n: number) => number): void {
  const inp = new Uint8Array(inSab), out = new Uint8Array(outSab);
  let gen = 0;
  for (;;) {
    Atomics.wait(ctrl, GEN, gen);
    gen = Atomics.load(ctrl, GEN);
    if (Atomics.load(ctrl, STOP)) return;
    const n = Atomics.load(ctrl, COUNT);
    for (let i = claimNext(ctrl, gen, n); i >= 0; i = claimNext(ctrl, gen, n)) {
      let len = -2;
      try {
        b.input.set(inp.subarray(i * cs, (i + 1) * cs));
        len = b.run();
        if (len >= 0) out.set(b.output.subarray(0, len), i * cs);
      } finally {
        lens[i] = len;
        Atomics.add(ctrl, BY_WORKERS, 1);
        if (Atomics.add(ctrl, DONE, 1) + 1 === n) Atomics.notify(ctrl, DONE);
      }
    }
  }
  }
}

/** Clusters per shared batch (the caller's larger inputs go through in pieces). */
const BATCH_BYTES = 4 << 20; // at most 8192 clusters (512-byte ones): the cursor's 16 index bits

class PooledCompressor implements ClusterCompressor {
  private readonly binding: ReturnType<typeof makeBinding>;
  private readonly workers: import('worker_threads').Worker[] = [];
  private readonly ctrl: Int32Array;
  private readonly inp: Uint8Array;
  private readonly out: Uint8Array;
  private readonly lens: Int32Array;
  private readonly perBatch: number;

  constructor(readonly kind: CompressionKind, readonly cs: number, threads: number, private readonly callerTakesWork = true) {
    let koffi: typeof import('koffi');
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      koffi = require('koffi') as typeof import('koffi');
      this.binding = makeBinding(koffi, kind, cs);
    } catch (e) {
      const lib = kind === 'zlib' ? 'libz.so.1 (zlib1g)' : 'libzstd.so.1 (libzstd1)';
      throw new Qcow2Error('UNSUPPORTED', `Compressed output (${kind}) needs ${lib} and the koffi module: ${(e as Error).message.split('\n')[0]}. Install the library, or write the image uncompressed`);
    }
    this.perBatch = Math.max(1, Math.floor(BATCH_BYTES / cs));
    const ctrlSab = new SharedArrayBuffer(CTRL_WORDS * 4);
    const inSab = new SharedArrayBuffer(this.perBatch * cs), outSab = new SharedArrayBuffer(this.perBatch * cs);
    const lensSab = new SharedArrayBuffer(this.perBatch * 4);
    this.ctrl = new Int32Array(ctrlSab);
    this.inp = new Uint8Array(inSab);
    this.out = new Uint8Array(outSab);
    this.lens = new Int32Array(lensSab);
    if (threads > 1) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { Worker } = require('worker_threads') as typeof import('worker_threads');
      const src = `(${workerLoop.toString()})(...require('worker_threads').workerData)`;
      const data = [require.resolve('koffi'), kind, cs, ctrlSab, inSab, outSab, lensSab, makeBinding.toString(), claim.toString()];
      for (let i = 1; i < threads; i++) {
        const w = new Worker(src, { eval: true, workerData: data });
        // A worker that cannot start takes no cluster: the other threads do the work.
        w.on('error', () => undefined);
        w.unref();
        this.workers.push(w);
      }
    }
  }

  /** Clusters the worker threads compressed so far (the rest: the calling thread). */
  get byWorkers(): number {
    return Atomics.load(this.ctrl, BY_WORKERS);
  }

  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined> {
    if (cs !== this.cs || input.length % cs !== 0) throw new Qcow2Error('IO', `compress: ${input.length} bytes are not whole ${this.cs}-byte clusters`);
    const results: Array<Uint8Array | undefined> = [];
    for (let p = 0; p < input.length; p += this.perBatch * cs) {
      const n = Math.min(this.perBatch, (input.length - p) / cs);
      this.inp.set(input.subarray(p, p + n * cs));
      const { ctrl, lens } = this;
      // Every claim of the previous batch is done (DONE reached its count): a new one starts.
      const gen = (Atomics.load(ctrl, GEN) + 1) & 0x7fff;
      Atomics.store(ctrl, DONE, 0);
      Atomics.store(ctrl, COUNT, n);
      Atomics.store(ctrl, NEXT, gen << 16);
      Atomics.store(ctrl, GEN, gen);
      if (this.workers.length) Atomics.notify(ctrl, GEN);
      // This thread takes clusters too, then waits for the ones the workers took.
      for (let i = this.callerTakesWork || !this.workers.length ? claim(ctrl, gen, n) : -1; i >= 0; i = claim(ctrl, gen, n)) {
        this.binding.input.set(this.inp.subarray(i * cs, (i + 1) * cs));
        const len = this.binding.run();
        if (len >= 0) this.out.set(this.binding.output.subarray(0, len), i * cs);
        lens[i] = len;
        Atomics.add(ctrl, DONE, 1);
      }
      for (let d = Atomics.load(ctrl, DONE); d < n; d = Atomics.load(ctrl, DONE)) Atomics.wait(ctrl, DONE, d, 1000);
      for (let i = 0; i < n; i++) {
        const len = lens[i]!;
        if (len === -2) throw new Qcow2Error('IO', `${this.kind} compression failed (cluster ${p / cs + i} of the batch)`);
        results.push(len < 0 ? undefined : this.out.slice(i * cs, i * cs + len));
      }
    }
    return results;
  }

  /**
   * Stop the workers and wait (at most 10 s) until each has left the native binding and ended
   * on its own: one terminated while it loads or runs the binding aborts the process.
   */
  close(): void {
    const n = this.workers.splice(0).length;
    Atomics.store(this.ctrl, STOP, 1);
    Atomics.store(this.ctrl, GEN, (Atomics.load(this.ctrl, GEN) + 1) & 0x7fff);
    Atomics.notify(this.ctrl, GEN);
    const until = Date.now() + 10_000;
    for (let e = Atomics.load(this.ctrl, EXITED); e < n && Date.now() < until; e = Atomics.load(this.ctrl, EXITED)) Atomics.wait(this.ctrl, EXITED, e, 100);
  }
}

/**
 * A compressor for `kind` on `threads` threads (default: one per core). `callerTakesWork`
 * false leaves every cluster to the worker threads (tests prove with it that they compress).
 */
export function clusterCompressor(kind: CompressionKind, cs: number, threads = Math.max(1, cores()), callerTakesWork = true): ClusterCompressor {
  return new PooledCompressor(kind, cs, threads, callerTakesWork);
}
