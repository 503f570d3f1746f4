// Finding and running the real qemu-img for differential tests; whether its absence skips or fails.

import { spawnSync } from 'child_process';

/** The qemu-img binary: $QEMU_IMG, else `qemu-img` on PATH. */
export const qemuImgPath = process.env.QEMU_IMG ?? 'qemu-img';

/** In CI (or when asked) a missing qemu-img is a failure, never a silent skip. */
export const requireQemu = process.env.CI === 'true' || process.env.REQUIRE_QEMU === '1';

let available: boolean | undefined;

export function qemuImgAvailable(): boolean {
  if (available === undefined) {
    const r = spawnSync(qemuImgPath, ['--version'], { encoding: 'utf8' });
    available = r.error === undefined && r.status === 0;
  }
  return available;
}

/**
 * True when differential tests should be skipped (qemu-img absent and not required). Says why
 * on the console, so a skip is never silent. When qemu-img is required but absent this returns
 * false: the tests run and fail in runQemuImg with a message naming the cause.
 */
export function skipWithoutQemu(suite: string): boolean {
  if (qemuImgAvailable() || requireQemu) return false;
  console.warn(`[${suite}] skipping differential tests: ${qemuImgPath} not found (set REQUIRE_QEMU=1 to make this fail)`);
  return true;
}

export interface QemuImgResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs qemu-img with an argument array (no shell), in C locale so messages are stable. */
export function runQemuImg(args: string[], opts: { cwd?: string } = {}): QemuImgResult {
  const r = spawnSync(qemuImgPath, args, {
    cwd: opts.cwd,
    encoding: 'utf8',
    env: { ...process.env, LC_ALL: 'C' },
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.error !== undefined) {
    const why = requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : '';
    throw new Error(`cannot run ${qemuImgPath}${why}: ${r.error.message}`);
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
