// The body of one download, from the sink's current offset to the end: sizes checked against
// what the server declared and what the caller allows, and a dropped connection resumed with
// `Range` (validated by `If-Range`) when the server supports it.

import { Qcow2Error } from '../../model/errors';
import { discard, header, HttpClient, isTransient, networkError, statusError, transientError } from './client';
import { ChunkCollector } from './collect';
import { redactUrl } from './url';

/** Bytes received so far and the size the server declared (absent when it did not say). */
export interface Progress {
  readonly received: number;
  readonly total?: number;
}

/** Called as bytes arrive (once per chunk), and once at the start of each request. */
export type ProgressCallback = (progress: Progress) => void;

/** What a resumed request needs to know about the first response, kept beside a partial file. */
export interface ResumeState {
  /** The full size, once a server declared it. */
  total?: number;
  /** A strong ETag of the file, for If-Range. */
  etag?: string;
  /** Its Last-Modified date, for If-Range when there is no strong ETag. */
  lastModified?: string;
  /** The server answers Range requests (Accept-Ranges: bytes, or it sent a 206). */
  ranges?: boolean;
}

/** Where received bytes go. */
export interface Sink {
  /** Bytes the sink holds: a resumed request starts here. */
  readonly offset: number;
  /** Append bytes. */
  write(chunk: Buffer): Promise<void>;
  /** Forget every byte and start again at 0; throws when the sink cannot (bytes already handed on). */
  restart(): Promise<void>;
}

export interface TransferOptions {
  /** The most bytes the whole file may have; more is refused before it fills the disk. */
  maxSize?: number | bigint;
  /** Progress of the body. */
  onProgress?: ProgressCallback;
  /** Attempts that make no progress after a dropped connection before giving up. Default 3. */
  retries?: number;
  /** Milliseconds before the first retry; each further retry waits twice as long, at most 10 s. Default 500. */
  retryDelayMs?: number;
  /** Called when a response tells more about the file (to keep beside a partial file). */
  onResumeState?: (state: ResumeState) => void | Promise<void>;
  /** Aborts the download. */
  signal?: AbortSignal;
}

/** The property a size cap is reported under. */
export const MAX_SIZE_PROPERTY = 'sourceMaxSize';

function safeSize(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d+$/.test(text.trim())) return undefined;
  const n = Number(text.trim());
  return Number.isSafeInteger(n) ? n : Number.MAX_SAFE_INTEGER;
}

function contentRange(text: string | undefined): { start: number; end: number; total?: number } | undefined {
  const m = text === undefined ? null : /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(text);
  if (m === null) return undefined;
  const total = m[3] === '*' ? undefined : safeSize(m[3]);
  return { start: Number(m[1]), end: Number(m[2]), ...(total !== undefined ? { total } : {}) };
}

/** REFUSED: the file is `size` bytes (as declared), or more than `cap` (as received, undeclared). */
function tooLarge(url: URL, cap: number, size?: number): Qcow2Error {
  const is = size !== undefined ? `is ${size} bytes, over the ${cap} bytes allowed` : `is more than the ${cap} bytes allowed`;
  return new Qcow2Error(
    'REFUSED',
    `${redactUrl(url)} ${is} (${MAX_SIZE_PROPERTY}); nothing was kept. Raise ${MAX_SIZE_PROPERTY} if the file is expected to be this large`,
    { file: redactUrl(url), property: MAX_SIZE_PROPERTY },
  );
}

function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Receive `url` into `sink` from `sink.offset` to the end and return the file's size. Resumes
 * with `Range: bytes=<offset>-` (and `If-Range` when `state` holds a validator) after a dropped
 * connection or a body that stopped short of its declared length, when the server supports
 * ranges; a server that answers a range request with the whole file (200) makes the sink start
 * over. Refuses a declared or received size over `maxSize` at once, and a body longer than its
 * declared length. `state` is updated in place as responses arrive.
 */
export async function transfer(client: HttpClient, url: URL, sink: Sink, options: TransferOptions = {}, state: ResumeState = {}): Promise<number> {
  const cap = options.maxSize === undefined ? undefined : Number(options.maxSize);
  const retries = options.retries ?? 3;
  let furthest = sink.offset;
  let failures = 0;
  for (;;) {
    const offset = sink.offset;
    let current = url;
    try {
      const headers: Record<string, string> = {};
      if (offset > 0) {
        headers.range = `bytes=${offset}-`;
        const validator = state.etag ?? state.lastModified;
        if (validator !== undefined) headers['if-range'] = validator;
      }
      const res = await client.get(url, headers);
      current = res.url;
      let total: number | undefined;
      if (res.status === 206 && offset > 0) {
        const range = contentRange(header(res.headers, 'content-range'));
        if (range === undefined || range.start !== offset || (range.total !== undefined && range.end !== range.total - 1)) {
          discard(res.body);
          throw new Qcow2Error('HTTP', `${redactUrl(current)} answered a request for bytes ${offset}- with another range (${header(res.headers, 'content-range') ?? 'none'}); the server's range support is broken`, {
            file: redactUrl(url),
          });
        }
        total = range.total;
        state.ranges = true;
      } else if (res.status === 416 && offset > 0) {
        // The partial bytes are longer than the file now is: it changed; start over.
        discard(res.body);
        await sink.restart();
        clearValidators(state);
        continue;
      } else if (res.status === 200) {
        if (offset > 0) await sink.restart(); // range ignored, or If-Range found the file changed
        total = safeSize(header(res.headers, 'content-length'));
        const etag = header(res.headers, 'etag');
        const lastModified = header(res.headers, 'last-modified');
        clearValidators(state);
        if (etag !== undefined && !etag.startsWith('W/')) state.etag = etag;
        if (lastModified !== undefined) state.lastModified = lastModified;
        state.ranges = /\bbytes\b/i.test(header(res.headers, 'accept-ranges') ?? '');
      } else {
        discard(res.body);
        throw statusError(res.status, res.url, url);
      }
      if (total !== undefined) {
        if (state.total !== undefined && state.total !== total && sink.offset > 0) {
          discard(res.body);
          throw new Qcow2Error('HTTP', `${redactUrl(url)} changed size during the download (${state.total} bytes, then ${total}); try again`, { file: redactUrl(url) });
        }
        state.total = total;
      }
      if (cap !== undefined && total !== undefined && total > cap) {
        discard(res.body);
        throw tooLarge(url, cap, total);
      }
      await options.onResumeState?.(state);
      options.onProgress?.({ received: sink.offset, ...(total !== undefined ? { total } : {}) });
      const collector = new ChunkCollector();
      try {
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          const end = sink.offset + chunk.length;
          if (total !== undefined && end > total) {
            throw new Qcow2Error('HTTP', `${redactUrl(current)} sent more bytes than its Content-Length (${total}); the server is broken, nothing was kept`, {
              file: redactUrl(url),
            });
          }
          if (cap !== undefined && end > cap) throw tooLarge(url, cap);
          await sink.write(chunk);
          collector.received(chunk.length);
          options.onProgress?.({ received: sink.offset, ...(total !== undefined ? { total } : {}) });
        }
      } catch (e) {
        res.body.destroy();
        if (Qcow2Error.isInstance(e) || !isTransient(e)) throw e;
        const of = total !== undefined ? ` of ${total}` : '';
        const code = (e as { code?: string }).code;
        throw transientError(
          code === 'BODY_TIMEOUT'
            ? `${current.host} stopped sending data after ${sink.offset}${of} bytes: ${redactUrl(url)}`
            : `The connection to ${current.host} closed after ${sink.offset}${of} bytes: ${redactUrl(url)}`,
          url,
          e,
        );
      }
      if (total !== undefined && sink.offset < total) {
        throw transientError(`The connection to ${current.host} closed after ${sink.offset} of ${total} bytes: ${redactUrl(url)}`, url);
      }
      return sink.offset;
    } catch (e) {
      const err = networkError(e, current);
      if (!isTransient(e) && !isTransient(err)) throw err;
      if (sink.offset > furthest) {
        furthest = sink.offset;
        failures = 0;
      } else {
        failures++;
      }
      if (sink.offset > 0 && state.ranges !== true) {
        throw new Qcow2Error(
          'CONNECTION',
          `${err.message}\nThe server does not support resuming (no Accept-Ranges: bytes), so the ${sink.offset} bytes received were dropped; try again`,
          { file: redactUrl(url), cause: e },
        );
      }
      if (failures > retries) {
        const gaveUp = new Qcow2Error('CONNECTION', `${err.message}\nGave up after ${retries + 1} attempts in a row that received nothing new; try again later`, {
          file: redactUrl(url),
          cause: e,
        });
        if (sink.offset > 0) resumable.add(gaveUp);
        throw gaveUp;
      }
      if (failures > 0) await delay(Math.min((options.retryDelayMs ?? 500) * 2 ** (failures - 1), 10_000), options.signal);
    }
  }
}

const resumable = new WeakSet<object>();

/**
 * True when `e` ended a transfer that a later one can resume from the bytes received (the
 * connection kept breaking on a server that supports ranges). Other failures leave nothing
 * worth keeping.
 */
export function canResumeLater(e: unknown): boolean {
  return typeof e === 'object' && e !== null && resumable.has(e);
}

function clearValidators(state: ResumeState): void {
  delete state.etag;
  delete state.lastModified;
  delete state.total;
}
