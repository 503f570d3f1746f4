// Streaming decompression of a compressed source (gzip by Node's zlib, xz by xz-decompress:
// xz-embedded in WebAssembly, zstd by fzstd: pure JS), bounded in what it may produce, and
// opening a stream as its content: detect, decompress once, detect again.

import { pipeline, Readable, Transform, TransformCallback } from 'stream';
import * as zlib from 'zlib';
import { Qcow2Error } from '../../model/errors';
import { Compression, ContentFormat, DETECT_BYTES, describeFormat, detectFormat } from './detect';

/** zstd windows above this are refused (zstd's own default limit for decompression, 2^27). */
export const ZSTD_MAX_WINDOW = 1 << 27;

export interface DecompressOptions {
  /** The most bytes decompression may produce (a bomb stops there). */
  maxOutput?: number | bigint;
  /** What is being decompressed, for messages (a file name or a redacted URL). */
  what?: string;
}

function damaged(compression: Compression, what: string, detail: string, cause?: unknown): Qcow2Error {
  return new Qcow2Error('INVALID_IMAGE', `The ${compression} data of ${what} is damaged or truncated (${detail}); download it again`, {
    file: what,
    ...(cause !== undefined ? { cause } : {}),
  });
}

/** fzstd's streaming decoder as a Transform; the first frame's window is checked before decoding. */
class ZstdDecode extends Transform {
  private decoder: import('fzstd').Decompress | undefined;
  private checked = false;
  private head = Buffer.alloc(0);

  constructor(private readonly what: string) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      if (!this.checked) {
        this.head = Buffer.concat([this.head, chunk]);
        if (this.head.length < 14) return cb();
        this.checked = true;
        checkZstdWindow(this.head, this.what);
        chunk = this.head;
      }
      this.decoder ??= new (loadFzstd().Decompress)((data) => {
        this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      });
      this.decoder.push(chunk);
      cb();
    } catch (e) {
      cb(Qcow2Error.isInstance(e) ? e : damaged('zstd', this.what, (e as Error).message, e));
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      if (!this.checked) {
        checkZstdWindow(this.head, this.what);
        this.decoder ??= new (loadFzstd().Decompress)((data) => this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
        this.decoder.push(this.head);
      }
      this.decoder!.push(new Uint8Array(0), true);
      cb();
    } catch (e) {
      cb(Qcow2Error.isInstance(e) ? e : damaged('zstd', this.what, (e as Error).message, e));
    }
  }
}

function loadFzstd(): typeof import('fzstd') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('fzstd') as typeof import('fzstd');
}

/** Refuse a zstd frame whose window would make the decoder allocate more than ZSTD_MAX_WINDOW. */
function checkZstdWindow(head: Buffer, what: string): void {
  let at = 0;
  // Skippable frames (magic 0x184D2A5?) carry a 4-byte length; step over those in this head.
  while (head.length >= at + 8 && (head[at]! & 0xf0) === 0x50 && head.readUInt32LE(at) >>> 4 === 0x184d2a5) at += 8 + head.readUInt32LE(at + 4);
  if (head.length < at + 6 || head.readUInt32LE(at) !== 0xfd2fb528) return; // the decoder reports what is wrong
  const fhd = head[at + 4]!;
  const singleSegment = (fhd & 0x20) !== 0;
  let window: number;
  if (singleSegment) {
    const fcsField = [1, 2, 4, 8][fhd >> 6]!;
    const dictField = [0, 1, 2, 4][fhd & 3]!;
    const p = at + 5 + dictField;
    if (head.length < p + fcsField) return;
    window = fcsField === 1 ? head[p]! : fcsField === 2 ? head.readUInt16LE(p) + 256 : fcsField === 4 ? head.readUInt32LE(p) : Number(head.readBigUInt64LE(p));
  } else {
    const wd = head[at + 5]!;
    const exponent = wd >> 3;
    const base = 2 ** (10 + exponent);
    window = base + (base / 8) * (wd & 7);
  }
  if (window > ZSTD_MAX_WINDOW) {
    throw new Qcow2Error(
      'UNSUPPORTED',
      `${what} is zstd-compressed with a ${Math.round(window / 2 ** 20)} MiB window, over the ${ZSTD_MAX_WINDOW / 2 ** 20} MiB this decoder allows (compressed with --long or --ultra); decompress it first, or recompress with a default level`,
      { file: what },
    );
  }
}

const XZ_ERRORS: Record<number, string> = {
  2: 'an integrity check other than CRC32 or CRC64 (recompress with xz --check=crc64)',
  3: 'out of memory',
  4: 'a dictionary over 64 MiB (recompress with xz -9 or lower, without a larger --lzma2=dict)',
  5: 'not an xz stream',
  // xz-embedded says OPTIONS_ERROR also for a SHA-256 check, as it is built without XZ_DEC_ANY_CHECK.
  6: 'options this decoder lacks: an integrity check other than CRC32 or CRC64, or a filter other than LZMA2 (recompress with xz --check=crc64, without BCJ filters)',
  7: 'corrupt data',
  8: 'the data ends early',
};

/** xz-decompress's error ("get_next_output failed with error code N") in words. */
function xzError(e: unknown, what: string): Qcow2Error {
  if (Qcow2Error.isInstance(e)) return e;
  const m = /error code (\d+)/.exec(String((e as Error)?.message));
  const code = m === null ? undefined : Number(m[1]);
  if (code === 2 || code === 4 || code === 6) {
    return new Qcow2Error('UNSUPPORTED', `${what} is xz-compressed with ${XZ_ERRORS[code]}; decompress it first`, { file: what, cause: e });
  }
  return damaged('xz', what, code !== undefined && XZ_ERRORS[code] !== undefined ? XZ_ERRORS[code] : 'the stream ends early', e);
}

/**
 * The decompressed bytes of `input`, compressed with `compression`, as a stream that fails
 * (INVALID_IMAGE for damage, REFUSED past `maxOutput`, UNSUPPORTED for options the decoder lacks)
 * rather than produce wrong bytes. Destroying the result stops the decoder and destroys `input`.
 *
 * xz streams are decoded one at a time per process (xz-decompress shares one WebAssembly
 * instance); a second waits for the first to end, so read each to its end or destroy it.
 */
export function decompress(input: Readable, compression: Compression, options: DecompressOptions = {}): Readable {
  const what = options.what ?? 'the source';
  const max = options.maxOutput === undefined ? Number.MAX_SAFE_INTEGER : Number(options.maxOutput);
  let decoded: Readable;
  if (compression === 'xz') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { XzReadableStream } = require('xz-decompress') as typeof import('xz-decompress');
    const web = new XzReadableStream(pullStream(input));
    decoded = Readable.fromWeb(web as unknown as import('stream/web').ReadableStream<Uint8Array>);
  } else {
    decoded = pipeline(input, compression === 'gzip' ? zlib.createGunzip() : new ZstdDecode(what), () => undefined);
  }
  async function* limited(): AsyncGenerator<Buffer> {
    let count = 0;
    try {
      for await (const chunk of decoded as AsyncIterable<Buffer>) {
        count += chunk.length;
        if (count > max) {
          throw new Qcow2Error('REFUSED', `${what} decompresses (${compression}) to more than the ${max} bytes allowed; nothing was kept. Raise the size limit if the image is expected to be this large`, {
            file: what,
          });
        }
        yield chunk;
      }
    } catch (e) {
      throw mapError(e as Error, compression, what);
    } finally {
      decoded.destroy();
      input.destroy();
    }
  }
  const out = Readable.from(limited(), { objectMode: false });
  // A generator never started runs no finally: destroy the decoder when the output closes.
  out.once('close', () => {
    decoded.destroy();
    input.destroy();
  });
  return out;
}

/**
 * `input` as a web ReadableStream that reads only when pulled. (Node 20's Readable.toWeb runs
 * the stream in flowing mode and throws an uncaught ERR_INVALID_STATE when data arrives after
 * the web stream was cancelled, as xz-decompress does when its reader stops early.)
 */
function pullStream(input: Readable): ReadableStream<Uint8Array> {
  const it = (input as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const { done, value } = await it.next();
        try {
          if (done) controller.close();
          else controller.enqueue(value);
        } catch {
          // cancelled meanwhile: the bytes are not wanted
        }
      },
      async cancel() {
        await it.return?.();
      },
    },
    { highWaterMark: 0 },
  );
}

function mapError(err: Error, compression: Compression, what: string): Error {
  if (Qcow2Error.isInstance(err)) return err;
  if ((err as { code?: string }).code === 'ERR_STREAM_PREMATURE_CLOSE') return err;
  if (compression === 'xz') return xzError(err, what);
  if (compression === 'gzip') return damaged('gzip', what, /unexpected end/i.test(err.message) ? 'the data ends early' : 'corrupt data', err);
  return damaged(compression, what, err.message, err);
}

/**
 * The first `n` bytes of `stream` (or all of it when shorter), and a stream of all its bytes
 * from the first: `stream` itself must not be read any more. (Putting bytes back with unshift()
 * fails once a short stream has ended, so the bytes read go before the rest in a new stream.)
 */
export async function peek(stream: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const chunks: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const chunk = await new Promise<Buffer | null>((resolve, reject) => {
      if (stream.errored) return reject(stream.errored);
      const read = stream.read() as Buffer | null;
      if (read !== null) return resolve(read);
      if (stream.readableEnded || stream.destroyed) return resolve(null);
      const cleanup = () => {
        stream.off('readable', onReadable);
        stream.off('end', onEnd);
        stream.off('close', onEnd);
        stream.off('error', onError);
      };
      const onReadable = () => {
        const c = stream.read() as Buffer | null;
        if (c !== null) {
          cleanup();
          resolve(c);
        }
      };
      const onEnd = () => {
        cleanup();
        resolve(null);
      };
      const onError = (e: Error) => {
        cleanup();
        reject(e);
      };
      stream.on('readable', onReadable);
      stream.on('end', onEnd);
      stream.on('close', onEnd);
      stream.on('error', onError);
    });
    if (chunk === null) break;
    chunks.push(chunk);
    have += chunk.length;
  }
  async function* all(): AsyncGenerator<Buffer> {
    yield* chunks;
    yield* stream as AsyncIterable<Buffer>;
  }
  const head = Buffer.concat(chunks);
  const out = Readable.from(all(), { objectMode: false });
  out.once('close', () => stream.destroy());
  return { head: head.subarray(0, n), stream: out };
}

/** A source stream opened as its content. */
export interface OpenedContent {
  /** What the stream's bytes are: raw or qcow2 (after decompression). */
  readonly format: Extract<ContentFormat, { format: 'raw' | 'qcow2' }>;
  /** The container it came in, when compressed. */
  readonly compression?: Compression;
  /** The content's bytes (decompressed when it was compressed), starting at byte 0. */
  readonly stream: Readable;
}

/**
 * Open `input` as an image's content: detect its format by its leading bytes; when it is gzip,
 * xz or zstd, decompress it (at most `maxOutput` bytes) and detect what is inside. Refuses
 * (UNSUPPORTED) formats we do not import and content compressed twice. On a refusal `input`
 * is destroyed.
 */
export async function openContent(input: Readable, options: DecompressOptions = {}): Promise<OpenedContent> {
  const what = options.what ?? 'the source';
  let outer: ContentFormat;
  let inner: ContentFormat;
  let stream = input;
  let compression: Compression | undefined;
  try {
    const first = await peek(input, DETECT_BYTES);
    stream = first.stream;
    outer = detectFormat(first.head);
    inner = outer;
    if (outer.format === 'gzip' || outer.format === 'xz' || outer.format === 'zstd') {
      compression = outer.format;
      const inside = await peek(decompress(stream, compression, options), DETECT_BYTES);
      stream = inside.stream;
      inner = detectFormat(inside.head);
    }
  } catch (e) {
    stream.destroy();
    input.destroy();
    throw e;
  }
  if (inner.format === 'raw' || inner.format === 'qcow2') {
    return { format: inner, stream, ...(compression !== undefined ? { compression } : {}) };
  }
  stream.destroy();
  input.destroy();
  const within = compression !== undefined ? ` inside ${describeFormat(outer)} data` : '';
  if (inner.format === 'unsupported') {
    throw new Qcow2Error('UNSUPPORTED', `${what} is ${inner.name}${within}, which cannot be imported; ${inner.hint}`, { file: what });
  }
  throw new Qcow2Error('UNSUPPORTED', `${what} is compressed twice (${describeFormat(inner)}${within}); decompress it once first`, { file: what });
}
