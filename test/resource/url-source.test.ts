// Images from an https URL through Pulumi's real dynamic-provider host (both engines): the host
// trusts the test CA by NODE_EXTRA_CA_CERTS and caches in PULUMI_QCOW2_CACHE_DIR, as a user's
// `pulumi up` would. Two images from one URL make one request; a new source URL for the same
// checksum is state only; a new checksum plans nothing without allowReplace; failures leave no
// image behind.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, tool } from '../engines/helpers';
import { bytes, makeTestCa, opensslMissing, sha256, startServer, TestServer } from '../transport/http/server';
import { ProviderHost, Stack, serializedProvider } from './host';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';

const noOpenssl = opensslMissing();
if (noOpenssl) console.warn(`[resource/url-source] SKIPPED: ${noOpenssl}`);
const SKIP = skipWithoutTools('resource/url-source') || noOpenssl !== undefined;

let root: string;
let server: TestServer;
let host: ProviderHost;
let provider: string;
let body: Buffer;
let other: Buffer;

beforeAll(async () => {
  if (SKIP) return;
  root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-url-host-'));
  const ca = makeTestCa(path.join(root, 'ca'));
  const fd = fs.openSync(path.join(root, 'orig.raw'), 'w');
  fs.writeSync(fd, bytes(1 << 20, 5), 0, 1 << 20, 1 << 20);
  fs.ftruncateSync(fd, 8 << 20);
  fs.closeSync(fd);
  expect(tool('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'orig.raw', 'cloud.img'], root).status).toBe(0);
  expect(tool('qemu-img', ['create', '-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', 'hostile.img', '8M'], root).status).toBe(0);
  body = fs.readFileSync(path.join(root, 'cloud.img'));
  other = fs.readFileSync(path.join(root, 'hostile.img'));
  server = await startServer({ '/cloud.img': { type: 'file', body }, '/mirror/cloud.img': { type: 'file', body }, '/hostile.img': { type: 'file', body: other } }, ca);
  // What a user's environment gives `pulumi up`; the host inherits it.
  const saved = { ca: process.env.NODE_EXTRA_CA_CERTS, cache: process.env.PULUMI_QCOW2_CACHE_DIR };
  process.env.NODE_EXTRA_CA_CERTS = ca.caFile;
  process.env.PULUMI_QCOW2_CACHE_DIR = path.join(root, 'cache');
  try {
    fs.mkdirSync(path.join(root, 'program'));
    host = await ProviderHost.start(path.join(root, 'program'));
  } finally {
    for (const [k, v] of [['NODE_EXTRA_CA_CERTS', saved.ca], ['PULUMI_QCOW2_CACHE_DIR', saved.cache]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  provider = await serializedProvider();
}, 90_000);

afterAll(async () => {
  host?.stop();
  await server?.close();
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

describe.each(['native', 'qemu-img'])('URL sources through the dynamic-provider host (%s engine)', (engine) => {
  const stack = (name: string) => new Stack(host, provider, `urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::${engine}-${name}`);
  const program = (f: string) => path.join(root, 'program', f);

  it.skipIf(SKIP)('two images from one URL download it once; source changes after creation are state only', async () => {
    const before = server.count('/cloud.img'), hostileBefore = server.count('/hostile.img');
    const args = (name: string, extra: Record<string, unknown> = {}) => ({ path: `${engine}-${name}.qcow2`, source: server.url('/cloud.img'), sourceChecksum: sha256(body), engine, ...extra });
    const a = stack('a'), b = stack('b');
    const ra = await a.up(args('a'));
    const rb = await b.up(args('b'));
    expect(ra.op).toBe('create');
    expect(rb.op).toBe('create');
    expect(ra.outputs).toMatchObject({ virtualSize: 8 << 20, source: server.url('/cloud.img'), sourceChecksum: sha256(body) });
    for (const n of ['a', 'b']) expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', path.join(root, 'orig.raw'), program(`${engine}-${n}.qcow2`)], root).status).toBe(0);
    // The first engine's suite downloads; the second finds the file in the cache.
    expect(server.count('/cloud.img') - before).toBe(engine === 'native' ? 1 : 0);

    // A mirror with the same checksum: recorded, nothing imported, no request.
    const md5 = tool('md5sum', [program(`${engine}-a.qcow2`)], root).stdout;
    const moved = await a.up(args('a', { source: server.url('/mirror/cloud.img') }));
    expect(moved.outputs.source).toBe(server.url('/mirror/cloud.img'));
    expect(server.count('/mirror/cloud.img')).toBe(0);
    // Another checksum: nothing planned, the disk keeps its data, the state keeps the old record.
    const plan = await a.preview(args('a', { source: server.url('/hostile.img'), sourceChecksum: sha256(other) }));
    expect(plan.op).not.toBe('replace');
    const kept = await a.up(args('a', { source: server.url('/hostile.img'), sourceChecksum: sha256(other) }));
    expect(kept.outputs.sourceChecksum).toBe(sha256(body));
    expect(tool('md5sum', [program(`${engine}-a.qcow2`)], root).stdout).toBe(md5);
    expect(server.count('/hostile.img')).toBe(hostileBefore);
    // allowReplace: the image is deleted and imported anew (here refused: the new source names a file).
    expect((await a.preview(args('a', { source: server.url('/hostile.img'), sourceChecksum: sha256(other), allowReplace: true }))).op).toBe('replace');
    await a.destroy();
    await b.destroy();
    expect(fs.existsSync(program(`${engine}-a.qcow2`))).toBe(false);
  });

  it.skipIf(SKIP)('a URL without sourceChecksum fails at preview naming the property', async () => {
    const p = await stack('nosum').preview({ path: `${engine}-nosum.qcow2`, source: server.url('/cloud.img'), engine });
    expect(p.failures.map((f) => f.property)).toEqual(['sourceChecksum']);
  });

  it.skipIf(SKIP)('a checksum mismatch and a hostile image fail the create, leaving no image', async () => {
    const wrong = `sha256:${'1'.repeat(64)}`;
    await expect(stack('bad').up({ path: `${engine}-bad.qcow2`, source: server.url('/cloud.img'), sourceChecksum: wrong, engine })).rejects.toThrow(new RegExp(`${wrong}[^]*${sha256(body)}|${sha256(body)}[^]*${wrong}`));
    await expect(stack('hostile').up({ path: `${engine}-hostile.qcow2`, source: server.url('/hostile.img'), sourceChecksum: sha256(other), engine })).rejects.toThrow(/\/etc\/hostname[^]*sourceReferences/);
    expect(fs.readdirSync(path.join(root, 'program')).filter((f) => f.startsWith(`${engine}-`))).toEqual([]);
  });

  it.skipIf(SKIP || skipWithoutSshd('resource/url-source remote'))('a URL for an image on a remote host is fetched and converted here; the host gets the image only', async () => {
    let sshd: Sshd | undefined;
    const far = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-url-remote-'));
    try {
      sshd = await startSshd();
      const connection = { ...sshd.connection(), hostKey: sshd.hostKeyLine };
      const s = stack('remote');
      const inputs = { path: path.join(far, 'vm.qcow2'), source: server.url('/cloud.img'), sourceChecksum: sha256(body), engine, connection };
      const r = await s.up(inputs);
      expect(r.outputs).toMatchObject({ virtualSize: 8 << 20, source: server.url('/cloud.img'), sourceChecksum: sha256(body), host: '127.0.0.1' });
      expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', path.join(root, 'orig.raw'), path.join(far, 'vm.qcow2')], root).status).toBe(0);
      // Nothing but the image on the host: the download and its decompression stayed here.
      expect(fs.readdirSync(far)).toEqual(['vm.qcow2']);
      expect((await s.preview(inputs)).op).toBe('same');
      await s.destroy();
      expect(fs.readdirSync(far)).toEqual([]);
    } finally {
      await sshd?.stop();
      fs.rmSync(far, { recursive: true, force: true });
    }
  });
});
