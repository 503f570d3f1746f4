// An import's source made local, for both engines: a URL downloaded through the cache keyed by
// its checksum (verified over every byte received), a file's checksum verified when given, the
// format detected by content, and gzip/xz/zstd content decompressed into a temporary file in
// the cache folder (bounded by the size allowed). The engines then read a plain raw or qcow2
// file; which names inside it they may follow is the rules' question (validateSourceReference).
//
// Downloads and decompression run here, on the caller's thread and event loop, never in the
// native engine's workers: with a remote destination they stay on this machine, and only the
// converted image travels. The HTTP client and the cache are loaded only when a source needs
// them: a plain local file (the common import) does not pay for them.

import * as fs from 'fs';
import * as path from 'path';
import { Qcow2Error } from '../model/errors';
import { libc } from '../qcow2/io/libc';
import { Compression, ContentFormat, describeFormat, detectFileFormat } from '../transport/content/detect';
import { parseChecksum, StreamingDigest, verifyChecksum } from '../transport/http/checksum';
import { isHttpUrl, parseSourceUrl, redactUrl } from '../transport/http/url';
import type { ReferencePolicy } from '../rules/references';
import type { ImportOptions, ImportSource } from './engine';

/** A source as a local file the engines can open. */
export interface LocalSource {
  /** The file to read. */
  readonly path: string;
  /** Its format ('raw' or 'qcow2'), detected or as given. */
  readonly format: string;
  /** The source as messages name it: the path, or the URL with secrets redacted. */
  readonly label: string;
  /** The names a qcow2 source may follow (ImportSource.references, with its default). */
  readonly references: ReferencePolicy;
  /** True for a download: relative names inside it name nothing here. */
  readonly downloaded: boolean;
  /** Give back the cache entry and remove a temporary file; call once done. */
  release(): Promise<void>;
}

const CHUNK = 1 << 20;

/** What only a compressed source needs, loaded then: Node's streams, crypto and zlib would cost every plain import several ms of start-up. */
const decompressionModules = async () => ({
  crypto: await import('crypto'),
  pipeline: (await import('stream/promises')).pipeline,
  Writable: (await import('stream')).Writable,
  decompress: (await import('../transport/content/decompress')).decompress,
});

/** The checksum of a file, streamed. */
async function fileDigest(file: string, algorithm: 'sha256' | 'sha512'): Promise<StreamingDigest> {
  const digest = new StreamingDigest(algorithm);
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; ;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      digest.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return digest;
}

const ZERO = Buffer.alloc(64 << 10);

/**
 * Decompress `file` (`compression`) into a new sparse file in `dir`: blocks of zeros become
 * holes. At most `maxOutput` bytes; the file is removed again on any failure.
 */
async function decompressToFile(file: string, compression: Compression, dir: string, label: string, maxOutput?: bigint): Promise<string> {
  const { crypto, pipeline, Writable, decompress } = await decompressionModules();
  fs.mkdirSync(dir, { recursive: true });
  const out = path.join(dir, `.content-${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
  const fh = await fs.promises.open(out, 'wx', 0o600);
  let pos = 0;
  try {
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        (async () => {
          for (let p = 0; p < chunk.length; p += ZERO.length) {
            const piece = chunk.subarray(p, Math.min(chunk.length, p + ZERO.length));
            if (!piece.equals(ZERO.subarray(0, piece.length))) await fh.write(piece, 0, piece.length, pos + p);
          }
          pos += chunk.length;
        })().then(() => cb(), cb);
      },
    });
    const opts = { what: label, ...(maxOutput !== undefined ? { maxOutput } : {}) };
    await pipeline(decompress(fs.createReadStream(file, { highWaterMark: CHUNK }), compression, opts), sink);
    await fh.truncate(pos);
    await fh.close();
    return out;
  } catch (e) {
    await fh.close().catch(() => undefined);
    fs.rmSync(out, { force: true });
    throw e;
  }
}

function refuseFormat(f: ContentFormat, label: string, within?: ContentFormat): never {
  const inside = within !== undefined ? ` inside ${describeFormat(within)} data` : '';
  if (f.format === 'unsupported') throw new Qcow2Error('UNSUPPORTED', `${label} is ${f.name}${inside}, which cannot be imported; ${f.hint}`, { file: label, property: 'source' });
  throw new Qcow2Error('UNSUPPORTED', `${label} is compressed twice (${describeFormat(f)}${inside}); decompress it once first`, { file: label, property: 'source' });
}

/** How often the heap is trimmed while a downloaded source is in use (trimAfterDownload). */
const TRIM_EVERY_MS = 500;

/**
 * After a download, malloc's arenas keep the memory of the connection's buffers (the body
 * arrives in 64 KiB chunks, each freed only when V8 collects it, between smaller blocks still in
 * use), which the import that follows would add its own to: about 25 MiB after a 478 MiB
 * download. Given back now and, as later collections free the rest, every TRIM_EVERY_MS while
 * the source is in use; returns the function that stops it.
 */
function trimAfterDownload(): () => Promise<void> {
  const c = libc();
  if (c === undefined) return async () => undefined;
  c.trimHeap();
  const timer = setInterval(() => c.trimHeap(), TRIM_EVERY_MS);
  timer.unref();
  return async () => clearInterval(timer);
}

/**
 * Make `source` a local raw or qcow2 file: download a URL (through the cache), verify a
 * checksum, detect the format, decompress a compressed container. Nothing is created at the
 * destination here; a failure leaves nothing but the cache's own files (a resumable partial
 * download, at most).
 */
export async function prepareSource(source: ImportSource, options: ImportOptions = {}): Promise<LocalSource> {
  const url = isHttpUrl(source.path);
  const label = url ? redactUrl(source.path) : source.path;
  const checksum = source.checksum !== undefined ? parseChecksum(source.checksum) : undefined;
  // The cache: where downloads are kept, and where a decompressed source is written.
  const openCache = async (): Promise<import('../transport/http/cache').SourceCache> => new (await import('../transport/http/cache')).SourceCache(options.cache);
  const releases: Array<() => Promise<void>> = [];
  const release = async () => {
    for (const r of releases.splice(0).reverse()) await r().catch(() => undefined);
  };
  try {
    let file: string;
    let detected: ContentFormat | undefined;
    if (url) {
      if (checksum === undefined) {
        throw new Qcow2Error('INVALID_OPTION', `sourceChecksum is required for a URL source (${label}): give the 'sha256:<hex>' or 'sha512:<hex>' the publisher lists for the file`, {
          property: 'sourceChecksum',
        });
      }
      const { fetchSource } = await import('../transport/http/fetch');
      const got = await fetchSource(parseSourceUrl(source.path), {
        ...options.http,
        checksum,
        cache: await openCache(),
        ...(source.maxSize !== undefined ? { maxSize: source.maxSize } : {}),
        ...(options.download ? { onProgress: (p: { received: number; total?: number }) => options.download!(p.received, p.total) } : {}),
      });
      releases.push(() => got.release());
      file = got.path;
      detected = got.format;
      releases.push(trimAfterDownload());
    } else {
      file = source.path;
      let st: fs.Stats;
      try {
        st = fs.statSync(file);
      } catch {
        throw new Qcow2Error('NOT_FOUND', `Could not open '${file}': No such file or directory`, { file, property: 'source' });
      }
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new Qcow2Error('INVALID_OPTION', `'${file}' is not a regular file; a source must be an image file or an http(s) URL`, { file, property: 'source' });
      }
      if (checksum !== undefined) {
        const digest = await fileDigest(file, checksum.algorithm);
        verifyChecksum(checksum, digest.current(), file);
      }
    }
    const references: ReferencePolicy = source.references ?? (url ? [] : 'any');
    if (source.format !== undefined) {
      return { path: file, format: source.format, label, references, downloaded: url, release };
    }
    detected ??= await detectFileFormat(file);
    let format = detected;
    if (detected.format === 'gzip' || detected.format === 'xz' || detected.format === 'zstd') {
      const inner = await decompressToFile(file, detected.format, path.join((await openCache()).dir, 'tmp'), label, source.maxSize);
      releases.push(async () => fs.rmSync(inner, { force: true }));
      file = inner;
      format = await detectFileFormat(inner);
      if (format.format !== 'raw' && format.format !== 'qcow2') refuseFormat(format, label, detected);
    } else if (detected.format !== 'raw' && detected.format !== 'qcow2') {
      refuseFormat(detected, label);
    }
    return { path: file, format: format.format, label, references, downloaded: url, release };
  } catch (e) {
    await release();
    throw e;
  }
}

/**
 * prepareSource for each of several sources (convert SRC1 SRC2 ... DST), in order; `run` with
 * the local files (each source's own fields beside them), then every one released, also on a
 * failure.
 */
export async function withPreparedSources<T>(sources: readonly ImportSource[], options: ImportOptions,
  run: (locals: Array<{ local: LocalSource; source: ImportSource }>) => Promise<T>): Promise<T> {
  const prepared: Array<{ local: LocalSource; source: ImportSource }> = [];
  try {
    for (const { host: _where, ...source } of sources) prepared.push({ local: await prepareSource(source, options), source });
    return await run(prepared);
  } finally {
    for (const p of prepared) await p.local.release();
  }
}
