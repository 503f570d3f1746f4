// Source content: what a file or stream is by its leading bytes, and decompression of gzip, xz
// and zstd containers.

export { detectFormat, describeFormat, DETECT_BYTES } from './detect';
export type { Compression, ContentFormat } from './detect';
export { decompress, openContent, peek, ZSTD_MAX_WINDOW } from './decompress';
export type { DecompressOptions, OpenedContent } from './decompress';
