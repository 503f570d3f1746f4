// URL sources through both engines: images served by real HTTP servers on 127.0.0.1 (raw, qcow2
// with zlib and zstd clusters, gzip/xz/zstd-compressed raw), imported and compared with the
// original by qemu-img; the cache and resume proven by the server's request counts; every
// failure (checksum, HTTP status, dropped or lying connections, redirect loops, hostile qcow2
// headers) leaves nothing at the destination and nothing but verified files in the cache.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Engine, ImportOptions, ImportSource } from '../../provider/engines/engine';
import { NativeEngine } from '../../provider/engines/native/engine';
import { sharedPool } from '../../provider/engines/native/pool';
import { QemuImgEngine } from '../../provider/engines/qemuimg/engine';
import { failure } from '../transport/support';
import { bytes, filesUnder, sha256, startServer, TestServer } from '../transport/http/server';
import { scratchBase, skipWithoutTools, tool } from './helpers';

const SKIP = skipWithoutTools('engines/url-import');
const compressors = ['gzip', 'xz', 'zstd'].filter((t) => spawnSync(t, ['--version']).status === 0);
if (compressors.length < 3 && !SKIP) console.warn(`[engines/url-import] compressed sources: only ${compressors.join(', ')} installed, the others are skipped (apt-get install -y xz-utils zstd)`);
const MiB = 1 << 20;

let root: string;
let server: TestServer;
/** Bytes of each served file, by route. */
const files = new Map<string, Buffer>();
let raw: string;

function run(cmd: string, args: string[], cwd = root): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
}

/** Serve `file` (under root) at `/name`; returns its route. */
function serve(name: string, file: string): string {
  const body = fs.readFileSync(path.join(root, file));
  files.set(`/${name}`, body);
  server.routes.set(`/${name}`, { type: 'file', body });
  return `/${name}`;
}

beforeAll(async () => {
  if (SKIP) return;
  root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-url-'));
  server = await startServer();
  // 8 MiB of guest data: four 256 KiB extents of noise, a run of zeros, holes.
  raw = path.join(root, 'orig.raw');
  const fd = fs.openSync(raw, 'w');
  for (const [i, at] of [0, 1, 5, 7].entries()) fs.writeSync(fd, bytes(256 << 10, i + 3), 0, 256 << 10, at * MiB + 4096 * i);
  fs.writeSync(fd, Buffer.alloc(64 << 10), 0, 64 << 10, 3 * MiB);
  fs.ftruncateSync(fd, 8 * MiB);
  fs.closeSync(fd);
  run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'orig.raw', 'zlib.qcow2']);
  run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', 'orig.raw', 'zstd.qcow2']);
  for (const [t, ext] of [['gzip', 'gz'], ['xz', 'xz'], ['zstd', 'zst']]) if (compressors.includes(t!)) run('sh', ['-c', `${t} -c orig.raw > orig.raw.${ext}`]);
  // Hostile: headers naming files on this machine.
  run('qemu-img', ['create', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', 'backing.qcow2', '8M']);
  run('qemu-img', ['create', '-f', 'qcow2', '-b', 'orig.raw', '-F', 'raw', 'relative.qcow2', '8M']);
  run('qemu-img', ['create', '-f', 'qcow2', '-o', 'data_file=victim.raw', 'datafile.qcow2', '8M']);
  for (const f of ['orig.raw', 'zlib.qcow2', 'zstd.qcow2', 'orig.raw.gz', 'orig.raw.xz', 'orig.raw.zst', 'backing.qcow2', 'relative.qcow2', 'datafile.qcow2']) {
    if (!fs.existsSync(path.join(root, f))) continue;
    serve(f.replace(/^orig\.raw/, 'orig.img'), f);
  }
}, 60_000);

afterAll(async () => {
  await server?.close();
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

describe.each([
  ['native', () => new NativeEngine((target, call, progress) => sharedPool().run(target, call, progress))],
  ['qemu-img', () => new QemuImgEngine()],
] as Array<[string, () => Engine]>)('URL sources (%s engine)', (name, make) => {
  let engine: Engine;
  let dir: string;
  let cacheDir: string;
  let n = 0;

  beforeAll(() => {
    if (SKIP) return;
    engine = make();
  });
  beforeEach(() => {
    if (SKIP) return;
    dir = path.join(root, `${name}-${++n}`);
    cacheDir = path.join(dir, 'cache');
    fs.mkdirSync(path.join(dir, 'out'), { recursive: true });
    server.log.length = 0;
  });

  const opts = (extra: Partial<ImportOptions> = {}): ImportOptions => ({ cache: { dir: cacheDir }, http: { env: {} }, ...extra });
  const source = (route: string, extra: Partial<ImportSource> = {}): ImportSource => ({ path: server.url(route), checksum: sha256(files.get(route)!), ...extra });
  const out = (f = 'disk.qcow2') => path.join(dir, 'out', f);
  const sameAsOriginal = (f: string) => tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, f], root).status;
  /** Nothing at the destination, no partial download, no temporary decompressed file. */
  const nothingLeft = () => {
    expect(fs.readdirSync(path.join(dir, 'out'))).toEqual([]);
    expect(filesUnder(cacheDir).filter((f) => !/^(locks|sha256|sha512)\//.test(f))).toEqual([]);
  };

  it.skipIf(SKIP).each(['orig.img', 'zlib.qcow2', 'zstd.qcow2', 'orig.img.gz', 'orig.img.xz', 'orig.img.zst'])('imports %s, its format found by content', async (file) => {
    if (!files.has(`/${file}`)) return void console.warn(`[engines/url-import] ${file}: SKIPPED, its compressor is not installed`);
    await engine.import(out(), {}, source(`/${file}`), opts());
    expect(sameAsOriginal(out())).toBe(0);
    expect(server.count(`/${file}`)).toBe(1);
    // No temporary decompressed copy stays behind.
    expect(filesUnder(cacheDir).filter((f) => !/^(locks|sha256)\//.test(f))).toEqual([]);
  });

  it.skipIf(SKIP)('downloads once: ten images from one URL and checksum make one request', async () => {
    for (let i = 0; i < 10; i++) await engine.import(out(`d${i}.qcow2`), {}, source('/zlib.qcow2'), opts());
    expect(server.count('/zlib.qcow2')).toBe(1);
    expect(sameAsOriginal(out('d9.qcow2'))).toBe(0);
    // Another URL with the same checksum (a mirror) is the same cache entry: no request at all.
    server.routes.set('/mirror.qcow2', server.routes.get('/zlib.qcow2')!);
    await engine.import(out('mirror.qcow2'), {}, { path: server.url('/mirror.qcow2'), checksum: sha256(files.get('/zlib.qcow2')!) }, opts());
    expect(server.count('/mirror.qcow2')).toBe(0);
  });

  it.skipIf(SKIP)('a connection dropped mid-body resumes with Range; the image is whole', async () => {
    const body = files.get('/zlib.qcow2')!;
    server.routes.set('/drop.qcow2', { type: 'file', body, dropAfter: Math.floor(body.length / 2), dropTimes: 1, chunkSize: 4096 });
    await engine.import(out(), {}, { path: server.url('/drop.qcow2'), checksum: sha256(body) }, opts());
    expect(sameAsOriginal(out())).toBe(0);
    const reqs = server.log.filter((e) => e.path === '/drop.qcow2');
    expect(reqs.map((e) => e.status)).toEqual([200, 206]);
    expect(reqs[1]!.range).toMatch(/^bytes=[1-9]\d*-$/);
  });

  it.skipIf(SKIP)('a checksum mismatch names both digests and leaves nothing', async () => {
    const wrong = `sha256:${'0'.repeat(64)}`;
    const e = await failure(engine.import(out(), {}, { path: server.url('/orig.img'), checksum: wrong }, opts()));
    expect(e.message).toContain(wrong);
    expect(e.message).toContain(sha256(files.get('/orig.img')!));
    expect(e.property).toBe('sourceChecksum');
    nothingLeft();
    expect(filesUnder(cacheDir).filter((f) => f.startsWith('sha256/'))).toEqual([]);
  });

  it.skipIf(SKIP)('a URL without a checksum is refused before any request', async () => {
    const e = await failure(engine.import(out(), {}, { path: server.url('/orig.img') }, opts()));
    expect(e.property).toBe('sourceChecksum');
    expect(server.log).toEqual([]);
    nothingLeft();
  });

  it.skipIf(SKIP).each([[404], [500]])('HTTP %i is a clear error naming the URL, leaving nothing', async (status) => {
    server.routes.set(`/s${status}`, { type: 'status', status });
    const e = await failure(engine.import(out(), {}, { path: server.url(`/s${status}`), checksum: sha256(Buffer.from('x')) }, opts()));
    expect(e.message).toContain(String(status));
    expect(e.message).toContain(server.url(`/s${status}`));
    nothingLeft();
  });

  it.skipIf(SKIP)('a redirect loop is refused by name, leaving nothing', async () => {
    server.routes.set('/a', { type: 'redirect', to: '/b' });
    server.routes.set('/b', { type: 'redirect', to: '/a' });
    const e = await failure(engine.import(out(), {}, { path: server.url('/a'), checksum: sha256(Buffer.from('x')) }, opts()));
    expect(e.message).toMatch(/redirect/i);
    nothingLeft();
  });

  it.skipIf(SKIP)('a server that lies about Content-Length is caught, leaving nothing', async () => {
    const body = files.get('/orig.img')!;
    server.routes.set('/long', { type: 'file', body, declaredLength: body.length + 1000, ranges: false });
    server.routes.set('/short', { type: 'file', body, declaredLength: body.length - 1000, ranges: false });
    for (const r of ['/long', '/short']) {
      const e = await failure(engine.import(out(), {}, { path: server.url(r), checksum: sha256(body) }, opts({ http: { env: {}, bodyTimeoutMs: 2000 } })));
      expect(e.message).toContain(server.url(r));
      nothingLeft();
    }
  });

  it.skipIf(SKIP)('a source larger than maxSize is refused before it fills the disk, leaving nothing', async () => {
    const e = await failure(engine.import(out(), {}, source('/orig.img', { maxSize: 4n * BigInt(MiB) }), opts()));
    expect(e.message).toMatch(/size|larger|exceed/i);
    nothingLeft();
    // Compressed: the limit holds for what decompression produces too.
    if (!files.has('/orig.img.xz')) return;
    const z = await failure(engine.import(out(), {}, source('/orig.img.xz', { maxSize: 4n * BigInt(MiB) }), opts()));
    expect(z.message).toMatch(/size|larger|exceed/i);
    nothingLeft();
  });

  it.skipIf(SKIP).each([
    ['backing.qcow2', 'backing file', '/etc/passwd'],
    ['relative.qcow2', 'backing file', 'orig.raw'],
    ['datafile.qcow2', 'data file', 'victim.raw'],
  ])('a downloaded qcow2 naming a %s (%s) is refused, leaving nothing', async (file, kind, named) => {
    const e = await failure(engine.import(out(), {}, source(`/${file}`), opts()));
    expect(e.message).toContain(named);
    expect(e.message).toMatch(new RegExp(kind.replace(' ', '[ -]'), 'i'));
    // An absolute name could be listed; a relative one names nothing here.
    expect(e.message).toMatch(named.startsWith('/') ? /sourceReferences/ : /relative name/);
    nothingLeft();
  });

  it.skipIf(SKIP)('a backing file the program lists in sourceReferences is followed', async () => {
    fs.mkdirSync(path.join(dir, 'base'), { recursive: true });
    const base = path.join(dir, 'base', 'base.raw');
    fs.copyFileSync(raw, base);
    run('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'raw', 'listed.qcow2', '8M']);
    const route = serve(`listed-${name}.qcow2`, 'listed.qcow2');
    await engine.import(out(), {}, source(route, { references: [base] }), opts());
    expect(sameAsOriginal(out())).toBe(0);
    // Another file than the one listed is still refused.
    const e = await failure(engine.import(out('other.qcow2'), {}, source(route, { references: [raw] }), opts()));
    expect(e.message).toContain(base);
  });

  it.skipIf(SKIP)('header fuzz: a damaged qcow2 header is imported or refused cleanly, never leaving anything', async () => {
    const good = files.get('/zlib.qcow2')!;
    let seed = 0x5eed + n;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8);
    for (let i = 0; i < 12; i++) {
      const body = Buffer.from(good);
      // Flip bytes among the header fields (magic excluded: that is simply raw).
      for (let k = 0; k < 3; k++) body[4 + (rnd() % 100)] = rnd() & 0xff;
      const route = `/fuzz-${name}-${i}.qcow2`;
      server.routes.set(route, { type: 'file', body });
      const target = out(`f${i}.qcow2`);
      try {
        await engine.import(target, {}, { path: server.url(route), checksum: sha256(body) }, opts());
        expect(fs.existsSync(target)).toBe(true);
        fs.rmSync(target);
      } catch (e) {
        expect((e as Error).constructor.name, String(e)).toBe('Qcow2Error');
        expect((e as Error).message).not.toMatch(/\/tmp\/|\.content-|E[A-Z]{3,}:|\n\s+at /);
      }
      nothingLeft();
    }
  });
});
