// Compressed clusters decoded in bulk, on every core, by native code on koffi's threads: each
// cluster of a window is one asynchronous call into libdeflate (zlib clusters) or libzstd (zstd
// clusters) through koffi when those libraries are installed (Debian: libdeflate0, libzstd1),
// decoding from the window's stored bytes straight into its buffer, several queued at once (koffi
// runs them on libuv's thread pool); the calling thread only hands them out (about 10 µs a
// cluster). No isolate is started
// for them: a worker thread costs about 12 MiB of RSS and a start-up. libdeflate decodes a whole
// deflate stream about twice as fast as zlib; it is the fast path only: a cluster it does not
// decode to exactly one cluster is decoded again by spec/compress.ts, whose semantics are QEMU's
// (qcow2-threads.c), so a result never depends on which library is installed.
//
// Without those libraries (or koffi), clusters are decoded by Node's zlib or fzstd, split
// between the calling thread and the codec pool's worker threads (one per further core), stored
// and decoded bytes in shared memory; the same pool compresses (io/compressor.ts).

import type { Worker } from 'worker_threads';
import { errorFromData, ErrorData } from '../../model/errors';
import { QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD } from '../spec/constants';
import { decompressCluster, zstdFrameLength } from '../spec/compress';
import { cores, startWorker } from './threads';
import { deflateLib, zstdLib, type DeflateLib, type ZstdLib } from './codec-lib';

let native: { deflate?: DeflateLib; zstd?: ZstdLib } | undefined;

/** The native decoders of this thread (none with QCOW2_NATIVE_CODECS=0: spec/compress.ts decodes). */
function load(): { deflate?: DeflateLib; zstd?: ZstdLib } {
  if (native !== undefined) return native;
  if (process.env.QCOW2_NATIVE_CODECS === '0') return (native = {});
  const deflate = deflateLib(), zstd = zstdLib();
  return (native = { ...(deflate ? { deflate } : {}), ...(zstd ? { zstd } : {}) });
}

/** Which decoders this thread uses (for benchmarks and diagnostics). */
export function codecsInUse(): { zlib: 'libdeflate' | 'zlib'; zstd: 'libzstd' | 'fzstd' } {
  const n = load();
  return { zlib: n.deflate ? 'libdeflate' : 'zlib', zstd: n.zstd ? 'libzstd' : 'fzstd' };
}

/**
 * Decode one compressed cluster (`data`, as stored: the stream and its sector padding) into
 * `out` (exactly one cluster), on this thread. Errors are spec/compress.ts's.
 */
export function decodeCluster(data: Uint8Array, out: Buffer, compressionType: number, at: bigint): void {
  const n = load();
  const cs = out.length;
  if (compressionType === QCOW2_COMPRESSION_TYPE_ZSTD) {
    if (n.zstd) {
      let frame: number | undefined;
      try {
        frame = zstdFrameLength(data);
      } catch {
        // spec/compress.ts reports it
      }
      if (frame !== undefined) {
        const r = n.zstd.decompress(out, cs, data, frame);
        if (!n.zstd.isError(r) && Number(r) === cs) return;
      }
    }
  } else if (n.deflate) {
    // actual_out NULL: success only for a stream that ends having produced exactly cs bytes.
    if (n.deflate.decompress(n.deflate.decompressor, data, data.length, out, cs, null) === 0) return;
  }
  decompressCluster(data, cs, compressionType, at).copy(out);
}

/**
 * One cluster to decode: its stored bytes at [from, from + size) of the stored buffer; the
 * decoded bytes [within, within + length) go to `to` in the output buffer.
 */
export interface DecodeJob {
  from: number;
  size: number;
  to: number;
  within: number;
  length: number;
  clusterSize: number;
  compressionType: number;
  /** Host offset of the stored bytes (for messages). */
  at: number;
}

/** A job's fields, in order, as stored in shared memory (a Float64Array row per job). */
const FIELDS = ['from', 'size', 'to', 'within', 'length', 'clusterSize', 'compressionType', 'at'] as const;
/** The control words of a batch (Int32Array): the next job to claim, jobs done, failed. */
const NEXT = 0, DONE = 1, FAILED = 2;

/** What a decode worker is sent: a batch in shared memory. */
export interface DecodeRequest {
  id: number;
  ctrl: SharedArrayBuffer;
  jobs: SharedArrayBuffer;
  stored: SharedArrayBuffer;
  storedOffset: number;
  storedLength: number;
  out: SharedArrayBuffer;
  outOffset: number;
  outLength: number;
}

/** A batch of jobs that any thread may claim from, one at a time. */
export class DecodeBatch {
  readonly ctrl: Int32Array;
  readonly rows: Float64Array;
  readonly total: number;
  private scratch: Buffer | undefined;

  constructor(readonly stored: Buffer, readonly out: Buffer, ctrl: SharedArrayBuffer, rows: SharedArrayBuffer) {
    this.ctrl = new Int32Array(ctrl);
    this.rows = new Float64Array(rows);
    this.total = this.rows.length / FIELDS.length;
  }

  static of(stored: Buffer, out: Buffer, jobs: readonly DecodeJob[]): DecodeBatch {
    const rows = new Float64Array(new SharedArrayBuffer(jobs.length * FIELDS.length * 8));
    jobs.forEach((j, i) => FIELDS.forEach((f, k) => { rows[i * FIELDS.length + k] = j[f]; }));
    return new DecodeBatch(stored, out, new SharedArrayBuffer(12), rows.buffer as SharedArrayBuffer);
  }

  /** Claim and decode jobs until none are left (or one failed); throws the first failure here. */
  work(): void {
    const r = this.rows, n = FIELDS.length;
    for (;;) {
      if (Atomics.load(this.ctrl, FAILED) !== 0) return;
      const i = Atomics.add(this.ctrl, NEXT, 1);
      if (i >= this.total) return;
      const [from, size, to, within, length, cs, type, at] = [r[i * n]!, r[i * n + 1]!, r[i * n + 2]!, r[i * n + 3]!, r[i * n + 4]!, r[i * n + 5]!, r[i * n + 6]!, r[i * n + 7]!];
      try {
        const data = this.stored.subarray(from, from + size);
        if (within === 0 && length === cs) {
          decodeCluster(data, this.out.subarray(to, to + cs), type, BigInt(at));
        } else {
          if (this.scratch === undefined || this.scratch.length !== cs) this.scratch = Buffer.allocUnsafe(cs);
          decodeCluster(data, this.scratch, type, BigInt(at));
          this.out.set(this.scratch.subarray(within, within + length), to);
        }
      } catch (e) {
        this.fail();
        throw e;
      } finally {
        Atomics.add(this.ctrl, DONE, 1);
        Atomics.notify(this.ctrl, DONE);
      }
    }
  }

  fail(): void {
    Atomics.store(this.ctrl, FAILED, 1);
    Atomics.notify(this.ctrl, DONE);
  }

  get failed(): boolean {
    return Atomics.load(this.ctrl, FAILED) !== 0;
  }

  /** Resolves once every claimed job is done (or the batch failed): nothing writes into `out` after. */
  async finished(): Promise<void> {
    for (;;) {
      const done = Atomics.load(this.ctrl, DONE);
      if (done >= this.total || this.failed) return;
      const w = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> } }).waitAsync(this.ctrl, DONE, done);
      if (w.async) await w.value;
    }
  }
}

/** A buffer whose memory worker threads can share: `Buffer` over a SharedArrayBuffer. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}

/**
 * What a codec worker (codec-worker.ts) is sent: a batch to claim clusters of, decode or
 * compress (io/compressor.ts), identified by `id` for the failures it reports.
 */
export type CodecRequest = ({ op: 'decode' } & DecodeRequest) | ({ op: 'compress' } & import('./compressor').CompressRequest);

/**
 * The process's codec threads: worker threads (codec-worker.ts) that decode (ClusterDecoder) and
 * compress (io/compressor.ts) the batches they are sent, each claimed cluster by cluster by
 * whichever thread is running, the calling thread included. Started on first use, as many as a
 * batch asks for; idle workers never keep the process alive. A worker enters native code only
 * for a cluster it claimed, and every caller waits until its batch's claims are done, so no
 * worker is inside a library when the process ends.
 */
export class CodecPool {
  private readonly workers: Worker[] = [];
  private readonly errors = new Map<number, (e: Error) => void>();
  private readonly active = new Map<number, { fail(): void }>();
  private nextId = 1;
  private busy = 0;

  /** Worker threads started so far. */
  get started(): number {
    return this.workers.length;
  }

  /**
   * Send `req` (built for its id) to `threads` workers (started if need be) and return the id;
   * `onError` hears a worker's failure or its end. Every send is paired with a done(id).
   */
  send(threads: number, build: (id: number) => CodecRequest, batch: { fail(): void }, onError: (e: Error) => void): number {
    const id = this.nextId++;
    this.errors.set(id, onError);
    this.active.set(id, batch);
    if (this.busy++ === 0) for (const w of this.workers) w.ref();
    while (this.workers.length < threads) this.spawn();
    const req = build(id);
    for (const w of this.workers.slice(0, threads)) w.postMessage(req);
    return id;
  }

  done(id: number): void {
    this.active.delete(id);
    this.errors.delete(id);
    if (--this.busy === 0) for (const w of this.workers) w.unref();
  }

  private spawn(): void {
    const worker = startWorker(__dirname, 'codec-worker', 'qcow2/io');
    worker.on('message', (m: { id: number; error?: ErrorData }) => {
      if (m.error !== undefined) this.errors.get(m.id)?.(errorFromData(m.error));
    });
    const fail = (why: string) => {
      const i = this.workers.indexOf(worker);
      if (i >= 0) this.workers.splice(i, 1);
      for (const [id, b] of this.active) {
        this.errors.get(id)?.(new Error(`a codec thread stopped (${why})`));
        b.fail();
      }
    };
    worker.on('error', (e) => fail(e instanceof Error ? e.message : String(e)));
    worker.on('exit', (code) => fail(`exit code ${code}`));
    if (this.busy === 0) worker.unref();
    this.workers.push(worker);
  }
}

let pool: CodecPool | undefined;

/** The process's codec threads. */
export function codecPool(): CodecPool {
  pool ??= new CodecPool();
  return pool;
}

/** Decoding on `threads` threads: koffi's (native decoders), or this one and threads - 1 of the codec pool's. */
export class ClusterDecoder {
  private readonly size: number;
  /** libdeflate decompressors not in use by a call in flight. */
  private readonly idle: unknown[] = [];

  constructor(readonly threads: number = Math.max(1, Number(process.env.QCOW2_DECODE_THREADS) || cores())) {
    this.size = threads - 1;
  }

  /** Decode `jobs` from `stored` into `out`; for the codec pool to help, both must be views of SharedArrayBuffers. */
  async decode(stored: Buffer, out: Buffer, jobs: DecodeJob[]): Promise<void> {
    if (this.size > 0 && jobs.length >= 2 && jobs.every((j) => nativeAsync(j.compressionType))) {
      await this.decodeNative(stored, out, jobs);
      return;
    }
    const shared = stored.buffer instanceof SharedArrayBuffer && out.buffer instanceof SharedArrayBuffer;
    const batch = DecodeBatch.of(stored, out, jobs);
    if (!shared || this.size === 0 || jobs.length < 4) {
      batch.work();
      return;
    }
    let failure: Error | undefined;
    let heard: () => void = () => undefined;
    const failed = new Promise<void>((resolve) => { heard = resolve; });
    const p = codecPool();
    const id = p.send(this.size, (i) => ({
      op: 'decode', id: i, ctrl: batch.ctrl.buffer as SharedArrayBuffer, jobs: batch.rows.buffer as SharedArrayBuffer,
      stored: stored.buffer as SharedArrayBuffer, storedOffset: stored.byteOffset, storedLength: stored.length,
      out: out.buffer as SharedArrayBuffer, outOffset: out.byteOffset, outLength: out.length,
    }), batch, (e) => { failure ??= e; heard(); });
    try {
      try {
        batch.work();
      } finally {
        await batch.finished();
      }
      if (batch.failed) {
        await failed;
        throw failure;
      }
    } finally {
      p.done(id);
    }
  }

  /**
   * Every job a native call on koffi's threads, NATIVE_QUEUE at once; a cluster the library does not
   * decode to exactly one cluster is decoded again here (decodeCluster). Settles only once no
   * call is in flight, so nothing writes into `out` after it; rejects with the first failure.
   */
  private decodeNative(stored: Buffer, out: Buffer, jobs: DecodeJob[]): Promise<void> {
    const n = load();
    return new Promise<void>((resolve, reject) => {
      let next = 0, running = 0;
      let failure: unknown;
      const start = (): void => {
        while (running < NATIVE_QUEUE && next < jobs.length && failure === undefined) {
          const j = jobs[next++]!;
          const data = stored.subarray(j.from, j.from + j.size);
          const whole = j.within === 0 && j.length === j.clusterSize;
          const into = whole ? out.subarray(j.to, j.to + j.clusterSize) : Buffer.allocUnsafe(j.clusterSize);
          running++;
          const settle = (ok: boolean) => {
            running--;
            try {
              if (!ok) decodeCluster(data, into, j.compressionType, BigInt(j.at));
              if (!whole) out.set(into.subarray(j.within, j.within + j.length), j.to);
            } catch (e) {
              failure ??= e;
            }
            if (failure !== undefined ? running === 0 : next >= jobs.length && running === 0) {
              if (failure !== undefined) reject(failure);
              else resolve();
              return;
            }
            start();
          };
          try {
            if (j.compressionType === QCOW2_COMPRESSION_TYPE_ZSTD) {
              let frame: number | undefined;
              try {
                frame = zstdFrameLength(data);
              } catch {
                // decodeCluster reports it
              }
              if (frame === undefined) {
                settle(false);
                continue;
              }
              n.zstd!.decompressAsync(into, j.clusterSize, data, frame, (err, r) => settle(!err && !n.zstd!.isError(r) && Number(r) === j.clusterSize));
            } else {
              const d = this.idle.pop() ?? n.deflate!.newDecompressor();
              try {
                n.deflate!.decompressAsync(d, data, data.length, into, j.clusterSize, null, (err, r) => {
                  this.idle.push(d);
                  settle(!err && r === 0);
                });
              } catch (e) {
                this.idle.push(d);
                throw e;
              }
            }
          } catch {
            // koffi refused the call (its queue full): decoded here instead
            settle(false);
          }
        }
      };
      start();
    });
  }
}

/**
 * Native decodes queued at once. koffi runs them on libuv's thread pool (4 threads), which also
 * does the import's file reads and writes: 8 keeps the pool's threads supplied while this thread
 * is not scheduled, and leaves the reads and writes little to wait behind (2, 8 and 64 measured:
 * a compressed 1 GiB import in 3.78, 3.59 and 4.01 s, medians of 7 at load 7-8).
 */
const NATIVE_QUEUE = 8;

/** True when clusters of `compressionType` are decoded by a native library on koffi's threads. */
function nativeAsync(compressionType: number): boolean {
  const n = load();
  return compressionType === QCOW2_COMPRESSION_TYPE_ZSTD ? n.zstd !== undefined : compressionType === QCOW2_COMPRESSION_TYPE_ZLIB && n.deflate !== undefined;
}

let shared: ClusterDecoder | undefined;

/** This thread's decoder (on the codec pool). */
export function clusterDecoder(): ClusterDecoder {
  shared ??= new ClusterDecoder();
  return shared;
}
