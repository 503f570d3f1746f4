// Shared helpers for the amend suites: shell and qemu runs in a folder, the built CLI run
// in-process (same code path as `node dist/provider/cli/qcow2.js`, without Node's start-up),
// chunked file hashing/equality, and normalised `qemu-img info` / `map` results.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { qemuImgAvailable, qemuImgPath, requireQemu } from '../../helpers/qemu';

/** The built CLI (QCOW2_CLI overrides, e.g. a build in a temp outDir). */
export const CLI = process.env.QCOW2_CLI ?? resolve(__dirname, '../../../dist/provider/cli/qcow2.js');
export const HAVE_CLI = existsSync(CLI);

export const qemuIoPath = process.env.QEMU_IO ?? 'qemu-io';

function available(bin: string): boolean {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  return r.error === undefined && r.status === 0;
}

export const HAVE_QEMU_IMG = qemuImgAvailable();
export const HAVE_QEMU_IO = available(qemuIoPath);

/**
 * Why this suite cannot run, or '' when it can. qemu-img / qemu-io missing is a visible skip,
 * except under CI=true or REQUIRE_QEMU=1, where it is returned as '' so the tests run and fail
 * naming the cause (see failIfRequired). A missing build is always a visible skip locally.
 */
export function skipReason(suite: string): string {
  const missing: string[] = [];
  if (!HAVE_QEMU_IMG) missing.push(`${qemuImgPath} not found ($QEMU_IMG or PATH)`);
  if (!HAVE_QEMU_IO) missing.push(`${qemuIoPath} not found ($QEMU_IO or PATH)`);
  if (!HAVE_CLI) missing.push(`${CLI} not built (npm run build)`);
  if (!missing.length) return '';
  if (requireQemu) return '';
  const why = `${missing.join('; ')}; apt-get install qemu-utils; CI=true or REQUIRE_QEMU=1 turns this into a failure`;
  console.warn(`[${suite}] SKIPPED: ${why}`);
  return why;
}

/** Under CI=true / REQUIRE_QEMU=1 a missing tool is a failure, stated once, up front. */
export function missingTools(): string[] {
  const out: string[] = [];
  if (!HAVE_QEMU_IMG) out.push(`${qemuImgPath} is required (CI=true or REQUIRE_QEMU=1) but not found`);
  if (!HAVE_QEMU_IO) out.push(`${qemuIoPath} is required (CI=true or REQUIRE_QEMU=1) but not found`);
  if (!HAVE_CLI) out.push(`${CLI} is required but not built (npm run build)`);
  return out;
}

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

const ENV = { ...process.env, LC_ALL: 'C' };

/** bash -c CMD in cwd (qemu-img / qemu-io on PATH or as $QEMU_IMG / $QEMU_IO). */
export function sh(cmd: string, cwd: string): Run {
  return timed('sh', () => shUntimed(cmd, cwd));
}

function shUntimed(cmd: string, cwd: string): Run {
  const r = spawnSync('bash', ['-c', cmd], {
    cwd,
    encoding: 'utf8',
    env: { ...ENV, QEMU_IMG: qemuImgPath, QEMU_IO: qemuIoPath },
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.error) throw new Error(`cannot run bash -c ${cmd}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** sh, failing loudly when the command fails (setup steps). */
export function shOk(cmd: string, cwd: string): Run {
  const r = sh(cmd, cwd);
  if (r.status !== 0) throw new Error(`setup failed (exit ${r.status}) in ${cwd}: ${cmd}\n${r.stderr}${r.stdout}`);
  return r;
}

/** Seconds spent per qemu-img subcommand / shell (AMEND_TIMING=1 prints them). */
export const timings = new Map<string, number>();
function timed<T>(key: string, fn: () => T): T {
  const t0 = process.hrtime.bigint();
  try {
    return fn();
  } finally {
    timings.set(key, (timings.get(key) ?? 0) + Number(process.hrtime.bigint() - t0) / 1e9);
  }
}

export function qemuImg(args: string[], cwd: string): Run {
  return timed(`qemu-img ${args[0]}`, () => qemuImgUntimed(args, cwd));
}

function qemuImgUntimed(args: string[], cwd: string): Run {
  const r = spawnSync(qemuImgPath, args, { cwd, encoding: 'utf8', env: ENV, maxBuffer: 256 * 1024 * 1024 });
  if (r.error) {
    const why = requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : '';
    throw new Error(`cannot run ${qemuImgPath}${why}: ${r.error.message}`);
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface CliModule { main(argv: string[], io?: { out(t: string): void; err(t: string): void }): Promise<number> }
let cliModule: CliModule | undefined;

/**
 * Our CLI, in-process: `main(argv)` of the built dist/provider/cli/qcow2.js with cwd = `cwd` and
 * stdout/stderr captured. Same parsing, engine and messages as the spawned binary.
 */
export async function runOurs(args: string[], cwd: string): Promise<Run> {
  const t0 = process.hrtime.bigint();
  try {
    return await runOursUntimed(args, cwd);
  } finally {
    timings.set('ours', (timings.get('ours') ?? 0) + Number(process.hrtime.bigint() - t0) / 1e9);
  }
}

async function runOursUntimed(args: string[], cwd: string): Promise<Run> {
  cliModule ??= require(CLI) as CliModule;
  const prev = process.cwd();
  let stderr = '';
  let stdout = '';
  process.chdir(cwd);
  let status: number;
  try {
    status = await cliModule.main(args, { out: (t) => { stdout += t; }, err: (t) => { stderr += t; } });
  } finally {
    process.chdir(prev);
  }
  return { status, stdout, stderr };
}

/** Our CLI as a separate process (kill -9 trials). */
export function cliArgv(args: string[]): string[] {
  return [process.execPath, CLI, ...args];
}

const CHUNK = 4 << 20;

function readAt(fd: number, buf: Buffer, pos: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** md5 of a file, read in chunks (sparse 1 GiB files are fine). */
export function md5(path: string): string {
  return timed('md5', () => md5Untimed(path));
}

function md5Untimed(path: string): string {
  const h = createHash('md5');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(CHUNK);
    for (let pos = 0; ; pos += CHUNK) {
      const n = readAt(fd, buf, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      if (n < CHUNK) break;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** First differing offset of two files, or undefined when they are byte-identical. */
export function firstDifference(a: string, b: string, limit = Infinity): number | undefined {
  return timed('cmp', () => firstDifferenceUntimed(a, b, limit));
}

function firstDifferenceUntimed(a: string, b: string, limit: number): number | undefined {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const sa = fstatSync(fa).size;
    const sb = fstatSync(fb).size;
    const ba = Buffer.alloc(CHUNK);
    const bb = Buffer.alloc(CHUNK);
    for (let pos = 0; pos < Math.min(sa, sb, limit); pos += CHUNK) {
      const na = readAt(fa, ba, pos);
      const nb = readAt(fb, bb, pos);
      const n = Math.min(na, nb);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        let i = 0;
        while (ba[i] === bb[i]) i++;
        return pos + i;
      }
    }
    return sa === sb ? undefined : Math.min(sa, sb);
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

export type Json = Record<string, unknown>;

export interface Info {
  /** As qemu-img prints it. */
  raw: Json;
  /** Minus what legitimately differs between two folders: filename, actual-size; the folder path. */
  norm: Json;
  /** The stored data file name, if any. */
  dataFile?: string;
}

/** `qemu-img info --output=json` of `file` in `dir`. */
export function infoOf(dir: string, file = 'img.qcow2'): Info {
  const r = qemuImg(['info', '--output=json', file], dir);
  if (r.status !== 0) throw new Error(`qemu-img info ${join(dir, file)} failed: ${r.stderr}`);
  const raw = JSON.parse(r.stdout) as Json;
  const norm = JSON.parse(r.stdout.split(dir).join('<dir>')) as Json;
  delete norm['filename'];
  delete norm['actual-size'];
  const df = (raw['format-specific'] as { data?: { 'data-file'?: string } } | undefined)?.data?.['data-file'];
  return df === undefined ? { raw, norm } : { raw, norm, dataFile: df };
}

/** `qemu-img map --output=json` parsed. */
export function mapOf(dir: string, file = 'img.qcow2'): Run & { json?: unknown } {
  const r = qemuImg(['map', '--output=json', file], dir);
  return r.status === 0 ? { ...r, json: JSON.parse(r.stdout) } : r;
}

export function checkOf(dir: string, file = 'img.qcow2'): Run {
  return qemuImg(['check', file], dir);
}

/**
 * A filename qemu-img can open from anywhere: the plain path, or, when the image names a
 * (relative) data file, a json: spec that pins the data file next to the image, since qemu
 * resolves a relative data file name against the process's working directory.
 */
export function openSpec(dir: string, dataFile: string | undefined, file = 'img.qcow2'): string {
  if (dataFile === undefined) return join(dir, file);
  return 'json:' + JSON.stringify({
    driver: 'qcow2',
    file: { driver: 'file', filename: join(dir, file) },
    'data-file': { driver: 'file', filename: dataFile.startsWith('/') ? dataFile : join(dir, dataFile) },
  });
}

/** `qemu-img compare` of two images (each opened with its own data file). */
export function compareImages(a: string, b: string): Run {
  return qemuImg(['compare', a, b], '/');
}
