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
// thread and up to (cores - 1) pool workers take clusters from a shared batch
// (SharedArrayBuffer, an atomic cursor) and the caller waits (Atomics.wait) until the batch is
// done. The caller stays synchronous (the compressed copy places clusters in guest order as each
// batch completes); the order of the results is the clusters' order whatever thread made them.
// A compressor has two batch slots: the caller fills one's input in place while the other
// compresses, and the results are views of the slot's output, so no cluster is copied on its
// way to or from the libraries (zlib aside: its stream reads and writes native buffers).

import { Qcow2Error } from '../../model/errors';
import { codecLibError, koffiModule, zlibLib, zstdLib } from './codec-lib';
import { codecPool } from './codecs';
import { cores } from './threads';

export type CompressionKind = 'zlib' | 'zstd';

export interface ClusterCompressor {
  /**
   * Compress the `input.length / cs` clusters of `input` (its length a multiple of `cs`), all
   * at once. Each result is the compressed bytes, or undefined when they would not fit in
   * cs - 1 bytes.
   */
  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined>;
  /**
   * The next of the two batch slots, to fill (its input), start and later finish: a caller can
   * read and write while the other slot compresses. Throws when it has not been finished.
   */
  slot(): CompressSlot;
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

/**
 * One batch's shared memory: control words, the clusters in, the compressed clusters out (each
 * at its cluster's place), their lengths. A compressor has two, so that one compresses while the
 * caller reads the next into the other and writes the results of the one before.
 */
export class CompressSlot {
  readonly ctrl = new Int32Array(new SharedArrayBuffer(CTRL_WORDS * 4));
  readonly input: Uint8Array;
  private readonly out: Uint8Array;
  private readonly lens: Int32Array;
  private count = 0;
  private gen = 0;
  private id: number | undefined;
  private failure: Error | undefined;
  /** Started and not yet finished. */
  busy = false;

  constructor(private readonly c: PooledCompressor, readonly capacity: number) {
    this.input = new Uint8Array(new SharedArrayBuffer(capacity * c.cs));
    this.out = new Uint8Array(new SharedArrayBuffer(capacity * c.cs));
    this.lens = new Int32Array(new SharedArrayBuffer(capacity * 4));
  }

  /** Start compressing the first `n` clusters of `input`: the pool's workers begin at once. */
  start(n: number): void {
    if (this.busy) throw new Error('compress slot started twice');
    const { ctrl } = this;
    this.busy = true;
    this.count = n;
    this.failure = undefined;
    // Every claim of this slot's previous batch is done (DONE reached its count): a new one starts.
    this.gen = (Atomics.load(ctrl, GEN) + 1) & 0x7fff;
    Atomics.store(ctrl, DONE, 0);
    Atomics.store(ctrl, COUNT, n);
    Atomics.store(ctrl, NEXT, this.gen << 16);
    Atomics.store(ctrl, GEN, this.gen);
    const helpers = Math.min(this.c.threads - 1, n - (this.c.callerTakesWork ? 1 : 0));
    if (helpers > 0) {
      this.id = codecPool().send(helpers, (i) => ({
        op: 'compress', id: i, kind: this.c.kind, cs: this.c.cs, gen: this.gen,
        ctrl: ctrl.buffer as SharedArrayBuffer, inp: this.input.buffer as SharedArrayBuffer, out: this.out.buffer as SharedArrayBuffer, lens: this.lens.buffer as SharedArrayBuffer,
      }), { fail: () => undefined }, (e) => { this.failure ??= e; });
    }
  }

  /**
   * Take the clusters no worker has taken, wait for the rest, and return the results in order:
   * views of this slot's memory, valid until it starts again.
   */
  finish(): Array<Uint8Array | undefined> {
    const { ctrl, count: n, c } = this;
    const cs = c.cs;
    try {
      if (c.callerTakesWork || this.id === undefined) work(c.kind, cs, this.gen, ctrl, this.input, this.out, this.lens, false);
      // The workers' claims: a worker that has stopped leaves its cluster undone, and the wait says so.
      for (let d = Atomics.load(ctrl, DONE); d < n; d = Atomics.load(ctrl, DONE)) {
        if (Atomics.wait(ctrl, DONE, d, 10_000) === 'timed-out' && Atomics.load(ctrl, DONE) === d) {
          throw new Qcow2Error('IO', `${c.kind} compression stopped: a codec thread did not finish its cluster${this.failure ? ` (${this.failure.message})` : ''}`);
        }
      }
    } finally {
      if (this.id !== undefined) codecPool().done(this.id);
      this.id = undefined;
      this.busy = false;
    }
    const results: Array<Uint8Array | undefined> = [];
    for (let i = 0; i < n; i++) {
      const len = this.lens[i]!;
      if (len === -2) throw new Qcow2Error('IO', `${c.kind} compression failed (cluster ${i} of the batch)`);
      results.push(len < 0 ? undefined : this.out.subarray(i * cs, i * cs + len));
    }
    return results;
  }
}

class PooledCompressor implements ClusterCompressor {
  private readonly slots: CompressSlot[];
  private turn = 0;

  constructor(readonly kind: CompressionKind, readonly cs: number, readonly threads: number, readonly callerTakesWork = true) {
    try {
      binding(kind, cs);
    } catch (e) {
      const lib = kind === 'zlib' ? 'libz.so.1 (zlib1g)' : 'libzstd.so.1 (libzstd1)';
      throw new Qcow2Error('UNSUPPORTED', `Compressed output (${kind}) needs ${lib} and the koffi module: ${(e as Error).message.split('\n')[0]}. Install the library, or write the image uncompressed`);
    }
    const perBatch = Math.max(1, Math.floor(BATCH_BYTES / cs));
    this.slots = [new CompressSlot(this, perBatch), new CompressSlot(this, perBatch)];
  }

  get byWorkers(): number {
    return this.slots.reduce((n, s) => n + Atomics.load(s.ctrl, BY_WORKERS), 0);
  }

  slot(): CompressSlot {
    const s = this.slots[this.turn]!;
    if (s.busy) throw new Error('both compress slots are busy: finish one first');
    this.turn ^= 1;
    return s;
  }

  compress(input: Uint8Array, cs: number): Array<Uint8Array | undefined> {
    if (cs !== this.cs || input.length % cs !== 0) throw new Qcow2Error('IO', `compress: ${input.length} bytes are not whole ${this.cs}-byte clusters`);
    const results: Array<Uint8Array | undefined> = [];
    for (let p = 0; p < input.length;) {
      const s = this.slot();
      const n = Math.min(s.capacity, (input.length - p) / cs);
      s.input.set(input.subarray(p, p + n * cs));
      s.start(n);
      for (const r of s.finish()) results.push(r?.slice());
      p += n * cs;
    }
    return results;
  }

  /** Nothing to stop: the pool's workers outlive a compressor, and none is inside a library once a batch is finished. */
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
