// Compressed clusters decoded in bulk, on every core: a window's clusters are split between the
// calling thread and a pool of worker threads (one per further core); stored and decoded bytes
// stay in shared memory and go straight into the window's buffer. (One thread fewer than
// cores: each worker is a V8 isolate of about 10 MiB, and the calling thread has little else
// to do while a window decodes.) Each decode is a plain synchronous call: into libdeflate (zlib clusters) or
// libzstd (zstd clusters) through koffi when those libraries are installed (Debian: libdeflate0,
// libzstd1), else Node's zlib or fzstd. libdeflate decodes a whole deflate stream about twice as
// fast as zlib; it is the fast path only: a cluster it does not decode to exactly one cluster is
// decoded again by spec/compress.ts, whose semantics are QEMU's (qcow2-threads.c), so a result
// never depends on which library is installed.

import type { Worker } from 'worker_threads';
import { errorFromData, ErrorData } from '../../model/errors';
import { QCOW2_COMPRESSION_TYPE_ZSTD } from '../spec/constants';
import { decompressCluster, zstdFrameLength } from '../spec/compress';
import { cores, startWorker } from './threads';

interface Native {
  deflate?: { decompress(d: unknown, src: Uint8Array, n: number, out: Uint8Array, cap: number, actual: null): number; decompressor: unknown };
  zstd?: { decompress(out: Uint8Array, cap: number, src: Uint8Array, n: number): number | bigint; isError(r: number | bigint): number };
}

let native: Native | undefined;

function load(): Native {
  if (native !== undefined) return native;
  native = {};
  if (process.env.QCOW2_NATIVE_CODECS === '0') return native;
  let koffi: typeof import('koffi');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    koffi = require('koffi') as typeof import('koffi');
  } catch {
    return native;
  }
  try {
    const lib = koffi.load('libdeflate.so.0');
    const alloc = lib.func('void *libdeflate_alloc_decompressor()');
    const decompress = lib.func('int libdeflate_deflate_decompress(void *d, const uint8_t *in, size_t in_nbytes, uint8_t *out, size_t out_nbytes_avail, void *actual_out)');
    native.deflate = { decompress: decompress as unknown as NonNullable<Native['deflate']>['decompress'], decompressor: alloc() };
  } catch {
    // not installed: Node's zlib
  }
  try {
    const lib = koffi.load('libzstd.so.1');
    const decompress = lib.func('size_t ZSTD_decompress(uint8_t *dst, size_t dst_cap, const uint8_t *src, size_t src_size)');
    const isError = lib.func('unsigned int ZSTD_isError(size_t code)');
    native.zstd = { decompress: decompress as (out: Uint8Array, cap: number, src: Uint8Array, n: number) => number, isError: (r) => isError(r) as number };
  } catch {
    // not installed: fzstd
  }
  return native;
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

/** What a decode worker is sent: buffers in shared memory, and the jobs. */
export interface DecodeRequest {
  id: number;
  stored: SharedArrayBuffer;
  storedOffset: number;
  out: SharedArrayBuffer;
  outOffset: number;
  jobs: DecodeJob[];
}

/** Run `jobs` on this thread (what a decode worker does with a request). */
export function runDecodeJobs(stored: Buffer, out: Buffer, jobs: readonly DecodeJob[]): void {
  let scratch: Buffer | undefined;
  for (const j of jobs) {
    const data = stored.subarray(j.from, j.from + j.size);
    if (j.within === 0 && j.length === j.clusterSize) {
      decodeCluster(data, out.subarray(j.to, j.to + j.clusterSize), j.compressionType, BigInt(j.at));
    } else {
      if (scratch === undefined || scratch.length !== j.clusterSize) scratch = Buffer.allocUnsafe(j.clusterSize);
      decodeCluster(data, scratch, j.compressionType, BigInt(j.at));
      out.set(scratch.subarray(j.within, j.within + j.length), j.to);
    }
  }
}

/** A buffer whose memory worker threads can share: `Buffer` over a SharedArrayBuffer. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}

interface Slot { worker: Worker; busy: number }

/**
 * Decoding on `threads` threads: this one and threads - 1 workers, started on first use; idle
 * workers never keep the process alive.
 */
export class ClusterDecoder {
  private readonly slots: Slot[] = [];
  private readonly waiting = new Map<number, { resolve(): void; reject(e: Error): void; slot: Slot }>();
  private nextId = 1;
  private readonly size: number;

  constructor(readonly threads: number = Math.max(1, Number(process.env.QCOW2_DECODE_THREADS) || cores())) {
    this.size = threads - 1;
  }

  /**
   * Decode `jobs` from `stored` into `out` (views of SharedArrayBuffers), split between the
   * workers and this thread. Resolves when every cluster is in `out`.
   */
  async decode(stored: Buffer, out: Buffer, jobs: DecodeJob[]): Promise<void> {
    const shared = stored.buffer instanceof SharedArrayBuffer && out.buffer instanceof SharedArrayBuffer;
    const parts = shared ? Math.max(1, Math.min(this.threads, Math.ceil(jobs.length / 8))) : 1;
    const per = Math.ceil(jobs.length / parts);
    const runs: Array<Promise<void>> = [];
    for (let i = per; i < jobs.length; i += per) runs.push(this.send(stored, out, jobs.slice(i, i + per)));
    try {
      runDecodeJobs(stored, out, jobs.slice(0, per));
    } finally {
      // Never return while a worker still writes into `out`.
      const settled = await Promise.allSettled(runs);
      const failed = settled.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    }
  }

  private send(stored: Buffer, out: Buffer, jobs: DecodeJob[]): Promise<void> {
    const slot = this.pick();
    const id = this.nextId++;
    const req: DecodeRequest = {
      id, stored: stored.buffer as SharedArrayBuffer, storedOffset: stored.byteOffset,
      out: out.buffer as SharedArrayBuffer, outOffset: out.byteOffset, jobs,
    };
    return new Promise<void>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, slot });
      if (slot.busy++ === 0) slot.worker.ref();
      slot.worker.postMessage(req);
    });
  }

  private pick(): Slot {
    const idle = this.slots.find((s) => s.busy === 0);
    if (idle !== undefined) return idle;
    if (this.slots.length < this.size) return this.spawn();
    return this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  private spawn(): Slot {
    const worker = startWorker(__dirname, 'decode-worker');
    const slot: Slot = { worker, busy: 0 };
    worker.on('message', (m: { id: number; error?: ErrorData }) => {
      const w = this.waiting.get(m.id);
      if (w === undefined) return;
      this.waiting.delete(m.id);
      if (--slot.busy === 0) slot.worker.unref();
      if (m.error !== undefined) w.reject(errorFromData(m.error));
      else w.resolve();
    });
    const fail = (why: string) => {
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      for (const [id, w] of this.waiting) {
        if (w.slot !== slot) continue;
        this.waiting.delete(id);
        w.reject(new Error(`a cluster decoding thread stopped (${why})`));
      }
    };
    worker.on('error', (e) => fail(e instanceof Error ? e.message : String(e)));
    worker.on('exit', (code) => fail(`exit code ${code}`));
    worker.unref();
    this.slots.push(slot);
    return slot;
  }
}

let shared: ClusterDecoder | undefined;

/** This thread's decoder pool. */
export function clusterDecoder(): ClusterDecoder {
  shared ??= new ClusterDecoder();
  return shared;
}
