// HTTPS with a test CA made by the openssl CLI (trusted in-process by the `ca` option and
// SSL_CERT_FILE, and in a child process by NODE_EXTRA_CA_CERTS), proxies from the environment
// (a CONNECT tunnel for https, forwarding for http, NO_PROXY), and several processes sharing one
// cache.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { fetchSource, FetchSourceOptions } from '../../../provider/transport/http';
import { bypassed, proxyFor } from '../../../provider/transport/http/proxy';
import { trustedCertificates } from '../../../provider/transport/http/tls';
import { childFetch } from './child';
import { bytes, filesUnder, makeTestCa, opensslMissing, sha256, startProxy, startServer, TestCa, TestServer } from './server';

const FILE = bytes(200_000, 3);
const SUM = sha256(FILE);
const NO_OPENSSL = opensslMissing();
const MUST = process.env.CI === 'true' || process.env.REQUIRE_QEMU === '1';

let dir: string;
let ca: TestCa;
let httpsServer: TestServer;
let httpServer: TestServer;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-tls-'));
  httpServer = await startServer({ '/img': { type: 'file', body: FILE } });
  if (NO_OPENSSL !== undefined) return;
  ca = makeTestCa(path.join(dir, 'ca'));
  httpsServer = await startServer({ '/img': { type: 'file', body: FILE } }, ca);
});
afterAll(async () => {
  await httpsServer?.close();
  await httpServer.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

let n = 0;
let cacheDir: string;
beforeEach(() => {
  cacheDir = path.join(dir, `cache-${n++}`);
  httpsServer?.log.splice(0);
  httpServer.log.splice(0);
});

function opts(extra: Partial<FetchSourceOptions> = {}): FetchSourceOptions {
  return { checksum: SUM, cache: { dir: cacheDir }, env: {}, retryDelayMs: 0, ...extra };
}

const tlsSuite = NO_OPENSSL === undefined || MUST ? describe : describe.skip;

tlsSuite(`HTTPS with a test CA${NO_OPENSSL !== undefined && !MUST ? ` [SKIPPED: ${NO_OPENSSL}]` : ''}`, () => {
  it('downloads over HTTPS when the CA is given as an option', async () => {
    const s = await fetchSource(httpsServer.url('/img'), opts({ ca: ca.caPem }));
    expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
    await s.release();
    expect(httpsServer.count('/img')).toBe(1);
  });

  it('an untrusted certificate is a clear error saying how to trust the CA, leaving nothing', async () => {
    let err: unknown;
    await fetchSource(httpsServer.url('/img'), opts()).catch((e: unknown) => (err = e));
    expect(Qcow2Error.isInstance(err)).toBe(true);
    const e = err as Qcow2Error;
    expect(e.code).toBe('HOST_KEY');
    expect(e.message).toMatch(/The certificate of 127\.0\.0\.1:\d+ is not trusted/);
    expect(e.message).toContain('NODE_EXTRA_CA_CERTS');
    expect(filesUnder(cacheDir).filter((f) => !f.startsWith('locks/'))).toEqual([]);
  });

  it('SSL_CERT_FILE replaces the distribution bundle, as in OpenSSL', async () => {
    expect(trustedCertificates({ env: { SSL_CERT_FILE: ca.caFile } })).toContain(ca.caPem.trim());
    const s = await fetchSource(httpsServer.url('/img'), opts({ env: { SSL_CERT_FILE: ca.caFile } }));
    await s.release();
  });

  it('the distribution bundle and Node roots are trusted by default', () => {
    const certs = trustedCertificates({ env: {} });
    const bundle = ['/etc/ssl/certs/ca-certificates.crt'].find((f) => fs.existsSync(f));
    if (bundle !== undefined) {
      const first = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(fs.readFileSync(bundle, 'utf8'))![0];
      expect(certs).toContain(first);
    }
    expect(certs.length).toBeGreaterThanOrEqual(100);
  });

  it('a child process trusts the CA named by NODE_EXTRA_CA_CERTS', async () => {
    const args = { url: httpsServer.url('/img'), checksum: SUM, cacheDir };
    const trusted = await childFetch(args, { NODE_EXTRA_CA_CERTS: ca.caFile });
    expect(trusted.error).toBeUndefined();
    expect(fs.readFileSync(trusted.path!).equals(FILE)).toBe(true);
    const untrusted = await childFetch({ ...args, cacheDir: `${cacheDir}-2` }, {});
    expect(untrusted.error?.code).toBe('HOST_KEY');
    expect(untrusted.error?.message).toContain('is not trusted');
  });

  it('HTTPS_PROXY carries an https download through a CONNECT tunnel', async () => {
    const proxy = await startProxy();
    try {
      const s = await fetchSource(httpsServer.url('/img'), opts({ ca: ca.caPem, env: { HTTPS_PROXY: proxy.url } }));
      expect(fs.readFileSync(s.path).equals(FILE)).toBe(true);
      await s.release();
      expect(proxy.tunnels).toEqual([`127.0.0.1:${httpsServer.port}`]);
    } finally {
      await proxy.close();
    }
  });
});

describe('proxies from the environment', () => {
  it('HTTP_PROXY forwards an http download; NO_PROXY sends it direct', async () => {
    const proxy = await startProxy();
    try {
      const s = await fetchSource(httpServer.url('/img'), opts({ env: { http_proxy: proxy.url } }));
      await s.release();
      expect(proxy.forwarded).toEqual([httpServer.url('/img')]);
      const direct = await fetchSource(httpServer.url('/img'), opts({ checksum: `sha512:${'0'.repeat(128)}`, env: { HTTP_PROXY: proxy.url, NO_PROXY: 'localhost,127.0.0.1' } })).catch((e: Qcow2Error) => e);
      expect((direct as Qcow2Error).code).toBe('CHECKSUM'); // it went direct and got the file
      expect(proxy.forwarded).toHaveLength(1);
      expect(httpServer.count('/img')).toBe(2);
    } finally {
      await proxy.close();
    }
  });

  it('proxy credentials go to the proxy; a refusal (407) is a clear error', async () => {
    const auth = `Basic ${Buffer.from('bob:pw').toString('base64')}`;
    const proxy = await startProxy(auth);
    try {
      const withCreds = proxy.url.replace('//', '//bob:pw@');
      const s = await fetchSource(httpServer.url('/img'), opts({ env: { HTTP_PROXY: withCreds } }));
      await s.release();
      expect(proxy.authorizations).toEqual([auth]);
      const e = (await fetchSource(httpServer.url('/img'), opts({ checksum: `sha512:${'1'.repeat(128)}`, env: { HTTP_PROXY: proxy.url } })).catch((x: unknown) => x)) as Qcow2Error;
      expect(e.code).toBe('AUTH');
      expect(e.message).toContain('HTTP 407');
      expect(e.message).not.toContain('pw');
    } finally {
      await proxy.close();
    }
  });

  it('a CONNECT refused by the proxy is a clear error naming the proxy answer', async () => {
    if (NO_OPENSSL !== undefined) return;
    const proxy = await startProxy('Basic nope');
    try {
      const e = (await fetchSource(httpsServer.url('/img'), opts({ ca: ca.caPem, env: { HTTPS_PROXY: proxy.url } })).catch((x: unknown) => x)) as Qcow2Error;
      expect(e.code).toBe('AUTH');
      expect(e.message).toContain('refused a tunnel');
      expect(e.message).toContain('HTTP 407');
    } finally {
      await proxy.close();
    }
  });

  it('NO_PROXY matching follows curl: names, domains, ports, IPv4 ranges, *', () => {
    const u = (s: string) => new URL(s);
    expect(bypassed(u('https://a.example.com/x'), 'example.com')).toBe(true);
    expect(bypassed(u('https://example.com/x'), '.example.com')).toBe(true);
    expect(bypassed(u('https://notexample.com/x'), 'example.com')).toBe(false);
    expect(bypassed(u('https://example.com:8443/x'), 'example.com:443')).toBe(false);
    expect(bypassed(u('https://example.com/x'), 'example.com:443')).toBe(true);
    expect(bypassed(u('http://10.1.2.3/x'), '10.0.0.0/8')).toBe(true);
    expect(bypassed(u('http://11.1.2.3/x'), '10.0.0.0/8')).toBe(false);
    expect(bypassed(u('http://[::1]:8080/x'), '::1')).toBe(true);
    expect(bypassed(u('http://anything/x'), ' foo , *')).toBe(true);
    expect(proxyFor(u('https://h/x'), { https_proxy: 'proxy:3128' })?.href).toBe('http://proxy:3128/');
    expect(proxyFor(u('http://h/x'), { https_proxy: 'proxy:3128' })).toBeUndefined();
  });
});

describe('one cache shared by several processes', () => {
  it('four processes fetching one checksum at once download it once', async () => {
    // The first download is held after its headers until all four processes are fetching (and
    // a moment more): without the cache's lock, each would send its own request meanwhile.
    const slow = bytes(400_000, 9);
    let ready = 0;
    let allReady!: () => void;
    const gate = new Promise<void>((r) => (allReady = r));
    httpServer.routes.set('/slow', { type: 'file', body: slow, beforeBody: () => gate.then(() => new Promise((r) => setTimeout(r, 300))) });
    const args = { url: httpServer.url('/slow'), checksum: sha256(slow), cacheDir };
    const results = await Promise.all(Array.from({ length: 4 }, () => childFetch(args, {}, () => ++ready === 4 && allReady())));
    for (const r of results) {
      expect(r.error).toBeUndefined();
      expect(fs.readFileSync(r.path!).equals(slow)).toBe(true);
    }
    expect(httpServer.count('/slow')).toBe(1);
    expect(results.filter((r) => r.fromCache === false)).toHaveLength(1);
  });
});
