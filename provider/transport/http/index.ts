// Sources from http(s) URLs: checksum-verified downloads, the cache keyed by checksum, and the
// pieces the import path builds on.

export { fetchSource, detectFileFormat } from './fetch';
export type { FetchSourceOptions, FetchedSource } from './fetch';
export { downloadFile, openSourceStream } from './download';
export type { DownloadOptions, Downloaded, SourceStream } from './download';
export { SourceCache, defaultCacheDir, CACHE_DIR_ENV, CACHE_MAX_SIZE_ENV, DEFAULT_CACHE_MAX_SIZE } from './cache';
export type { CacheOptions, CachedSource } from './cache';
export { parseChecksum, formatChecksum, StreamingDigest } from './checksum';
export type { Checksum, ChecksumAlgorithm } from './checksum';
export type { HttpOptions } from './client';
export type { Progress, ProgressCallback } from './transfer';
export { isHttpUrl, parseSourceUrl, redactUrl } from './url';
export { trustedCertificates } from './tls';
