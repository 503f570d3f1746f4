// `qcow2 convert` from an https URL, as a user runs it: the `qcow2` executable, the
// test CA trusted through NODE_EXTRA_CA_CERTS, the cache through PULUMI_QCOW2_CACHE_DIR; the
// second convert is served from the cache (no request at the server); -p prints qemu-img's
// (x/100%) lines although standard output is a pipe; a bad checksum exits 1 leaving nothing.

import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchBase, skipWithoutTools, tool } from '../../engines/helpers';
import { bytes, filesUnder, makeTestCa, opensslMissing, sha256, startServer, TestServer } from '../../transport/http/server';

// The executable itself, through its launcher (which holds NODE_EXTRA_CA_CERTS back from Node's
// start-up and gives it to the HTTPS client): the trust below goes the way a user's does.
const CLI = path.resolve(__dirname, '../../../dist/provider/cli/qcow2.js');
const PATH = `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`;
const noOpenssl = opensslMissing();
if (noOpenssl) console.warn(`[cli/convert-url] SKIPPED: ${noOpenssl}`);
const SKIP = skipWithoutTools('cli/convert-url') || noOpenssl !== undefined;

let root: string;
let server: TestServer;
let body: Buffer;
let caFile: string;

interface Run { code: number; stdout: string; stderr: string }

function qcow2(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(CLI, args, {
      cwd: root,
      encoding: 'utf8',
      env: { PATH, HOME: root, LC_ALL: 'C', NODE_EXTRA_CA_CERTS: caFile, PULUMI_QCOW2_CACHE_DIR: path.join(root, 'cache'), ...env },
    }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

beforeAll(async () => {
  if (SKIP) return;
  root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-cli-url-'));
  const ca = makeTestCa(path.join(root, 'ca'));
  caFile = ca.caFile;
  const fd = fs.openSync(path.join(root, 'orig.raw'), 'w');
  fs.writeSync(fd, bytes(1 << 20, 9), 0, 1 << 20, 2 << 20);
  fs.ftruncateSync(fd, 16 << 20);
  fs.closeSync(fd);
  expect(tool('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'orig.raw', 'cloud.img'], root).status).toBe(0);
  body = fs.readFileSync(path.join(root, 'cloud.img'));
  server = await startServer({ '/cloud.img': { type: 'file', body, chunkSize: 16384 } }, ca);
}, 60_000);

afterAll(async () => {
  await server?.close();
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

describe('qcow2 convert URL', () => {
  it.skipIf(SKIP)('imports over https, then from the cache; -p prints (x/100%) to a pipe', async () => {
    const url = server.url('/cloud.img');
    const first = await qcow2(['convert', '-p', '--checksum', sha256(body), '-O', 'qcow2', url, 'a.qcow2']);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r/);
    expect(first.stdout.endsWith('    (100.00/100%)\r\n')).toBe(true);
    expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'orig.raw', 'a.qcow2'], root).status).toBe(0);
    expect(server.count('/cloud.img')).toBe(1);

    const second = await qcow2(['convert', '--checksum', sha256(body).toUpperCase().replace('SHA256', 'sha256'), '-O', 'qcow2', url, 'b.qcow2']);
    expect(second).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(server.count('/cloud.img')).toBe(1);
    expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'orig.raw', 'b.qcow2'], root).status).toBe(0);
  });

  it.skipIf(SKIP)('without the CA the certificate is refused with the way forward, leaving nothing', async () => {
    const r = await qcow2(['convert', '--checksum', sha256(Buffer.from('other')), '-O', 'qcow2', server.url('/cloud.img'), 'c.qcow2'], { NODE_EXTRA_CA_CERTS: '' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/certificate/i);
    expect(r.stderr).toMatch(/NODE_EXTRA_CA_CERTS/);
    expect(fs.existsSync(path.join(root, 'c.qcow2'))).toBe(false);
  });

  it.skipIf(SKIP)('a checksum mismatch exits 1 naming both digests, leaving nothing', async () => {
    const wrong = `sha256:${'ab'.repeat(32)}`;
    const r = await qcow2(['convert', '--checksum', wrong, '-O', 'qcow2', server.url('/cloud.img'), 'd.qcow2']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(wrong);
    expect(r.stderr).toContain(sha256(body));
    expect(r.stderr).not.toMatch(/\n\s+at |\.content-|partial\//);
    expect(fs.existsSync(path.join(root, 'd.qcow2'))).toBe(false);
    expect(filesUnder(path.join(root, 'cache')).filter((f) => !/^(locks|sha256)\//.test(f))).toEqual([]);
  });

  it.skipIf(SKIP)('a URL without --checksum is refused before any request', async () => {
    const before = server.log.length;
    const r = await qcow2(['convert', '-O', 'qcow2', server.url('/cloud.img'), 'e.qcow2']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/checksum/i);
    expect(server.log.length).toBe(before);
    expect(fs.existsSync(path.join(root, 'e.qcow2'))).toBe(false);
  });
});
