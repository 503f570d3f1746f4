// Shared tooling of the engine suites: QEMU tool availability (skip with a reason, or fail under
// CI=true / REQUIRE_QEMU=1), observation of an image through qemu-img (info, map, check, md5),
// and a real lock holder (qemu-nbd --fork), always stopped afterwards.

import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Qcow2Error } from '../../provider/model/errors';
import { qemuImgPath, requireQemu } from '../helpers/qemu';
import { stopProcess } from '../helpers/common';

export { requireQemu };

/**
 * Where scratch images go: $QCOW2_TEST_TMP, else /dev/shm when it is a writable folder (qemu-img
 * and the native engine fsync: on a busy disk that dominates the suite's time), else os.tmpdir().
 * Executables never go there (/dev/shm may be mounted noexec).
 */
export function scratchBase(): string {
  const env = process.env.QCOW2_TEST_TMP;
  if (env) return env;
  try {
    fs.accessSync('/dev/shm', fs.constants.W_OK);
    if (fs.statSync('/dev/shm').isDirectory()) return '/dev/shm';
  } catch {
    /* not there */
  }
  return os.tmpdir();
}

function toolOk(tool: string): boolean {
  const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
  return r.error === undefined && r.status === 0;
}

export const MISSING_TOOLS = [qemuImgPath, 'qemu-io', 'qemu-nbd'].filter((t) => !toolOk(t));

/** True when the suite must skip (tools absent, not required); says why on the console. */
export function skipWithoutTools(suite: string): boolean {
  if (MISSING_TOOLS.length === 0 || requireQemu) return false;
  console.warn(`[${suite}] SKIPPED: ${MISSING_TOOLS.join(', ')} not found (apt-get install -y qemu-utils; ` +
    'CI=true or REQUIRE_QEMU=1 turns this into a failure)');
  return true;
}

export interface ToolResult { status: number | null; stdout: string; stderr: string }

/** Run a QEMU tool with an argument array in `cwd`, C locale. */
export function tool(name: string, args: string[], cwd: string): ToolResult {
  const bin = name === 'qemu-img' ? qemuImgPath : name;
  const r = spawnSync(bin, args, { cwd, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, timeout: 30_000, maxBuffer: 64 << 20 });
  if (r.error !== undefined) {
    throw new Error(`cannot run ${bin}${requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : ''}: ${r.error.message}`);
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Run and insist on exit 0. */
export function must(name: string, args: string[], cwd: string): ToolResult {
  const r = tool(name, args, cwd);
  if (r.status !== 0) throw new Error(`${name} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r;
}

export function md5(file: string): string {
  return createHash('md5').update(fs.readFileSync(file)).digest('hex');
}

/** A name safe as a positional qemu-img argument: ./ in front of relative names. */
export const positional = (name: string) => (path.isAbsolute(name) ? name : `./${name}`);

/**
 * What qemu-img says about an image (run in `dir`, so relative data/backing names resolve as
 * they do for the engines): info (without filename / actual-size), map, check, plus md5 and size
 * of the qcow2 file and of its data file.
 */
export function observe(dir: string, image = 'img.qcow2'): Record<string, unknown> {
  const info = JSON.parse(must('qemu-img', ['info', '--output=json', '-U', positional(image)], dir).stdout) as Record<string, unknown>;
  delete info.filename;
  delete info['actual-size'];
  // Derived from the name it was opened by: equal names give equal values, but ./ is ours.
  if (typeof info['full-backing-filename'] === 'string') info['full-backing-filename'] = (info['full-backing-filename'] as string).replace(/^\.\//, '');
  const map = JSON.parse(must('qemu-img', ['map', '--output=json', positional(image)], dir).stdout) as unknown;
  const chk = tool('qemu-img', ['check', '--output=json', positional(image)], dir);
  const check = JSON.parse(chk.stdout) as Record<string, unknown>;
  delete check.filename;
  const file = path.join(dir, image);
  const out: Record<string, unknown> = { info, map, check, checkStatus: chk.status, size: fs.statSync(file).size, md5: md5(file) };
  const data = ((info['format-specific'] as { data: Record<string, unknown> }).data['data-file']) as string | undefined;
  if (data !== undefined) {
    const df = path.resolve(dir, data);
    out.dataFile = fs.existsSync(df) ? { size: fs.statSync(df).size, md5: md5(df) } : 'missing';
  }
  return out;
}

/** Every file under dir (relative names, hidden ones too) with its md5: what a failure left behind. */
export function snapshotDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(dir, p)] = md5(p);
    }
  };
  walk(dir);
  return out;
}

export type Outcome = { ok: true } | { ok: false; code: string; message: string; name: string };

/** Run and capture a Qcow2Error (anything else is rethrown). */
export async function outcome(fn: () => Promise<unknown>): Promise<Outcome> {
  try {
    await fn();
    return { ok: true };
  } catch (e) {
    if (Qcow2Error.isInstance(e)) return { ok: false, code: e.code, message: e.message, name: e.name };
    throw e;
  }
}

/** process.chdir for the duration of fn (vitest's forks pool allows it). */
export async function inDir<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const prev = process.cwd();
  process.chdir(dir);
  try {
    return await fn();
  } finally {
    process.chdir(prev);
  }
}

// ---------------------------------------------------------------------------------------------
// A real QEMU lock holder

const daemons = new Set<number>();

/** Stop one holder we started (by its pid): SIGTERM, then SIGKILL. */
export function stopHolder(pid: number): void {
  daemons.delete(pid);
  stopProcess(pid);
}

export function stopAllHolders(): void {
  for (const pid of [...daemons]) stopHolder(pid);
}
process.on('exit', stopAllHolders);

/** `qemu-nbd --fork --persistent -k SOCKET --pid-file F -f qcow2 IMAGE`: returns once it holds the image. */
export function startHolder(dir: string, image: string): number {
  const sock = path.join(dir, 'nbd.sock');
  const pidFile = path.join(dir, 'nbd.pid');
  const r = tool('qemu-nbd', ['--fork', '--persistent', '-k', sock, '--pid-file', pidFile, '-f', 'qcow2', positional(image)], dir);
  if (fs.existsSync(pidFile)) {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    daemons.add(pid);
    if (r.status !== 0) stopHolder(pid);
  }
  if (r.status !== 0) throw new Error(`qemu-nbd failed (${r.status}): ${r.stderr}`);
  return Number(fs.readFileSync(pidFile, 'utf8').trim());
}
