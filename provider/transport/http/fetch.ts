// fetchSource: a URL and its checksum in, a verified local file out (through the cache), with
// its format detected by content. What import and convert call for an http(s) source.

import { ContentFormat, detectFileFormat } from '../content/detect';
import { toChecksum } from './checksum';
import { CachedSource, CacheOptions, SourceCache } from './cache';
import { DownloadOptions } from './download';
import { parseSourceUrl } from './url';

export { detectFileFormat };

export interface FetchSourceOptions extends DownloadOptions {
  /** The cache to use: its folder and size limit. Default: the default cache (see CacheOptions). */
  cache?: CacheOptions | SourceCache;
}

/** A verified source in the cache. */
export interface FetchedSource extends CachedSource {
  /** What the file is, by its leading bytes. */
  readonly format: ContentFormat;
}

/**
 * Download `url` (http or https) into the cache, or find it there, and return the verified file.
 * `checksum` (`sha256:<hex>` / `sha512:<hex>`, property `sourceChecksum`) is required and keys
 * the cache; `maxSize` refuses a larger file before it is stored; `onProgress` sees bytes as they
 * arrive (or the whole size at once for a cache hit). Release the result when done with the file.
 */
export async function fetchSource(url: string | URL, options: FetchSourceOptions): Promise<FetchedSource> {
  const u = typeof url === 'string' ? parseSourceUrl(url) : url;
  const checksum = toChecksum(options.checksum);
  const cache = options.cache instanceof SourceCache ? options.cache : new SourceCache({ ...options.cache, ...(options.env !== undefined && options.cache?.env === undefined ? { env: options.env } : {}) });
  const got = await cache.fetch(u, checksum, options);
  try {
    return { ...got, release: got.release, format: await detectFileFormat(got.path) };
  } catch (e) {
    await got.release();
    throw e;
  }
}
