// Content detection by leading bytes, and streaming decompression of gzip, xz and zstd: the
// bytes that come out, and the errors for damaged, truncated, oversized and unsupported input.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Readable } from 'stream';
import * as zlib from 'zlib';
import { describe, expect, it } from 'vitest';
import { decompress, detectFormat, openContent, peek } from '../../../provider/transport/content';
import { drain, failure } from '../support';

const FIXTURES = path.resolve(__dirname, '../../fixtures');
const fixture = (name: string) => fs.readFileSync(path.join(FIXTURES, 'content', name));

/** The 1 MiB text the compressed fixtures hold (make-content-fixtures.sh). */
function pattern(): Buffer {
  let s = '';
  for (let i = 0; s.length < 1048576; i++) s += `line ${i}\n`;
  return Buffer.from(s.slice(0, 1048576));
}
const PATTERN_SHA = fixture('pattern.raw.sha256').toString().trim();

/** A stream of `buf` in chunks of `size` (small chunks exercise the decoders' buffering). */
function chunked(buf: Buffer, size = 7000): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts, { objectMode: false });
}

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

function header(bytes: number[], at = 0, size = 512): Buffer {
  const b = Buffer.alloc(size);
  Buffer.from(bytes).copy(b, at);
  return b;
}
const ascii = (s: string) => [...Buffer.from(s, 'latin1')];

describe('detectFormat', () => {
  it('qcow2 by its magic, with the version', () => {
    const real = fs.readFileSync(path.join(FIXTURES, 'snapshots-512.qcow2'));
    expect(detectFormat(real.subarray(0, 512))).toEqual({ format: 'qcow2', version: 3 });
    expect(detectFormat(header([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 2]))).toEqual({ format: 'qcow2', version: 2 });
  });

  it('qcow version 1 and unknown versions are refused, not taken as raw', () => {
    expect(detectFormat(header([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1]))).toMatchObject({ format: 'unsupported', name: 'qcow (version 1)' });
    expect(detectFormat(header([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 4]))).toMatchObject({ format: 'unsupported', name: 'qcow version 4' });
  });

  it('compressed containers: gzip, xz, zstd (also after a skippable frame)', () => {
    expect(detectFormat(zlib.gzipSync(Buffer.from('x')))).toEqual({ format: 'gzip' });
    expect(detectFormat(fixture('pattern.raw.xz').subarray(0, 512))).toEqual({ format: 'xz' });
    expect(detectFormat(fixture('pattern.raw.zst').subarray(0, 512))).toEqual({ format: 'zstd' });
    expect(detectFormat(header([0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]))).toEqual({ format: 'zstd' });
  });

  it.each([
    ['VMDK', ascii('KDMV'), 0],
    ['VMDK descriptor', ascii('# Disk DescriptorFile'), 0],
    ['VHDX', ascii('vhdxfile'), 0],
    ['VHD (vpc)', ascii('conectix'), 0],
    ['VDI', [0x7f, 0x10, 0xda, 0xbe], 0x40],
    ['QED', ascii('QED\0'), 0],
    ['LUKS-encrypted', [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe], 0],
    ['bzip2-compressed', ascii('BZh9'), 0],
    ['a zip archive', [0x50, 0x4b, 0x03, 0x04], 0],
    ['a tar archive', ascii('ustar'), 257],
  ])('%s is recognised and refused', (name, bytes, at) => {
    expect(detectFormat(header(bytes as number[], at as number))).toMatchObject({ format: 'unsupported', name });
  });

  it('anything else is raw, as qemu-img probes it (zeros, text, a short file, a bare magic)', () => {
    expect(detectFormat(Buffer.alloc(512))).toEqual({ format: 'raw' });
    expect(detectFormat(Buffer.from('hello'))).toEqual({ format: 'raw' });
    expect(detectFormat(Buffer.alloc(0))).toEqual({ format: 'raw' });
    expect(detectFormat(Buffer.from([0x51, 0x46, 0x49, 0xfb]))).toEqual({ format: 'raw' });
  });
});

describe('decompress', () => {
  it('the fixtures hold the pattern this test makes', () => {
    expect(sha(pattern())).toBe(PATTERN_SHA);
  });

  it('gzip, also several members one after another', async () => {
    const p = pattern();
    expect(sha(await drain(decompress(chunked(zlib.gzipSync(p)), 'gzip')))).toBe(PATTERN_SHA);
    const two = Buffer.concat([zlib.gzipSync(p.subarray(0, 100_000)), zlib.gzipSync(p.subarray(100_000))]);
    expect(sha(await drain(decompress(chunked(two), 'gzip')))).toBe(PATTERN_SHA);
  });

  it('xz (xz-embedded in WebAssembly)', async () => {
    expect(sha(await drain(decompress(chunked(fixture('pattern.raw.xz')), 'xz')))).toBe(PATTERN_SHA);
  });

  it('zstd (fzstd), one frame and two', async () => {
    expect(sha(await drain(decompress(chunked(fixture('pattern.raw.zst')), 'zstd')))).toBe(PATTERN_SHA);
    expect(sha(await drain(decompress(chunked(fixture('pattern-2frames.raw.zst'), 1000), 'zstd')))).toBe(PATTERN_SHA);
  });

  it.each(['gzip', 'xz', 'zstd'] as const)('truncated %s data is an error saying so, not short output', async (kind) => {
    const full = kind === 'gzip' ? zlib.gzipSync(pattern()) : fixture(kind === 'xz' ? 'pattern.raw.xz' : 'pattern.raw.zst');
    const e = await failure(drain(decompress(chunked(full.subarray(0, full.length >> 1)), kind, { what: 'disk.img' })));
    expect(e.code).toBe('INVALID_IMAGE');
    expect(e.message).toMatch(new RegExp(`^The ${kind} data of disk.img is damaged or truncated`));
  });

  it.each(['gzip', 'xz'] as const)('corrupt %s data is an error', async (kind) => {
    const full = Buffer.from(kind === 'gzip' ? zlib.gzipSync(pattern()) : fixture('pattern.raw.xz'));
    for (let i = 1000; i < 1064; i++) full[i] ^= 0x5a;
    const e = await failure(drain(decompress(chunked(full), kind)));
    expect(e.code).toBe('INVALID_IMAGE');
  });

  it.each(['gzip', 'xz', 'zstd'] as const)('%s output past maxOutput is refused', async (kind) => {
    const full = kind === 'gzip' ? zlib.gzipSync(pattern()) : fixture(kind === 'xz' ? 'pattern.raw.xz' : 'pattern.raw.zst');
    const e = await failure(drain(decompress(chunked(full), kind, { maxOutput: 300_000, what: 'disk.img' })));
    expect(e.code).toBe('REFUSED');
    expect(e.message).toContain('disk.img decompresses');
    expect(sha(await drain(decompress(chunked(full), kind, { maxOutput: 1048576 })))).toBe(PATTERN_SHA);
  });

  it('xz with an integrity check the decoder lacks (SHA-256) is UNSUPPORTED, saying how to recompress', async () => {
    const e = await failure(drain(decompress(chunked(fixture('pattern-sha256check.raw.xz')), 'xz')));
    expect(e.code).toBe('UNSUPPORTED');
    expect(e.message).toContain('--check=crc64');
  });

  it('zstd with a window over 128 MiB is refused before any allocation', async () => {
    // Frame header: magic, descriptor 0 (window descriptor follows), window 2^(10+18) = 256 MiB.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 18 << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const e = await failure(drain(decompress(chunked(frame), 'zstd')));
    expect(e.code).toBe('UNSUPPORTED');
    expect(e.message).toContain('256 MiB window');
  });

  it('an xz stream abandoned half-way frees the decoder for the next one', async () => {
    const first = await peek(decompress(chunked(fixture('pattern.raw.xz')), 'xz'), 1000);
    expect(first.head).toHaveLength(1000);
    first.stream.destroy();
    const second = await drain(decompress(chunked(fixture('pattern.raw.xz')), 'xz'));
    expect(sha(second)).toBe(PATTERN_SHA);
  });
});

describe('openContent', () => {
  it('raw content is passed through from byte 0', async () => {
    const p = pattern();
    const c = await openContent(chunked(p));
    expect(c.format).toEqual({ format: 'raw' });
    expect(c.compression).toBeUndefined();
    expect(sha(await drain(c.stream))).toBe(PATTERN_SHA);
  });

  it('an xz-compressed qcow2 is found to be qcow2 inside, its bytes intact', async () => {
    const c = await openContent(chunked(fixture('snapshots-512.qcow2.xz'), 100));
    expect(c.format).toEqual({ format: 'qcow2', version: 3 });
    expect(c.compression).toBe('xz');
    expect((await drain(c.stream)).equals(fs.readFileSync(path.join(FIXTURES, 'snapshots-512.qcow2')))).toBe(true);
  });

  it('a gzip-compressed tar archive is refused: extract the image first', async () => {
    const e = await failure(openContent(chunked(zlib.gzipSync(header(ascii('ustar'), 257, 1024))), { what: 'img.tar.gz' }));
    expect(e.code).toBe('UNSUPPORTED');
    expect(e.message).toBe('img.tar.gz is a tar archive inside gzip-compressed data, which cannot be imported; extract the disk image from it first (tar -x)');
  });

  it('content compressed twice is refused', async () => {
    const e = await failure(openContent(chunked(zlib.gzipSync(zlib.gzipSync(pattern())))));
    expect(e.message).toContain('compressed twice');
  });

  it('a VMDK is refused naming the way forward', async () => {
    const e = await failure(openContent(chunked(header(ascii('KDMV'))), { what: 'disk.vmdk' }));
    expect(e.message).toBe('disk.vmdk is VMDK, which cannot be imported; convert it to qcow2 or raw with qemu-img first');
  });
});
