// Downloads without the cache: into a file published only once verified, or as a stream that
// fails instead of ending when the bytes do not match the checksum.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Readable } from 'stream';
import { fsyncDir } from '../../qcow2/ops/create';
import { Qcow2Error } from '../../model/errors';
import { Checksum, toChecksum, verifyChecksum } from './checksum';
import { HttpClient, HttpOptions } from './client';
import { FileSink, StreamSink } from './sink';
import { ResumeState, transfer, TransferOptions } from './transfer';
import { parseSourceUrl, redactUrl } from './url';

/** Everything a download is told: how to reach the server, what to expect, what to report. */
export interface DownloadOptions extends HttpOptions, Omit<TransferOptions, 'onResumeState' | 'signal'> {
  /** `sha256:<hex>` or `sha512:<hex>`, checked over every byte received. */
  checksum: Checksum | string;
}

/** A finished, verified download. */
export interface Downloaded {
  readonly size: number;
  readonly checksum: Checksum;
}

/** A temp name beside `file` (hidden, unique per process and call). */
export function tempNameFor(file: string, suffix: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}-${crypto.randomBytes(4).toString('hex')}.${suffix}`);
}

/**
 * Download `url` to `dest`, a file that must not exist: bytes go to a temp name beside it and
 * are linked to `dest` only when their checksum matches; on any failure the temp file is removed
 * and `dest` never appears. A dropped connection resumes in place (Range) when the server allows.
 */
export async function downloadFile(url: string | URL, dest: string, options: DownloadOptions): Promise<Downloaded> {
  const u = typeof url === 'string' ? parseSourceUrl(url) : url;
  const checksum = toChecksum(options.checksum);
  const target = path.resolve(dest);
  if (fs.existsSync(target)) {
    throw new Qcow2Error('EXISTS', `${target} already exists; a download never replaces a file`, { file: target });
  }
  const temp = tempNameFor(target, 'download');
  const client = new HttpClient(options);
  let sink: FileSink | undefined;
  try {
    sink = await FileSink.open(temp, checksum.algorithm, 'wx');
    const size = await transfer(client, u, sink, options);
    verifyChecksum(checksum, sink.digest.current(), redactUrl(u));
    await sink.sync();
    await sink.close();
    try {
      await fs.promises.link(temp, target); // fails rather than replace a file that appeared meanwhile
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new Qcow2Error('EXISTS', `${target} appeared during the download; it was left as it is`, { file: target });
      throw new Qcow2Error('IO', `Could not create ${target}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, { file: target, cause: e });
    }
    fsyncDir(path.dirname(target));
    return { size, checksum };
  } finally {
    await sink?.close();
    await fs.promises.rm(temp, { force: true });
    await client.close();
  }
}

/** A download as a stream, with the size the server declared. */
export interface SourceStream {
  /**
   * The bytes, from the first. It ends only when all arrived and matched the checksum;
   * otherwise it fails (CHECKSUM, CONNECTION, HTTP, REFUSED): whoever wrote the bytes somewhere must then
   * delete what they wrote. Destroying it stops the download.
   */
  readonly stream: Readable;
  /** The size the server declared, when it did. */
  readonly total?: number;
}

/**
 * Download `url` as a stream, without the cache. Resolves once the server has answered (so a
 * 404 or a size over `maxSize` rejects here); a dropped connection resumes with Range inside
 * the stream when the server supports it, else the stream fails.
 */
export async function openSourceStream(url: string | URL, options: DownloadOptions): Promise<SourceStream> {
  const u = typeof url === 'string' ? parseSourceUrl(url) : url;
  const checksum = toChecksum(options.checksum);
  const what = redactUrl(u);
  const stop = new AbortController();
  const signal = options.signal !== undefined ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const client = new HttpClient({ ...options, signal });
  const sink = new StreamSink(checksum.algorithm, what);
  const state: ResumeState = {};
  let settled = false;
  sink.stream.on('close', () => {
    if (!settled) stop.abort();
  });
  return new Promise<SourceStream>((resolve, reject) => {
    let answered = false;
    transfer(client, u, sink, {
      ...options,
      signal,
      onResumeState: () => {
        if (answered) return;
        answered = true;
        resolve({ stream: sink.stream, ...(state.total !== undefined ? { total: state.total } : {}) });
      },
    }, state)
      .then(() => {
        verifyChecksum(checksum, sink.digest.current(), what);
        settled = true;
        sink.stream.end();
      })
      .catch((e: unknown) => {
        settled = true;
        if (answered) {
          sink.stream.destroy(e as Error);
        } else {
          sink.stream.destroy(); // nobody holds the stream: the promise carries the error
          reject(e);
        }
      })
      .finally(() => client.close());
  });
}
