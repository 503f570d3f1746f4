// The qemu-img engine's own concerns: finding qemu-img (and saying how to install it), the
// cached version probe, resource limits and the timeout, the mapping of qemu-img's messages onto
// our error codes, the json: image specification and -o escaping, never opening the data file or
// backing file of an image it only reads, and leaving nothing behind when qemu-img fails.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuImgEngine } from '../../provider/engines/qemuimg/engine';
import { qemuImgError, coreMessage } from '../../provider/engines/qemuimg/errors';
import { clearVersionCache, limitedArgv, limitMechanism } from '../../provider/engines/qemuimg/run';
import { imageSpec, optList, peekHeader } from '../../provider/engines/qemuimg/spec';
import { imageInfo } from '../helpers/info';
import { inDir, md5, must, outcome, skipWithoutTools, snapshotDir, tool } from './helpers';
import { qemuImgPath } from '../helpers/qemu';

const SKIP = skipWithoutTools('engines/qemuimg-engine');
const M = 1024n * 1024n;

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-qemuimg-'));
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** An executable script standing in for qemu-img. */
function fakeQemuImg(name: string, body: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
}

const REAL = (() => {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', qemuImgPath], { encoding: 'utf8' });
  return r.stdout.trim() || qemuImgPath;
})();

describe('finding qemu-img', () => {
  it('is NOT_FOUND, with install instructions, when qemu-img is missing', async () => {
    const e = new QemuImgEngine({ qemuImg: path.join(dir, 'no-such-qemu-img') });
    const o = await outcome(() => e.info('x.qcow2'));
    expect(o).toMatchObject({ ok: false, code: 'NOT_FOUND' });
    expect((o as { message: string }).message).toContain('apt-get install -y qemu-utils');
    // Also for a name looked up on PATH, and before any other check (create validates nothing first).
    const e2 = new QemuImgEngine({ qemuImg: 'qemu-img-that-does-not-exist' });
    const o2 = await outcome(() => e2.create(path.join(dir, 'never.qcow2'), { size: M }));
    expect(o2).toMatchObject({ ok: false, code: 'NOT_FOUND' });
    expect((o2 as { message: string }).message).toMatch(/not an executable on PATH.*apt-get install -y qemu-utils/s);
    expect(fs.existsSync(path.join(dir, 'never.qcow2'))).toBe(false);
  });

  it('is UNSUPPORTED, with install instructions, when qemu-img is older than 7.2', async () => {
    const old = fakeQemuImg('old-qemu-img', 'echo "qemu-img version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)"');
    const o = await outcome(() => new QemuImgEngine({ qemuImg: old }).info('x.qcow2'));
    expect(o).toMatchObject({ ok: false, code: 'UNSUPPORTED' });
    expect((o as { message: string }).message).toMatch(/qemu-img 6\.2\.0 .* too old: .*7\.2 or newer.*apt-get install -y qemu-utils/s);
    const odd = fakeQemuImg('odd-qemu-img', 'echo "something else"');
    expect(await outcome(() => new QemuImgEngine({ qemuImg: odd }).info('x.qcow2'))).toMatchObject({ ok: false, code: 'UNSUPPORTED' });
  });

  it('accepts 7.2 and newer, and probes each binary once', async () => {
    clearVersionCache();
    const counter = path.join(dir, 'probes');
    const fake = fakeQemuImg('counting-qemu-img', `if [ "$1" = --version ]; then echo x >> '${counter}'; echo "qemu-img version 9.1.2"; exit 0; fi\nexit 1`);
    const e = new QemuImgEngine({ qemuImg: fake });
    const [a, b] = await Promise.all([e.binary(), e.binary()]);
    expect(a).toBe(b);
    expect(a.version).toEqual([9, 1, 2]);
    await new QemuImgEngine({ qemuImg: fake }).binary();
    expect(fs.readFileSync(counter, 'utf8')).toBe('x\n');
  });

  it.skipIf(SKIP)('finds the installed qemu-img (7.2 or newer)', async () => {
    const b = await new QemuImgEngine().binary();
    expect(b.version[0] * 100 + b.version[1]).toBeGreaterThanOrEqual(702);
  });

  it.skipIf(!fs.existsSync(path.resolve(__dirname, '../../dist/provider/engines/qemuimg/engine.js')))('getEngine("qemu-img") on the build returns this engine', () => {
    // getEngine() requires compiled siblings; vitest does not compile them for require().
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { getEngine } = require(path.resolve(__dirname, '../../dist/provider/engines/index.js')) as typeof import('../../provider/engines');
    const e = getEngine('qemu-img');
    expect(e.name).toBe('qemu-img');
    expect(e.constructor.name).toBe('QemuImgEngine');
  });
});

describe('resource limits and the timeout', () => {
  it('runs qemu-img under prlimit (or the ulimit wrapper) with the documented limits', () => {
    const m = limitMechanism();
    const [file, argv] = limitedArgv('/usr/bin/qemu-img', ['info', 'a,b'], { addressSpace: 1 << 30, cpuSeconds: 30, timeoutMs: 60_000 });
    if (m.kind === 'prlimit') {
      expect(path.basename(file)).toBe('prlimit');
      expect(argv).toEqual(['--as=1073741824', '--cpu=30', '--', '/usr/bin/qemu-img', 'info', 'a,b']);
    } else if (m.kind === 'sh') {
      expect(argv.slice(3)).toEqual(['1048576', '30', '/usr/bin/qemu-img', 'info', 'a,b']);
    }
    const e = new QemuImgEngine();
    expect(e.limits.read).toEqual({ addressSpace: 1 << 30, cpuSeconds: 30, timeoutMs: 60_000 });
  });

  it('the /bin/sh fallback passes names as positional parameters, never as shell text', () => {
    const hostile = ['a b', '$(touch pwned)', '`id`', "'; exit 3; '", '-n', 'new\nline', '*'];
    const [file, argv] = limitedArgv('/bin/echo', hostile, { addressSpace: 512 << 20, cpuSeconds: 9, timeoutMs: 1000 }, { kind: 'sh', path: '/bin/sh' });
    const r = spawnSync(file, argv, { cwd: dir, encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${hostile.join(' ')}\n`);
    expect(fs.existsSync(path.join(dir, 'pwned'))).toBe(false);
    const [f2, a2] = limitedArgv('/bin/sh', ['-c', 'echo $(ulimit -v) $(ulimit -t)'], { addressSpace: 512 << 20, cpuSeconds: 9, timeoutMs: 1000 }, { kind: 'sh', path: '/bin/sh' });
    expect(spawnSync(f2, a2, { encoding: 'utf8' }).stdout).toBe('524288 9\n');
  });

  it.skipIf(limitMechanism().kind === 'none')('the limits reach the qemu-img process', async () => {
    const fake = fakeQemuImg('limits-qemu-img', 'if [ "$1" = --version ]; then echo "qemu-img version 7.2.22"; exit 0; fi\necho "qemu-img: limits $(ulimit -v) $(ulimit -t)" >&2; exit 1');
    const e = new QemuImgEngine({ qemuImg: fake, limits: { read: { addressSpace: 512 << 20, cpuSeconds: 7 } } });
    fs.writeFileSync(path.join(dir, 'any.qcow2'), 'x');
    const o = await outcome(() => e.info(path.join(dir, 'any.qcow2')));
    expect(o).toMatchObject({ ok: false, message: 'limits 524288 7' });
  });

  it('kills qemu-img at the wall-clock timeout', async () => {
    const fake = fakeQemuImg('slow-qemu-img', 'if [ "$1" = --version ]; then echo "qemu-img version 7.2.22"; exit 0; fi\nexec sleep 30');
    const e = new QemuImgEngine({ qemuImg: fake, limits: { read: { timeoutMs: 300 } } });
    fs.writeFileSync(path.join(dir, 'slow.qcow2'), 'x');
    const t = Date.now();
    const o = await outcome(() => e.info(path.join(dir, 'slow.qcow2')));
    expect(Date.now() - t).toBeLessThan(10_000);
    expect(o).toMatchObject({ ok: false, code: 'IO' });
    expect((o as { message: string }).message).toMatch(/did not finish within 0.3 s and was killed/);
  });

  it.skipIf(limitMechanism().kind === 'none')('kills qemu-img at the CPU limit', async () => {
    const fake = fakeQemuImg('busy-qemu-img', 'if [ "$1" = --version ]; then echo "qemu-img version 7.2.22"; exit 0; fi\nwhile :; do :; done');
    const e = new QemuImgEngine({ qemuImg: fake, limits: { read: { cpuSeconds: 1, timeoutMs: 20_000 } } });
    fs.writeFileSync(path.join(dir, 'busy.qcow2'), 'x');
    const o = await outcome(() => e.info(path.join(dir, 'busy.qcow2')));
    expect(o).toMatchObject({ ok: false, code: 'IO' });
    expect((o as { message: string }).message).toMatch(/was killed by SIG(XCPU|KILL)/);
  }, 30_000);
});

describe('qemu-img messages and exit statuses', () => {
  const abs = path.resolve('a,b.qcow2');
  const spec = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: abs } })}`;
  const fail = (stderr: string, command = 'amend', status: number | null = 1, signal: NodeJS.Signals | null = null) =>
    qemuImgError({ status, signal, stdout: '', stderr, timedOut: false }, { command, arg: spec, file: 'a,b.qcow2' });

  it.each([
    [`qemu-img: Could not open '${spec}': Failed to get "write" lock\nIs another process using the image [${abs}]?\n`, 'LOCKED', 'Failed to get "write" lock\nIs another process using the image [a,b.qcow2]?'],
    [`qemu-img: Could not open '${spec}': Failed to get shared "write" lock\nIs another process using the image [${abs}]?\n`, 'LOCKED', 'Failed to get shared "write" lock\nIs another process using the image [a,b.qcow2]?'],
    [`qemu-img: Could not open '${spec}': Could not open '${abs}': No such file or directory\n`, 'NOT_FOUND', `Could not open '${abs}': No such file or directory`],
    [`qemu-img: Could not open '${spec}': Image is not in qcow2 format\n`, 'INVALID_IMAGE', 'Image is not in qcow2 format'],
    [`qemu-img: Could not open '${spec}': Unsupported qcow2 version 4\n`, 'UNSUPPORTED', 'Unsupported qcow2 version 4'],
    [`qemu-img: Could not open '${spec}': qcow2: Image is corrupt; cannot be opened read/write\n`, 'REFUSED', 'qcow2: Image is corrupt; cannot be opened read/write'],
    ['qemu-img: Failed to update the image header: No space left on device\n', 'INVALID_OPTION', 'Could not update qcow2 header: No space left on device'],
    ['qemu-img: warning: Deprecated use of backing file without explicit backing format\nqemu-img: Invalid parameter \'cluster_size\'\nThis option is only supported for image creation\n', 'INVALID_OPTION', "Invalid parameter 'cluster_size'\nThis option is only supported for image creation"],
    ['qemu-img: Error while amending options: Input/output error\n', 'IO', 'Error while amending options: Input/output error'],
  ])('%j -> %s', (stderr, code, message) => {
    const e = fail(stderr);
    expect(e.code).toBe(code);
    expect(e.message).toBe(message);
  });

  it('names the data file when it is the data file that is locked', () => {
    const e = fail(`qemu-img: Could not open '${spec}': Failed to get "write" lock\nIs another process using the image [/x/d,ata.raw]?\n`);
    expect(e).toMatchObject({ code: 'LOCKED', message: 'Failed to get "write" lock\nIs another process using the image [/x/d,ata.raw]?' });
  });

  it('maps unknown open failures of reads to INVALID_IMAGE, of changes to IO, and signals to IO', () => {
    expect(fail(`qemu-img: Could not open '${spec}': something new\n`, 'info').code).toBe('INVALID_IMAGE');
    expect(fail('qemu-img: something new\n', 'amend').code).toBe('IO');
    expect(fail('', 'check', null, 'SIGSEGV')).toMatchObject({ code: 'IO', message: 'qemu-img check was killed by SIGSEGV' });
    expect(coreMessage(`qemu-img: Could not open '${spec}': x\n`, spec)).toBe('x');
  });
});

describe('names reach qemu-img as plain file names', () => {
  it('builds json: specifications that round-trip any name', () => {
    for (const name of ['/d/a,b', '/d/new\nline', '/d/-x', '/d/json:{"driver":"null-co"}', '/d/nbd:localhost:1', '/d/q"b\\s \u00e9', '/d/file:x']) {
      const s = imageSpec(name, { kind: 'null' }, { kind: 'none' });
      expect(s.startsWith('json:')).toBe(true);
      expect(JSON.parse(s.slice(5))).toEqual({ driver: 'qcow2', file: { driver: 'file', filename: name }, 'data-file': { driver: 'null-co' }, backing: null });
    }
    expect(optList([['data_file', 'a,b,,c'], ['compat', '1.1']])).toBe('data_file=a,,b,,,,c,compat=1.1');
  });

  it('peeks the header fields that decide the specification', () => {
    const f = path.join(dir, 'peek.bin');
    fs.writeFileSync(f, Buffer.alloc(10));
    expect(peekHeader(f)).toBeUndefined();
    expect(peekHeader(path.join(dir, 'missing'))).toBeUndefined();
    spawnSync('mkfifo', [path.join(dir, 'peek.fifo')]);
    expect(peekHeader(path.join(dir, 'peek.fifo'))).toBeUndefined(); // returns, does not block
  });
});

describe.skipIf(SKIP)('what qemu-img may open', () => {
  it('info and check never open the backing file or the data file of an image', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'untrusted-'));
    // Backing names qemu-img would follow (an NBD server, a json: description of /etc/passwd) ...
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd:localhost:1', '-F', 'raw', 'nbd.qcow2', '1M'], d);
    expect(tool('qemu-img', ['check', './nbd.qcow2'], d).stderr).toMatch(/Could not open backing file|Failed to connect/);
    // ... and a data file that would block any reader: a FIFO.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=fifo.raw', 'fifo.qcow2', '1M'], d);
    fs.rmSync(path.join(d, 'fifo.raw'));
    must('mkfifo', ['fifo.raw'], d);
    const e = new QemuImgEngine({ limits: { read: { timeoutMs: 10_000 } } });
    await inDir(d, async () => {
      expect((await e.info('nbd.qcow2')).backingFile).toBe('nbd:localhost:1');
      expect(await e.check('nbd.qcow2')).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
      expect((await e.info('fifo.qcow2')).dataFile).toBe('fifo.raw');
      expect(await e.check('fifo.qcow2')).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
    });
  });

  it('amend and resize of a backed image never open the backing file', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'backed-'));
    // A backing file qemu-img cannot open: plain `qemu-img amend` fails on it.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd:localhost:1', '-F', 'raw', 'img.qcow2', '1M'], d);
    expect(tool('qemu-img', ['amend', '-o', 'lazy_refcounts=on', './img.qcow2'], d).status).toBe(1);
    const e = new QemuImgEngine();
    await inDir(d, async () => {
      await e.amend('img.qcow2', { lazyRefcounts: true });
      await e.amend('img.qcow2', { compat: '0.10' });
      await e.resize('img.qcow2', 2n * M);
    });
    const j = imageInfo(path.join(d, 'img.qcow2'));
    expect(j['backing-filename']).toBe('nbd:localhost:1');
    expect(j['virtual-size']).toBe(2 * 1024 * 1024);
    expect(j['format-specific']!.data.compat).toBe('0.10');
  });

  it('growth over a longer backing file is what plain qemu-img does, byte for byte', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'grow-'));
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '8M'], d);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 8M', './base.qcow2'], d);
    for (const n of ['a', 'b', 'ref-a', 'ref-b']) must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', `${n}.qcow2`, '2M'], d);
    must('qemu-img', ['resize', '-q', './ref-a.qcow2', '6M'], d);
    must('qemu-img', ['amend', '-o', 'size=6M', './ref-b.qcow2'], d);
    const e = new QemuImgEngine();
    await inDir(d, async () => {
      await e.resize('a.qcow2', 6n * M);
      await e.amend('b.qcow2', { size: 6n * M });
    });
    expect(md5(path.join(d, 'a.qcow2'))).toBe(md5(path.join(d, 'ref-a.qcow2')));
    expect(md5(path.join(d, 'b.qcow2'))).toBe(md5(path.join(d, 'ref-b.qcow2')));
    expect(tool('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 2M 4M', '-c', 'read -P 0x77 0 2M', './a.qcow2'], d).stdout).not.toMatch(/verification failed/);

    // Refused before qemu-img runs where the stand-in cannot give QEMU's result.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base.qcow2', '-F', 'qcow2', 'v2.qcow2', '2M'], d);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'odd.qcow2', '2000000'], d);
    const before = snapshotDir(d);
    await inDir(d, async () => {
      expect(await outcome(() => e.resize('v2.qcow2', 6n * M))).toMatchObject({ ok: false, code: 'REFUSED', message: expect.stringContaining('compat 0.10') });
      expect(await outcome(() => e.resize('odd.qcow2', 6n * M))).toMatchObject({ ok: false, code: 'REFUSED', message: expect.stringContaining('inside a cluster') });
      // Shrinking needs no zeroing (qemu-img rounded 2000000 up to 2000384).
      await e.resize('odd.qcow2', 2000384n - 512n, { allowShrink: true });
    });
    expect(snapshotDir(d)['v2.qcow2']).toBe(before['v2.qcow2']);
  });

  it('rebase without a backing format is refused with qemu-img 7.2\'s words (the native engine stores no format)', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'rebase-'));
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'], d);
    expect(tool('qemu-img', ['rebase', '-u', '-b', 'base.qcow2', './img.qcow2'], d).stderr).toContain('backing format must be specified');
    const before = md5(path.join(d, 'img.qcow2'));
    await inDir(d, async () => {
      expect(await outcome(() => new QemuImgEngine().rebase('img.qcow2', 'base.qcow2'))).toMatchObject({
        ok: false, code: 'REFUSED', message: "Could not change the backing file to 'base.qcow2': backing format must be specified",
      });
      await new QemuImgEngine().rebase('img.qcow2', ''); // removing needs no format
    });
    expect(md5(path.join(d, 'img.qcow2'))).toBe(before);
  });

  it('a create that qemu-img fails half way leaves nothing behind and touches no existing file', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'failing-'));
    // Real qemu-img for create, a failure for the amend that stores the data file name.
    const flaky = fakeQemuImg('flaky-qemu-img', `if [ "$1" = amend ]; then echo "qemu-img: Error while amending options: Input/output error" >&2; exit 1; fi\nexec '${REAL}' "$@"`);
    const e = new QemuImgEngine({ qemuImg: flaky });
    fs.writeFileSync(path.join(d, 'disk.raw'), Buffer.alloc(1 << 20, 7));
    const sum = md5(path.join(d, 'disk.raw'));
    const before = snapshotDir(d);
    await inDir(d, async () => {
      expect(await outcome(() => e.create('img.qcow2', { size: 4n * M, dataFile: 'new.raw', dataFileRaw: true }))).toMatchObject({ ok: false, code: 'IO' });
      expect(await outcome(() => e.create('img.qcow2', { dataFile: 'disk.raw', adoptDataFile: true, dataFileRaw: true }))).toMatchObject({ ok: false, code: 'IO' });
      fs.mkdirSync('other');
      expect(await outcome(() => e.create('img.qcow2', { size: 4n * M, dataFile: 'other/new.raw' }))).toMatchObject({ ok: false, code: 'IO' });
      // And a qemu-img that fails the create itself.
      const failing = fakeQemuImg('failing-qemu-img', `if [ "$1" = create ]; then echo "qemu-img: img.qcow2: Could not resize file: No space left on device" >&2; exit 1; fi\nexec '${REAL}' "$@"`);
      expect(await outcome(() => new QemuImgEngine({ qemuImg: failing }).create('img.qcow2', { size: M, dataFile: 'new.raw' }))).toMatchObject({ ok: false, code: 'IO' });
    });
    fs.rmdirSync(path.join(d, 'other'));
    expect(snapshotDir(d)).toEqual(before); // no image, no data file, no temp folders
    expect(md5(path.join(d, 'disk.raw'))).toBe(sum);
  });

  it('never overwrites an image created concurrently between the check and the link', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'race-'));
    // qemu-img "create" that also drops a file at the destination: link(2) must refuse it.
    const racing = fakeQemuImg('racing-qemu-img', `if [ "$1" = create ]; then echo other > '${path.join(d, 'img.qcow2')}'; echo other > '${path.join(d, 'img.data')}'; fi\nexec '${REAL}' "$@"`);
    const e = new QemuImgEngine({ qemuImg: racing });
    await inDir(d, async () => {
      expect(await outcome(() => e.create('img.qcow2', { size: M, dataFile: 'img.data' }))).toMatchObject({ ok: false, code: 'EXISTS' });
    });
    expect(fs.readFileSync(path.join(d, 'img.qcow2'), 'utf8')).toBe('other\n');
    expect(fs.readFileSync(path.join(d, 'img.data'), 'utf8')).toBe('other\n');
    expect(fs.readdirSync(d).sort()).toEqual(['img.data', 'img.qcow2']);
  });
});
