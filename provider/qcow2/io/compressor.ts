// Cluster compression for compressed output (`convert -c`), as QEMU's qcow2-threads.c does it,
// with the same libraries QEMU links (io/codec-lib.ts: the system's libz.so.1 and libzstd.so.1
// through koffi), so that a compressed cluster holds the bytes qemu-img writes. zlib: raw
// deflate, default level, 4 KiB window, memLevel 9; zstd: one frame with default parameters
// (level 3), as ZSTD_compressStream2(ZSTD_e_end) makes it in one call (ZSTD_compress2 is that
// call; one context per thread, reused: zstd's output does not depend on a context's history).
// A cluster whose compressed form does not fit in cluster size - 1 bytes is written
// uncompressed (QEMU's -ENOMEM).
//
// The work runs on the codec pool (io/codecs.ts, the threads that also decode): the calling
// thread and up to (cores - 1) pool workers take clusters from one shared batch
// (SharedArrayBuffer, an atomic cursor) and the caller waits (Atomics.wait) until the batch is
// done. The caller stays synchronous (the compressed copy places clusters in guest order as each
// batch completes); the order of the results is the clusters' order whatever thread made them.
// The caller may fill the batch's input in place (input()), and the results are views of the
// batch's output: no cluster is copied on its way to or from the libraries.

import { Qcow2Error } from '../../model/errors';
import { codecLibError, koffiModule, zlibLib, zstdLib } from './codec-lib';
import { codecPool } from './codecs';
import { cores } from './threads';

export type CompressionKind = 'zlib' | 'zstd';

export interface ClusterCompressor {
  /**
   * Compress the `input.length / cs` clusters of `input` (its length a multiple of `cs`). Each
   * result is the compressed bytes, or undefined when they would not fit in cs - 1 bytes. The
   * results are valid until the next call.
   */
  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined>;
  /**
   * A buffer of at least `bytes` to fill with clusters and hand to compress() (no copy then),
   * or undefined when `bytes` is more than one batch holds.
   */
  input(bytes: number): Uint8Array | undefined;
  /** Clusters the worker threads compressed so far (the rest: the calling thread). */
  readonly byWorkers: number;
  close(): void;
}

/** What a codec worker is sent to compress: a batch in shared memory, claimed as decode batches are. */
export interface CompressRequest {
  id: number;
  kind: CompressionKind;
  cs: number;
  gen: number;
  ctrl: SharedArrayBuffer;
  inp: SharedArrayBuffer;
  out: SharedArrayBuffer;
  lens: SharedArrayBuffer;
}

/** One thread's compression of cluster `i` of `inp` into the same place in `out`: its length, -1 (does not fit), -2 (failed). */
type Run = (inp: Uint8Array, out: Uint8Array, i: number) => number;

/** ZSTD_getErrorCode's dstSize_tooSmall. */
const ZSTD_DST_TOO_SMALL = 70;

const bindings = new Map<string, Run>();

/** This thread's compression of `kind` clusters of `cs` bytes (made once per thread). */
function binding(kind: CompressionKind, cs: number): Run {
  const key = `${kind}/${cs}`;
  let run = bindings.get(key);
  if (run !== undefined) return run;
  const limit = cs - 1;
  if (kind === 'zstd') {
    const z = zstdLib();
    if (z === undefined) throw new Error(codecLibError('zstd') ?? 'libzstd.so.1 not loaded');
    const cctx = z.createCCtx();
    if (!cctx) throw new Error('ZSTD_createCCtx failed');
    run = (inp, out, i) => {
      const r = z.compress2(cctx, out.subarray(i * cs, i * cs + limit), limit, inp.subarray(i * cs, (i + 1) * cs), cs);
      if (z.isError(r)) return z.errorCode(r) === ZSTD_DST_TOO_SMALL ? -1 : -2;
      return Number(r);
    };
  } else {
    const z = zlibLib();
    const koffi = koffiModule();
    if (z === undefined || koffi === undefined) throw new Error(codecLibError('zlib') ?? 'libz.so.1 not loaded');
    // The stream's buffers in native memory: z_stream holds their addresses.
    const inPtr = koffi.alloc('uint8', cs), outPtr = koffi.alloc('uint8', cs);
    const input = new Uint8Array(koffi.view(inPtr, cs)), output = new Uint8Array(koffi.view(outPtr, cs));
    // z_stream on LP64: next_in 0, avail_in 8, next_out 24, avail_out 32; 112 bytes.
    const SIZE = 112;
    const strmPtr = koffi.alloc('uint8', SIZE);
    const strm = new DataView(koffi.view(strmPtr, SIZE));
    run = (inp, out, i) => {
      input.set(inp.subarray(i * cs, (i + 1) * cs));
      for (let b = 0; b < SIZE; b += 4) strm.setUint32(b, 0);
      if (z.deflateInit2(strmPtr, -1, 8, -12, 9, 0, z.version, SIZE) !== 0) return -2;
      strm.setBigUint64(0, koffi.address(inPtr), true);
      strm.setUint32(8, cs, true);
      strm.setBigUint64(24, koffi.address(outPtr), true);
      strm.setUint32(32, limit, true);
      const r = z.deflate(strmPtr, 4 /* Z_FINISH */);
      const n = limit - strm.getUint32(32, true);
      z.deflateEnd(strmPtr);
      if (r !== 1 /* Z_STREAM_END */) return r === 0 ? -1 : -2;
      out.set(output.subarray(0, n), i * cs);
      return n;
    };
  }
  bindings.set(key, run);
  return run;
}

/** Batch control words (Int32Array): the batch's generation, the cursor, clusters done, the count, clusters by workers. */
const GEN = 0, NEXT = 1, DONE = 2, COUNT = 3, BY_WORKERS = 4, CTRL_WORDS = 8;

/**
 * Claim the next cluster of batch `gen` (of `n`), or -1. The cursor holds the batch's
 * generation beside the index, so a thread still looking at an earlier batch (a worker that
 * heard of it late) claims nothing of a later one.
 */
function claim(ctrl: Int32Array, gen: number, n: number): number {
  for (;;) {
    const v = Atomics.load(ctrl, NEXT);
    if (v >>> 16 !== (gen & 0x7fff) || (v & 0xffff) >= n) return -1;
    if (Atomics.compareExchange(ctrl, NEXT, v, v + 1) === v) return v & 0xffff;
  }
}

/**
 * Claim and compress clusters of batch `gen` until none are left. The binding is made only
 * once a cluster is claimed, so a thread never enters a library for a batch already done.
 */
function work(kind: CompressionKind, cs: number, gen: number, ctrl: Int32Array, inp: Uint8Array, out: Uint8Array, lens: Int32Array, worker: boolean): void {
  const n = Atomics.load(ctrl, COUNT);
  for (let i = claim(ctrl, gen, n); i >= 0; i = claim(ctrl, gen, n)) {
    let len = -2;
    try {
      len = binding(kind, cs)(inp, out, i);
    } finally {
      lens[i] = len;
      if (worker) Atomics.add(ctrl, BY_WORKERS, 1);
      if (Atomics.add(ctrl, DONE, 1) + 1 === n) Atomics.notify(ctrl, DONE);
    }
  }
}

/** A codec worker's part of a compress request (codec-worker.ts). */
export function compressInWorker(req: CompressRequest): void {
  work(req.kind, req.cs, req.gen, new Int32Array(req.ctrl), new Uint8Array(req.inp), new Uint8Array(req.out), new Int32Array(req.lens), true);
}

/** Clusters per shared batch (the caller's larger inputs go through in pieces). */
const BATCH_BYTES = 4 << 20; // at most 8192 clusters (512-byte ones): the cursor's 16 index bits

class PooledCompressor implements ClusterCompressor {
  private readonly ctrl: Int32Array;
  private readonly inp: Uint8Array;
  private readonly out: Uint8Array;
  private readonly lens: Int32Array;
  private readonly perBatch: number;

  constructor(readonly kind: CompressionKind, readonly cs: number, private readonly threads: number, private readonly callerTakesWork = true) {
    try {
      binding(kind, cs);
    } catch (e) {
      const lib = kind === 'zlib' ? 'libz.so.1 (zlib1g)' : 'libzstd.so.1 (libzstd1)';
      throw new Qcow2Error('UNSUPPORTED', `Compressed output (${kind}) needs ${lib} and the koffi module: ${(e as Error).message.split('\n')[0]}. Install the library, or write the image uncompressed`);
    }
    this.perBatch = Math.max(1, Math.floor(BATCH_BYTES / cs));
    this.ctrl = new Int32Array(new SharedArrayBuffer(CTRL_WORDS * 4));
    this.inp = new Uint8Array(new SharedArrayBuffer(this.perBatch * cs));
    this.out = new Uint8Array(new SharedArrayBuffer(this.perBatch * cs));
    this.lens = new Int32Array(new SharedArrayBuffer(this.perBatch * 4));
  }

  get byWorkers(): number {
    return Atomics.load(this.ctrl, BY_WORKERS);
  }

  input(bytes: number): Uint8Array | undefined {
    return bytes <= this.inp.length ? this.inp : undefined;
  }

  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined> {
    if (cs !== this.cs || input.length % cs !== 0) throw new Qcow2Error('IO', `compress: ${input.length} bytes are not whole ${this.cs}-byte clusters`);
    const inPlace = input.buffer === this.inp.buffer && input.byteOffset === 0 && input.length <= this.inp.length;
    const results: Array<Uint8Array | undefined> = [];
    for (let p = 0; p < input.length; p += this.perBatch * cs) {
      const n = Math.min(this.perBatch, (input.length - p) / cs);
      if (!inPlace) this.inp.set(input.subarray(p, p + n * cs));
      this.run(n);
      for (let i = 0; i < n; i++) {
        const len = this.lens[i]!;
        if (len === -2) throw new Qcow2Error('IO', `${this.kind} compression failed (cluster ${p / cs + i} of the batch)`);
        // Views while the input is one batch; copies when a later batch reuses the output.
        const r = this.out.subarray(i * cs, i * cs + Math.max(0, len));
        results.push(len < 0 ? undefined : inPlace ? r : r.slice());
      }
    }
    return results;
  }

  /** One batch of `n` clusters in `inp`: this thread and the pool's workers, until every cluster is done. */
  private run(n: number): void {
    const { ctrl } = this;
    // Every claim of the previous batch is done (DONE reached its count): a new one starts.
    const gen = (Atomics.load(ctrl, GEN) + 1) & 0x7fff;
    Atomics.store(ctrl, DONE, 0);
    Atomics.store(ctrl, COUNT, n);
    Atomics.store(ctrl, NEXT, gen << 16);
    Atomics.store(ctrl, GEN, gen);
    const helpers = Math.min(this.threads - 1, n - 1);
    const pool = helpers > 0 ? codecPool() : undefined;
    let failure: Error | undefined;
    const id = pool?.send(helpers, (i) => ({
      op: 'compress', id: i, kind: this.kind, cs: this.cs, gen,
      ctrl: ctrl.buffer as SharedArrayBuffer, inp: this.inp.buffer as SharedArrayBuffer, out: this.out.buffer as SharedArrayBuffer, lens: this.lens.buffer as SharedArrayBuffer,
    }), { fail: () => undefined }, (e) => { failure ??= e; });
    try {
      if (this.callerTakesWork || pool === undefined) work(this.kind, this.cs, gen, ctrl, this.inp, this.out, this.lens, false);
      // The workers' claims: a worker that has stopped leaves its cluster undone, and the wait says so.
      for (let d = Atomics.load(ctrl, DONE); d < n; d = Atomics.load(ctrl, DONE)) {
        if (Atomics.wait(ctrl, DONE, d, 10_000) === 'timed-out' && Atomics.load(ctrl, DONE) === d) {
          throw new Qcow2Error('IO', `${this.kind} compression stopped: a codec thread did not finish its cluster${failure ? ` (${failure.message})` : ''}`);
        }
      }
    } finally {
      if (id !== undefined) pool!.done(id);
    }
  }

  /** Nothing to stop: the pool's workers outlive a compressor, and none is inside a library once compress() returns. */
  close(): void {}
}

/**
 * A compressor for `kind` on `threads` threads (default: one per core; the calling thread and
 * threads - 1 of the codec pool's). `callerTakesWork` false leaves every cluster to the worker
 * threads (tests prove with it that they compress).
 */
export function clusterCompressor(kind: CompressionKind, cs: number, threads = Math.max(1, cores()), callerTakesWork = true): ClusterCompressor {
  return new PooledCompressor(kind, cs, threads, callerTakesWork);
}
