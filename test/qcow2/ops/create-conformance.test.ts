// Conformance of `create` with qemu-img 7.2: for every configuration of create-cases.ts, the
// image qemu-img writes and the one createImage() writes are compared (byte for byte when the
// metadata fits the first refcount block, else by check/info/map), and every configuration
// qemu-img refuses must be refused by us with qemu-img's message and without leaving files.
//
// Layout: one temp root per run; per case <root>/<n>/qemu and <root>/<n>/ours, each with the same
// relative names (img.qcow2, img.data, base.qcow2, base.raw). qemu-img runs with cwd = its dir;
// createImage() runs with process.cwd() = ours (forks pool: chdir is allowed), so the stored
// relative data-file / backing names are identical and resolve into the right dir.

import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createImage } from '../../../provider/engines/native/ops';
import { imageInfo } from '../../helpers/info';
import { Qcow2Error } from '../../../provider/model/errors';
import type { CreateOptions } from '../../../provider/model/options';

import { qemuImgAvailable, qemuImgPath, requireQemu, runQemuImg, type QemuImgResult } from '../../helpers/qemu';
import {
  BACKING_QCOW2,
  BACKING_QCOW2_SIZE,
  BACKING_RAW,
  BACKING_RAW_BYTES,
  DATA_NAME,
  FAILING_CASES,
  IMAGE_NAME,
  REFUSED_BY_DESIGN,
  VALID_CASES,
  type CreateCase,
  type FailingCase,
} from './create-cases';
import { allocatedBytes, compareDataFiles, describeDiff, diffFiles, md5File } from './create-compare';
import { inDir } from '../../helpers/common';

const HAVE_QEMU = qemuImgAvailable();
const SKIP_REASON = `${qemuImgPath} not found ($QEMU_IMG or PATH; apt-get install qemu-utils; CI=true or REQUIRE_QEMU=1 turns this into a failure)`;
// QCOW2_CLI overrides the CLI entry point (e.g. a build in a temp outDir).
const CLI = process.env.QCOW2_CLI ?? resolve(__dirname, '../../../dist/provider/cli/qcow2.js');
const HAVE_CLI = existsSync(CLI);
const CLI_SKIP_REASON = `${CLI} not built (npm run build)`;

if (!HAVE_QEMU && !requireQemu) {
  console.warn(`[conformance/create] SKIPPED: ${SKIP_REASON}`);
}

// ------------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------------

let root = '';
let baseDir = '';
let caseCounter = 0;


/** Fresh <root>/<n>/{qemu,ours}, each holding base.qcow2 and base.raw. */
function caseDirs(): { dir: string; a: string; b: string } {
  const dir = join(root, String(++caseCounter).padStart(3, '0'));
  const a = join(dir, 'qemu');
  const b = join(dir, 'ours');
  for (const d of [a, b]) {
    mkdirSync(d, { recursive: true });
    copyFileSync(join(baseDir, BACKING_QCOW2), join(d, BACKING_QCOW2));
    copyFileSync(join(baseDir, BACKING_RAW), join(d, BACKING_RAW));
  }
  return { dir, a, b };
}

function qemuCreateArgs(opts: string, size: string): string[] {
  return ['create', '-q', '-f', 'qcow2', ...(opts === '' ? [] : ['-o', opts]), IMAGE_NAME, size];
}

function mustRun(args: string[], cwd: string): QemuImgResult {
  const r = runQemuImg(args, { cwd });
  if (r.status !== 0) {
    throw new Error(`qemu-img ${args.join(' ')} (cwd ${cwd}) exited ${r.status}: ${r.stderr.trim()}`);
  }
  return r;
}

function qemuJson(args: string[], cwd: string): Record<string, unknown> {
  return JSON.parse(mustRun(args, cwd).stdout) as Record<string, unknown>;
}

function without<T extends Record<string, unknown>>(o: T, ...keys: string[]): Record<string, unknown> {
  const c: Record<string, unknown> = { ...o };
  for (const k of keys) delete c[k];
  return c;
}

/** [name, case] rows for it.each('%s'): the name printed verbatim (no quotes, no truncation). */
function named<T extends { name: string }>(cases: T[]): Array<[string, T]> {
  return cases.map((c) => [c.name, c]);
}

function errorSummary(e: unknown): string {
  if (Qcow2Error.isInstance(e)) return `Qcow2Error ${e.code}: ${e.message}`;
  if (e instanceof Error) return `${e.name}: ${e.message}\n${e.stack ?? ''}`;
  return String(e);
}

function ourCreate(dirB: string, options: CreateOptions): unknown {
  try {
    inDir(dirB, () => createImage(join(dirB, IMAGE_NAME), options));
    return undefined;
  } catch (e) {
    return e;
  }
}

// ------------------------------------------------------------------------------------------------
// Suites
// ------------------------------------------------------------------------------------------------

if (!HAVE_QEMU && requireQemu) {
  describe('create conformance', () => {
    it('needs qemu-img (CI=true or REQUIRE_QEMU=1)', () => {
      throw new Error(`qemu-img is required here but ${SKIP_REASON}`);
    });
  });
}

const suite = HAVE_QEMU ? describe : describe.skip;
const title = (s: string): string => (HAVE_QEMU ? s : `${s} [SKIPPED: ${SKIP_REASON}]`);

suite(title('create conformance vs qemu-img 7.2'), () => {
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'qcow2-conformance-create-'));
    baseDir = join(root, 'base');
    mkdirSync(baseDir);
    mustRun(['create', '-q', '-f', 'qcow2', BACKING_QCOW2, BACKING_QCOW2_SIZE], baseDir);
    writeFileSync(join(baseDir, BACKING_RAW), Buffer.alloc(0));
    // Sparse 1 MiB raw backing file.
    spawnSync('truncate', ['-s', String(BACKING_RAW_BYTES), join(baseDir, BACKING_RAW)]);
  });

  afterAll(() => {
    if (root !== '') rmSync(root, { recursive: true, force: true });
  });

  it('reference qemu-img is 7.2.x', () => {
    expect(runQemuImg(['--version']).stdout.split('\n')[0]).toMatch(/^qemu-img version 7\.2\./);
  });

  it(`has at least 200 valid configurations (${VALID_CASES.length}) and a failure table (${FAILING_CASES.length})`, () => {
    expect(VALID_CASES.length).toBeGreaterThanOrEqual(200);
    expect(new Set(VALID_CASES.map((c) => c.name)).size).toBe(VALID_CASES.length);
    expect(FAILING_CASES.length).toBeGreaterThan(20);
  });

  describe('valid configurations', () => {
    it.each(named(VALID_CASES))('%s', (_name, c) => {
      const { dir, a, b } = caseDirs();
      try {
        runValidCase(c, a, b);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('configurations qemu-img refuses: same message, nothing left behind', () => {
    it.each(named(FAILING_CASES))('%s', (_name, c) => {
      const { dir, a, b } = caseDirs();
      try {
        runFailingCase(c, a, b);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('refused by design: extended_l2=on with data_file_raw=on (qemu-img 7.2 accepts it, broken)', () => {
    it.each(named(REFUSED_BY_DESIGN))('%s', (_name, c) => {
      const { dir, a, b } = caseDirs();
      try {
        const q = runQemuImg(qemuCreateArgs(c.opts, c.sizeBytes.toString()), { cwd: a });
        // Documents the reason for the exception; not a requirement on us.
        expect.soft(q.status, `qemu-img 7.2 is expected to accept this: ${q.stderr}`).toBe(0);
        const err = ourCreate(b, c.options);
        expect(err, 'createImage must refuse extended_l2 + data_file_raw').toBeDefined();
        expect(Qcow2Error.isInstance(err), errorSummary(err)).toBe(true);
        const msg = (err as Qcow2Error).message;
        expect.soft(msg, 'message names extended_l2').toMatch(/extended[ _-]?l2/i);
        expect.soft(msg, 'message names data_file_raw').toMatch(/data[ _-]?file[ _-]?raw/i);
        expect.soft(['INVALID_OPTION', 'REFUSED']).toContain((err as Qcow2Error).code);
        expect.soft(existsSync(join(b, IMAGE_NAME)), 'image left behind').toBe(false);
        expect.soft(existsSync(join(b, DATA_NAME)), 'data file left behind').toBe(false);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('files on disk', () => {
    it('a 1G data_file_raw image gets a sparse data file', () => {
      const { dir, b } = caseDirs();
      try {
        const err = ourCreate(b, { size: 1n << 30n, dataFile: DATA_NAME, dataFileRaw: true });
        expect(err, errorSummary(err)).toBeUndefined();
        const st = statSync(join(b, DATA_NAME));
        expect(st.size).toBe(1 << 30);
        expect(st.blocks * 512, `data file allocates ${st.blocks * 512} B of ${st.size}`).toBeLessThanOrEqual(1 << 20);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('creating onto an existing image path fails with EXISTS and leaves it untouched', () => {
      const { dir, b } = caseDirs();
      try {
        mustRun(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', IMAGE_NAME, '5M'], b);
        const before = md5File(join(b, IMAGE_NAME));
        const err = ourCreate(b, { size: 1n << 20n });
        expect(Qcow2Error.isInstance(err), errorSummary(err)).toBe(true);
        expect((err as Qcow2Error).code).toBe('EXISTS');
        expect(md5File(join(b, IMAGE_NAME))).toBe(before);
        // With a data file option too: still refused, and no data file is created.
        const err2 = ourCreate(b, { size: 1n << 20n, dataFile: DATA_NAME, dataFileRaw: true });
        expect(Qcow2Error.isInstance(err2), errorSummary(err2)).toBe(true);
        expect((err2 as Qcow2Error).code).toBe('EXISTS');
        expect(md5File(join(b, IMAGE_NAME))).toBe(before);
        expect(existsSync(join(b, DATA_NAME)), 'data file created although the image exists').toBe(false);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('an existing empty file at the image path is not overwritten either', () => {
      const { dir, b } = caseDirs();
      try {
        writeFileSync(join(b, IMAGE_NAME), Buffer.alloc(0));
        const err = ourCreate(b, { size: 1n << 20n });
        expect(Qcow2Error.isInstance(err), errorSummary(err)).toBe(true);
        expect((err as Qcow2Error).code).toBe('EXISTS');
        expect(statSync(join(b, IMAGE_NAME)).size).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('an existing data file without adoptDataFile is refused, untouched, and no image is left', () => {
      const { dir, b } = caseDirs();
      try {
        const content = Buffer.alloc(1 << 16);
        for (let i = 0; i < content.length; i++) content[i] = (i * 131 + 7) & 0xff;
        writeFileSync(join(b, DATA_NAME), content);
        const before = md5File(join(b, DATA_NAME));
        for (const options of [
          { size: 1n << 20n, dataFile: DATA_NAME, dataFileRaw: true },
          { size: 1n << 20n, dataFile: DATA_NAME },
          { size: 1n << 20n, dataFile: DATA_NAME, adoptDataFile: false },
        ] satisfies CreateOptions[]) {
          const err = ourCreate(b, options);
          expect(Qcow2Error.isInstance(err), errorSummary(err)).toBe(true);
          expect.soft((err as Qcow2Error).code).toBe('EXISTS');
          expect(md5File(join(b, DATA_NAME))).toBe(before);
          expect(statSync(join(b, DATA_NAME)).size).toBe(content.length);
          expect(existsSync(join(b, IMAGE_NAME)), 'image left behind').toBe(false);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('imageInfo() with an absolute path equals qemu-img info of that path (minus actual-size)', () => {
      const { dir, b } = caseDirs();
      try {
        const err = ourCreate(b, { size: 1n << 30n, backingFile: BACKING_QCOW2, backingFormat: 'qcow2', dataFile: DATA_NAME });
        expect(err, errorSummary(err)).toBeUndefined();
        const abs = join(b, IMAGE_NAME);
        const q = qemuJson(['info', '--output=json', abs], b);
        expect(without(imageInfo(abs) as unknown as Record<string, unknown>, 'actual-size')).toEqual(without(q, 'actual-size'));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  // A handful of CLI runs (process start is slow): same argv as qemu-img, same bytes.
  const cliSuite = HAVE_CLI ? describe : describe.skip;
  cliSuite(HAVE_CLI ? 'CLI (dist/provider/cli/qcow2.js)' : `CLI [SKIPPED: ${CLI_SKIP_REASON}]`, () => {
    const CLI_CASES: Array<{ name: string; args: string[]; needsDataFile?: boolean }> = [
      { name: 'defaults 1G', args: ['create', '-f', 'qcow2', '-q', IMAGE_NAME, '1G'] },
      {
        name: '-o cluster_size=4096,refcount_bits=8,lazy_refcounts=on 100M',
        args: ['create', '-f', 'qcow2', '-q', '-o', 'cluster_size=4096,refcount_bits=8,lazy_refcounts=on', IMAGE_NAME, '100M'],
      },
      {
        name: '-o data_file=img.data,data_file_raw=on 1G',
        args: ['create', '-f', 'qcow2', '-q', '-o', `data_file=${DATA_NAME},data_file_raw=on`, IMAGE_NAME, '1G'],
        needsDataFile: true,
      },
      {
        name: '-b base.qcow2 -F qcow2 (size from the backing file)',
        args: ['create', '-f', 'qcow2', '-q', '-b', BACKING_QCOW2, '-F', 'qcow2', IMAGE_NAME],
      },
      {
        name: '-o compat=0.10,cluster_size=2M 65535 (size suffix in an option, odd size)',
        args: ['create', '-f', 'qcow2', '-q', '-o', 'compat=0.10,cluster_size=2M', IMAGE_NAME, '65535'],
      },
      {
        name: '-o extended_l2=on,preallocation=metadata 1.5M (fractional size)',
        args: ['create', '-f', 'qcow2', '-q', '-o', 'extended_l2=on,preallocation=metadata', IMAGE_NAME, '1.5M'],
      },
    ];

    it.each(named(CLI_CASES))('%s', (_name, { args, needsDataFile }) => {
      const { dir, a, b } = caseDirs();
      try {
        mustRun(args, a);
        const r = spawnSync(process.execPath, [CLI, ...args], { cwd: b, encoding: 'utf8' });
        expect(r.status, `stderr: ${r.stderr}`).toBe(0);
        expect(r.stdout).toBe('');
        const d = diffFiles(join(a, IMAGE_NAME), join(b, IMAGE_NAME));
        expect(d && describeDiff(join(a, IMAGE_NAME), join(b, IMAGE_NAME), d), 'qcow2 bytes').toBeFalsy();
        if (needsDataFile) expect(compareDataFiles(join(a, DATA_NAME), join(b, DATA_NAME))).toBe('');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('without -q prints the same "Formatting ..." line', () => {
      const { dir, a, b } = caseDirs();
      try {
        const args = ['create', '-f', 'qcow2', '-o', 'cluster_size=4096', IMAGE_NAME, '1G'];
        const q = mustRun(args, a);
        const r = spawnSync(process.execPath, [CLI, ...args], { cwd: b, encoding: 'utf8' });
        expect(r.status, `stderr: ${r.stderr}`).toBe(0);
        expect(r.stdout).toBe(q.stdout);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('a refused configuration: same exit status, qemu-img message on stderr, no files', () => {
      const { dir, a, b } = caseDirs();
      try {
        const args = ['create', '-f', 'qcow2', '-q', '-o', 'compat=0.10,data_file=img.data', IMAGE_NAME, '1M'];
        const q = runQemuImg(args, { cwd: a });
        expect(q.status).not.toBe(0);
        const msg = q.stderr.replace(`qemu-img: ${IMAGE_NAME}: `, '').trim();
        const r = spawnSync(process.execPath, [CLI, ...args], { cwd: b, encoding: 'utf8' });
        expect.soft(r.status).toBe(q.status);
        expect.soft(r.stderr).toContain(msg);
        expect.soft(existsSync(join(b, IMAGE_NAME))).toBe(false);
        expect.soft(existsSync(join(b, DATA_NAME))).toBe(false);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

if (HAVE_QEMU && !HAVE_CLI && requireQemu) {
  describe('CLI', () => {
    it('is built under CI (npm test builds before vitest)', () => {
      throw new Error(CLI_SKIP_REASON);
    });
  });
}

// ------------------------------------------------------------------------------------------------
// Case bodies
// ------------------------------------------------------------------------------------------------

function runValidCase(c: CreateCase, a: string, b: string): void {
  const size = c.sizeBytes.toString();
  const expectation = c.byteIdentical
    ? `~${c.estimatedClusters} clusters <= ${c.firstRefblockCovers} covered by the first refblock`
    : `~${c.estimatedClusters} clusters > ${c.firstRefblockCovers} covered by the first refblock: QEMU's allocator adds refblocks (map compared too)`;

  const q = runQemuImg(qemuCreateArgs(c.opts, size), { cwd: a });
  if (q.status !== 0) throw new Error(`reference qemu-img refused a configuration listed as valid: ${q.stderr.trim()}`);

  const err = ourCreate(b, c.options);
  if (err !== undefined) throw new Error(`createImage refused a configuration qemu-img accepts (${expectation}):\n${errorSummary(err)}`);

  const imgA = join(a, IMAGE_NAME);
  const imgB = join(b, IMAGE_NAME);

  // 1. The qcow2 file, byte for byte: also beyond the first refblock, where the engine
  // reproduces QEMU's first-fit allocator (new refblocks, refcount table growth).
  {
    const d = diffFiles(imgA, imgB);
    const report = d ? `${c.name}\n${expectation}\n${describeDiff(imgA, imgB, d)}` : 'identical';
    expect.soft(report, 'qcow2 file bytes').toBe('identical');
  }

  // 2. The data file: present in both or neither; same size and content.
  const dataA = join(a, DATA_NAME);
  const dataB = join(b, DATA_NAME);
  expect.soft(existsSync(dataB), 'our data file exists iff qemu-img made one').toBe(existsSync(dataA));
  if (existsSync(dataA) && existsSync(dataB)) {
    expect.soft(compareDataFiles(dataA, dataB), 'data file').toBe('');
  }

  // 3. qemu-img info of both images (relative names, cwd = each dir: filename fields agree).
  const infoArgs = ['info', '--output=json', IMAGE_NAME];
  const infoA = qemuJson(infoArgs, a);
  const infoBRun = runQemuImg(infoArgs, { cwd: b });
  expect.soft(infoBRun.status, `qemu-img info on ours: ${infoBRun.stderr}`).toBe(0);
  const infoB = infoBRun.status === 0 ? (JSON.parse(infoBRun.stdout) as Record<string, unknown>) : undefined;
  if (infoB) {
    expect.soft(without(infoB, 'actual-size', 'filename'), "qemu-img info of ours vs of qemu-img's").toEqual(
      without(infoA, 'actual-size', 'filename'),
    );
  }

  // 4. Our imageInfo() is qemu-img info's JSON.
  let ours: Record<string, unknown> | undefined;
  try {
    ours = inDir(b, () => imageInfo(IMAGE_NAME) as unknown as Record<string, unknown>);
  } catch (e) {
    expect.soft(`imageInfo threw: ${errorSummary(e)}`, 'imageInfo()').toBe('no exception');
  }
  if (ours && infoB) {
    expect.soft(without(ours, 'actual-size'), 'imageInfo() vs qemu-img info').toEqual(without(infoB, 'actual-size'));
  }

  // 5. qemu-img check is clean on ours.
  const chk = runQemuImg(['check', IMAGE_NAME], { cwd: b });
  expect.soft(chk.status, `qemu-img check on ours:\n${chk.stdout}${chk.stderr}`).toBe(0);

  // 6. Beyond the first refblock: the guest-visible mapping must still agree.
  if (!c.byteIdentical) {
    const mapArgs = ['map', '--output=json', IMAGE_NAME];
    const mapA = qemuJson(mapArgs, a);
    const mapB = runQemuImg(mapArgs, { cwd: b });
    expect.soft(mapB.status, `qemu-img map on ours: ${mapB.stderr}`).toBe(0);
    if (mapB.status === 0) expect.soft(JSON.parse(mapB.stdout), 'qemu-img map').toEqual(mapA);
  }
}

function runFailingCase(c: FailingCase, a: string, b: string): void {
  const q = runQemuImg(qemuCreateArgs(c.opts, c.sizeBytes.toString()), { cwd: a });
  expect(q.status, 'reference qemu-img must refuse this configuration').not.toBe(0);
  const prefix = `qemu-img: ${IMAGE_NAME}: `;
  expect(q.stderr.startsWith(prefix), `unexpected qemu-img stderr: ${q.stderr}`).toBe(true);
  const expected = q.stderr.slice(prefix.length).replace(/\n$/, '');

  const err = ourCreate(b, c.options);
  expect(err, `createImage must refuse: qemu-img says "${expected}"`).toBeDefined();
  expect(Qcow2Error.isInstance(err), errorSummary(err)).toBe(true);
  const e = err as Qcow2Error;
  expect.soft(e.message, 'message = qemu-img stderr minus "qemu-img: img.qcow2: "').toBe(expected);
  expect.soft(e.code).toBe('INVALID_OPTION');
  expect.soft(existsSync(join(b, IMAGE_NAME)), 'image left behind').toBe(false);
  expect.soft(existsSync(join(b, DATA_NAME)), 'data file left behind').toBe(false);
}
