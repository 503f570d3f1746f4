// Downloads without the cache: downloadFile (a file published only once verified, never over an
// existing one) and openSourceStream (a stream that fails instead of ending on a mismatch).

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openContent } from '../../../provider/transport/content';
import { downloadFile, DownloadOptions, openSourceStream } from '../../../provider/transport/http';
import { drain, failure } from '../support';
import { bytes, filesUnder, sha256, startServer, TestServer, whenReceived } from './server';

const FILE = bytes(300_000, 11);
const SUM = sha256(FILE);

let server: TestServer;
let dir: string;

beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server.close();
});
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-nocache-'));
  server.routes.clear();
  server.log.length = 0;
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const opts = (extra: Partial<DownloadOptions> = {}): DownloadOptions => ({ checksum: SUM, env: {}, retryDelayMs: 0, ...extra });

describe('downloadFile', () => {
  it('publishes the verified file at its name, and nothing else', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const dest = path.join(dir, 'disk.img');
    const got = await downloadFile(server.url('/img'), dest, opts());
    expect(got).toEqual({ size: FILE.length, checksum: { algorithm: 'sha256', hex: SUM.slice(7) } });
    expect(fs.readFileSync(dest).equals(FILE)).toBe(true);
    expect(filesUnder(dir)).toEqual(['disk.img']);
  });

  it('resumes a dropped connection into the same temp file', async () => {
    const w = whenReceived(150_000);
    server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 150_000, dropTimes: 1, beforeDrop: w.reached });
    const dest = path.join(dir, 'disk.img');
    await downloadFile(server.url('/img'), dest, opts({ onProgress: w.onProgress }));
    expect(fs.readFileSync(dest).equals(FILE)).toBe(true);
    expect(server.log.map((l) => l.range)).toEqual([undefined, 'bytes=150000-']);
  });

  it('never replaces an existing file, and asks nothing of the server', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const dest = path.join(dir, 'disk.img');
    fs.writeFileSync(dest, 'precious');
    const e = await failure(downloadFile(server.url('/img'), dest, opts()));
    expect(e.code).toBe('EXISTS');
    expect(fs.readFileSync(dest, 'utf8')).toBe('precious');
    expect(server.log).toHaveLength(0);
  });

  it.each([
    ['a checksum mismatch', { type: 'file' as const, body: FILE }, { checksum: sha256(Buffer.from('x')) }, 'CHECKSUM'],
    ['HTTP 404', { type: 'status' as const, status: 404 }, {}, 'HTTP'],
    ['a body over maxSize', { type: 'file' as const, body: FILE, chunked: true }, { maxSize: 1000 }, 'REFUSED'],
    ['a dropped connection without Range support', { type: 'file' as const, body: FILE, ranges: false, dropAfter: 1000 }, {}, 'CONNECTION'],
  ])('%s leaves nothing in the folder', async (_name, route, extra, code) => {
    server.routes.set('/img', route);
    const e = await failure(downloadFile(server.url('/img'), path.join(dir, 'disk.img'), opts(extra)));
    expect(e.code).toBe(code);
    expect(filesUnder(dir)).toEqual([]);
  });
});

describe('openSourceStream', () => {
  it('streams the bytes and ends once they verified, with the declared size', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const s = await openSourceStream(server.url('/img'), opts());
    expect(s.total).toBe(FILE.length);
    expect((await drain(s.stream)).equals(FILE)).toBe(true);
  });

  it('an HTTP error rejects before any stream exists', async () => {
    server.routes.set('/img', { type: 'status', status: 500 });
    const e = await failure(openSourceStream(server.url('/img'), opts()));
    expect(e.message).toContain('HTTP 500');
  });

  it('a mismatch fails the stream after its last byte instead of ending it', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const wrong = sha256(Buffer.from('x'));
    const s = await openSourceStream(server.url('/img'), opts({ checksum: wrong }));
    const e = await failure(drain(s.stream));
    expect(e.code).toBe('CHECKSUM');
    expect(e.message).toContain(`expected ${wrong}, got ${SUM}`);
  });

  it('resumes a dropped connection inside the stream', async () => {
    const w = whenReceived(100_000);
    server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 100_000, dropTimes: 1, beforeDrop: w.reached });
    const s = await openSourceStream(server.url('/img'), opts({ onProgress: w.onProgress }));
    expect((await drain(s.stream)).equals(FILE)).toBe(true);
    expect(server.log.map((l) => l.status)).toEqual([200, 206]);
  });

  it('a server that answers the resume with the whole file fails the stream: it cannot start over', async () => {
    const w = whenReceived(100_000);
    const route = { type: 'file' as const, body: Buffer.from(FILE), dropAfter: 100_000, dropTimes: 1, beforeDrop: w.reached };
    server.routes.set('/img', route);
    const changed = Buffer.from(FILE);
    changed[0] ^= 1;
    const s = await openSourceStream(server.url('/img'), opts({ onProgress: w.onProgress }));
    void w.reached().then(() => (route.body = changed)); // a new ETag: If-Range fails, 200
    const e = await failure(drain(s.stream));
    expect(e.message).toContain('a stream cannot start over');
  });

  it('destroying the stream stops the download', async () => {
    server.routes.set('/slow', { type: 'file', body: FILE, chunkSize: 10_000, delayMs: 20 });
    const s = await openSourceStream(server.url('/slow'), opts());
    for await (const _ of s.stream) break; // take one chunk, then stop
    await new Promise((r) => setTimeout(r, 100));
    expect(s.stream.destroyed).toBe(true);
    expect(server.count('/slow')).toBe(1);
  });

  it('feeds openContent: a gzip image over HTTP comes out decompressed', async () => {
    const zlib = await import('zlib');
    const gz = zlib.gzipSync(FILE);
    server.routes.set('/img.gz', { type: 'file', body: gz });
    const s = await openSourceStream(server.url('/img.gz'), opts({ checksum: sha256(gz) }));
    const c = await openContent(s.stream, { what: server.url('/img.gz') });
    expect(c.compression).toBe('gzip');
    expect((await drain(c.stream)).equals(FILE)).toBe(true);
  });
});
