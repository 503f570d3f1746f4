// fetchSource through the cache against a real HTTP server on 127.0.0.1: what arrives, what the
// server saw (request counts, Range and If-Range headers), and what is left on disk after each
// failure (nothing, except a partial file worth resuming).

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fetchSource, FetchSourceOptions, Progress, SourceCache } from '../../../provider/transport/http';
import { failure } from '../support';
import { bytes, filesUnder, sha256, sha512, startServer, TestServer, whenReceived } from './server';

const FILE = bytes(300_000, 7);
const SUM = sha256(FILE);

let server: TestServer;
let dir: string;
let cacheDir: string;

beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server.close();
});
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-fetch-'));
  cacheDir = path.join(dir, 'cache');
  server.routes.clear();
  server.log.length = 0;
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function opts(extra: Partial<FetchSourceOptions> = {}): FetchSourceOptions {
  return { checksum: SUM, cache: { dir: cacheDir }, env: {}, retryDelayMs: 0, ...extra };
}

/** Only the cache's folders and lock files: no partial, no verified file, no temp. */
function nothingLeft(): void {
  expect(filesUnder(cacheDir).filter((f) => !f.startsWith('locks/'))).toEqual([]);
}

describe('fetchSource: downloads and the cache', () => {
  it('downloads once, verifies, and serves the verified file from the cache afterwards', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const progress: Progress[] = [];
    const a = await fetchSource(server.url('/img'), opts({ onProgress: (p) => progress.push(p) }));
    expect(a.fromCache).toBe(false);
    expect(fs.readFileSync(a.path).equals(FILE)).toBe(true);
    expect(a.size).toBe(FILE.length);
    expect(a.format).toEqual({ format: 'raw' });
    expect(progress.at(-1)).toEqual({ received: FILE.length, total: FILE.length });
    expect(progress.every((p, i) => i === 0 || p.received >= progress[i - 1]!.received)).toBe(true);
    expect(fs.statSync(a.path).mode & 0o222).toBe(0); // read-only in the cache
    await a.release();
    for (let i = 0; i < 9; i++) {
      const b = await fetchSource(server.url('/img'), opts());
      expect(b.fromCache).toBe(true);
      expect(b.path).toBe(a.path);
      await b.release();
    }
    expect(server.count('/img')).toBe(1);
    expect(filesUnder(cacheDir).filter((f) => !f.startsWith('locks/'))).toEqual([`sha256/${SUM.slice(7)}`]);
  });

  it('ten concurrent fetches of one checksum download it once', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, chunkSize: 16384, delayMs: 2 });
    const all = await Promise.all(Array.from({ length: 10 }, () => fetchSource(server.url('/img'), opts())));
    expect(server.count('/img')).toBe(1);
    expect(all.filter((s) => !s.fromCache)).toHaveLength(1);
    for (const s of all) {
      expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
      await s.release();
    }
  });

  it('sha512 checksums key their own entries', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const s = await fetchSource(server.url('/img'), opts({ checksum: sha512(FILE) }));
    expect(s.path).toBe(path.join(cacheDir, 'sha512', sha512(FILE).slice(7)));
    await s.release();
  });

  it('a checksum mismatch names both digests and leaves nothing behind', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const wrong = sha256(Buffer.from('something else'));
    const e = await failure(fetchSource(server.url('/img'), opts({ checksum: wrong })));
    expect(e.code).toBe('CHECKSUM');
    expect(e.message).toContain(`expected ${wrong}`);
    expect(e.message).toContain(`got ${SUM}`);
    expect(e.message).toContain(server.url('/img'));
    nothingLeft();
  });

  it('a bad checksum spec is refused naming sourceChecksum, before any request', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const e = await failure(fetchSource(server.url('/img'), opts({ checksum: 'md5:abc' })));
    expect(e.code).toBe('INVALID_OPTION');
    expect(e.property).toBe('sourceChecksum');
    expect(server.log).toHaveLength(0);
  });

  it.each([404, 500, 403, 503])('HTTP %i is an error naming the status and the URL, leaving nothing', async (status) => {
    server.routes.set('/img', { type: 'status', status });
    const e = await failure(fetchSource(server.url('/img'), opts()));
    expect(e.code).toBe('HTTP');
    expect(e.message).toContain(`HTTP ${status}`);
    expect(e.message).toContain(server.url('/img'));
    expect(server.count('/img')).toBe(1); // statuses are not retried
    nothingLeft();
  });

  it('follows redirects, relative and absolute', async () => {
    server.routes.set('/a', { type: 'redirect', to: '/b', status: 301 });
    server.routes.set('/b', { type: 'redirect', to: server.url('/c'), status: 307 });
    server.routes.set('/c', { type: 'file', body: FILE });
    const s = await fetchSource(server.url('/a'), opts());
    expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    await s.release();
    expect(server.log.map((l) => l.path)).toEqual(['/a', '/b', '/c']);
  });

  it('a redirect loop is a clear error naming it, leaving nothing', async () => {
    server.routes.set('/loop1', { type: 'redirect', to: '/loop2' });
    server.routes.set('/loop2', { type: 'redirect', to: '/loop1' });
    const e = await failure(fetchSource(server.url('/loop1'), opts()));
    expect(e.code).toBe('HTTP');
    expect(e.message).toMatch(/^Redirect loop: .*\/loop2 redirects back to .*\/loop1/);
    expect(server.log).toHaveLength(2);
    nothingLeft();
  });

  it('a redirect chain longer than the limit is refused', async () => {
    for (let i = 0; i < 5; i++) server.routes.set(`/r${i}`, { type: 'redirect', to: `/r${i + 1}` });
    server.routes.set('/r5', { type: 'file', body: FILE });
    const e = await failure(fetchSource(server.url('/r0'), opts({ maxRedirects: 3 })));
    expect(e.message).toContain('Too many redirects (more than 3)');
    expect(server.log).toHaveLength(4);
    const ok = await fetchSource(server.url('/r0'), opts({ maxRedirects: 5 }));
    await ok.release();
  });

  it('a connection dropped mid-body resumes with Range and If-Range, and the whole file verifies', async () => {
    const w = whenReceived(100_000);
    server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 100_000, dropTimes: 1, beforeDrop: w.reached });
    const s = await fetchSource(server.url('/img'), opts({ onProgress: w.onProgress }));
    expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    await s.release();
    expect(server.log.map((l) => [l.status, l.range, l.ifRange])).toEqual([
      [200, undefined, undefined],
      [206, 'bytes=100000-', server.log[0]!.ifRange ?? server.log[1]!.ifRange],
    ]);
    expect(server.log[1]!.ifRange).toMatch(/^"[0-9a-f]{16}"$/); // the strong ETag
  });

  it('resumes repeatedly while each attempt makes progress', async () => {
    // Every request drops after 64 KiB of its body: five requests or more carry the 300 000
    // bytes (more when the client loses bytes it had buffered as a connection broke).
    server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 65536 });
    const s = await fetchSource(server.url('/img'), opts());
    expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    await s.release();
    expect(server.count('/img')).toBeGreaterThanOrEqual(5);
    const starts = server.log.slice(1).map((l) => Number(/^bytes=(\d+)-$/.exec(l.range ?? '')?.[1]));
    expect(starts.every((v, i) => v > (i === 0 ? 0 : starts[i - 1]!))).toBe(true);
  });

  it('without ETag, If-Range carries Last-Modified', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, etag: null, dropAfter: 1000, dropTimes: 1 });
    const s = await fetchSource(server.url('/img'), opts());
    await s.release();
    expect(server.log[1]!.ifRange).toBe('Wed, 01 Jan 2025 00:00:00 GMT');
  });

  it('a dropped connection to a server without Range support is a clear error, leaving nothing', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, ranges: false, dropAfter: 100_000 });
    const e = await failure(fetchSource(server.url('/img'), opts()));
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toMatch(/closed after \d+ of 300000 bytes/);
    expect(e.message).toContain('does not support resuming');
    expect(server.count('/img')).toBe(1);
    nothingLeft();
  });

  it('a file changed on the server between attempts (If-Range fails) is fetched again from its start', async () => {
    const w = whenReceived(100_000);
    const route = { type: 'file' as const, body: Buffer.from(FILE), dropAfter: 100_000, dropTimes: 1, beforeDrop: w.reached };
    server.routes.set('/img', route);
    const changed = Buffer.from(FILE);
    changed[0] ^= 1;
    // The first response is of the old file; by the resume, the server has a new one (new ETag).
    void w.reached().then(() => (route.body = changed));
    const s = await fetchSource(server.url('/img'), opts({ checksum: sha256(changed), onProgress: w.onProgress }));
    expect(fs.readFileSync(s.path).equals(changed)).toBe(true);
    await s.release();
    expect(server.log.map((l) => [l.status, l.range])).toEqual([[200, undefined], [200, 'bytes=100000-']]);
  });

  it('keeps a resumable partial when the connection keeps breaking, and the next fetch resumes it', async () => {
    // First request: 100 000 bytes, then a drop; every later one drops before any byte.
    const w = whenReceived(100_000);
    server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 100_000, dropTimes: 1, beforeDrop: w.reached });
    const fetching = fetchSource(server.url('/img'), opts({ retries: 1, onProgress: w.onProgress }));
    void w.reached().then(() => server.routes.set('/img', { type: 'file', body: FILE, dropAfter: 0 }));
    const e = await failure(fetching);
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toContain('Gave up after 2 attempts');
    const key = `sha256-${SUM.slice(7)}`;
    expect(filesUnder(cacheDir).filter((f) => !f.startsWith('locks/'))).toEqual([`partial/${key}`, `partial/${key}.json`]);
    expect(fs.statSync(path.join(cacheDir, 'partial', key)).size).toBe(100_000);
    // The server recovers; a new fetch (another process, as far as it knows) resumes at 100 000.
    server.routes.set('/img', { type: 'file', body: FILE });
    server.log.length = 0;
    const s = await fetchSource(server.url('/img'), opts());
    expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    await s.release();
    expect(server.log.map((l) => [l.status, l.range])).toEqual([[206, 'bytes=100000-']]);
    expect(filesUnder(cacheDir).filter((f) => !f.startsWith('locks/'))).toEqual([`sha256/${SUM.slice(7)}`]);
  });

  it('a server whose Content-Length is longer than its body is caught (no Range: a clear error), leaving nothing', async () => {
    // Declares 300 000 + 1000 and sends 300 000: the resume asks for bytes the file lacks (416).
    server.routes.set('/img', { type: 'file', body: FILE, declaredLength: FILE.length + 1000, ranges: false });
    const e = await failure(fetchSource(server.url('/img'), opts()));
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toMatch(new RegExp(`closed after \\d+ of ${FILE.length + 1000} bytes`));
    nothingLeft();
  });

  it('a server whose Content-Length is shorter than its body is caught, leaving nothing', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, declaredLength: FILE.length - 1000 });
    const e = await failure(fetchSource(server.url('/img'), opts()));
    expect(['HTTP', 'CHECKSUM']).toContain(e.code);
    expect(e.message).toContain(server.url('/img'));
    nothingLeft();
  });

  it('a Content-Length over maxSize is refused before the body is read, leaving nothing', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    const e = await failure(fetchSource(server.url('/img'), opts({ maxSize: 1000 })));
    expect(e.code).toBe('REFUSED');
    expect(e.property).toBe('sourceMaxSize');
    expect(e.message).toContain(`is ${FILE.length} bytes, over the 1000 bytes allowed`);
    nothingLeft();
  });

  it('a body without Content-Length is cut off at maxSize, leaving nothing', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, chunked: true, chunkSize: 10_000 });
    const e = await failure(fetchSource(server.url('/img'), opts({ maxSize: 50_000 })));
    expect(e.code).toBe('REFUSED');
    expect(e.message).toContain('is more than the 50000 bytes allowed');
    nothingLeft();
    const ok = await fetchSource(server.url('/img'), opts({ maxSize: FILE.length }));
    expect(fs.readFileSync(ok.path).equals(FILE)).toBe(true);
    await ok.release();
  });

  it('a cache hit over maxSize is refused too', async () => {
    server.routes.set('/img', { type: 'file', body: FILE });
    await (await fetchSource(server.url('/img'), opts())).release();
    const e = await failure(fetchSource(server.url('/img'), opts({ maxSize: 10 })));
    expect(e.code).toBe('REFUSED');
  });

  it('a slow body reports progress as it arrives; a stall past bodyTimeoutMs counts as a dropped connection', async () => {
    server.routes.set('/slow', { type: 'file', body: FILE, chunkSize: 30_000, delayMs: 5 });
    const seen: number[] = [];
    const s = await fetchSource(server.url('/slow'), opts({ onProgress: (p) => seen.push(p.received) }));
    await s.release();
    expect(new Set(seen).size).toBeGreaterThanOrEqual(10);
    // A stall: 200 ms before each chunk against a 50 ms body timeout: no attempt gets a byte.
    server.routes.set('/stall', { type: 'file', body: FILE, chunkSize: 150_000, delayMs: 200 });
    const e = await failure(fetchSource(server.url('/stall'), opts({ checksum: sha256(FILE), bodyTimeoutMs: 50, retries: 1, cache: { dir: path.join(dir, 'c2') } })));
    expect(e.message).toContain('stopped sending data');
    expect(filesUnder(path.join(dir, 'c2')).filter((f) => !f.startsWith('locks/'))).toEqual([]);
  });

  it('credentials in the URL authenticate to their origin and never appear in messages', async () => {
    const auth = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
    server.routes.set('/private', { type: 'auth', authorization: auth, route: { type: 'file', body: FILE } });
    const url = server.url('/private').replace('//', '//alice:s3cret@');
    const s = await fetchSource(`${url}?token=abc123&v=1`, opts());
    await s.release();
    expect(server.log[0]!.authorization).toBe(auth);
    server.routes.set('/gone', { type: 'status', status: 404 });
    const gone = fetchSource(`${server.url('/gone').replace('//', '//alice:s3cret@')}?X-Amz-Signature=deadbeef&v=1`, opts({ checksum: sha512(FILE) }));
    const e = await failure(gone);
    expect(e.message).toContain('HTTP 404');
    expect(e.message).not.toContain('s3cret');
    expect(e.message).not.toContain('alice');
    expect(e.message).not.toContain('deadbeef');
    expect(e.message).toContain('v=1');
  });

  it('LRU eviction keeps the cache within its size, by last use, sparing files in use', async () => {
    const files = [bytes(100_000, 1), bytes(100_000, 2), bytes(100_000, 3)];
    files.forEach((b, i) => server.routes.set(`/f${i}`, { type: 'file', body: b }));
    const cache = new SourceCache({ dir: cacheDir, maxSize: 250_000 });
    const get = (i: number) => fetchSource(server.url(`/f${i}`), opts({ checksum: sha256(files[i]!), cache }));
    const f0 = await get(0);
    await f0.release();
    const f1 = await get(1); // held: in use
    // Touch f0 so that f1 is the least recently used.
    fs.utimesSync(f1.path, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    await (await get(0)).release();
    const f2 = await get(2); // 300 000 > 250 000: evict the LRU file not in use (f1 is held, so f0)
    await f2.release();
    expect(fs.existsSync(f1.path)).toBe(true);
    expect(fs.existsSync(f0.path)).toBe(false);
    await f1.release();
    expect(cache.list().reduce((n, f) => n + f.size, 0)).toBeLessThanOrEqual(250_000);
  });

  it('an aborted download keeps a resumable partial; without Range support it leaves nothing', async () => {
    const stop = new AbortController();
    server.routes.set('/img', { type: 'file', body: FILE, chunkSize: 10_000, delayMs: 5 });
    const e = await failure(fetchSource(server.url('/img'), opts({ signal: stop.signal, onProgress: (p) => p.received >= 50_000 && stop.abort() })));
    expect(e.message).toContain('aborted');
    const partials = filesUnder(cacheDir).filter((f) => f.startsWith('partial/'));
    expect(partials).toHaveLength(2); // the bytes and what If-Range needs
    const stop2 = new AbortController();
    server.routes.set('/norange', { type: 'file', body: FILE, ranges: false, chunkSize: 10_000, delayMs: 5 });
    const other = path.join(dir, 'other');
    await failure(fetchSource(server.url('/norange'), opts({ signal: stop2.signal, cache: { dir: other }, onProgress: (p) => p.received >= 50_000 && stop2.abort() })));
    expect(filesUnder(other).filter((f) => !f.startsWith('locks/'))).toEqual([]);
  });

  it('without locks: downloads verify and publish, failures leave nothing, concurrent fetches both succeed', async () => {
    server.routes.set('/img', { type: 'file', body: FILE, chunkSize: 30_000, delayMs: 2 });
    const unlocked = { dir: cacheDir, locks: false };
    const bad = await failure(fetchSource(server.url('/img'), opts({ cache: unlocked, checksum: sha256(Buffer.from('x')) })));
    expect(bad.code).toBe('CHECKSUM');
    nothingLeft();
    const both = await Promise.all([fetchSource(server.url('/img'), opts({ cache: unlocked })), fetchSource(server.url('/img'), opts({ cache: unlocked }))]);
    for (const s of both) expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    expect(filesUnder(cacheDir)).toEqual([`sha256/${SUM.slice(7)}`]);
  });
});
