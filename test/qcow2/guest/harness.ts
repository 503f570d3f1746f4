// Shared helpers of the data-path tests: a seeded PRNG, qemu-io/qemu-img runners, temp dirs.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { qemuImgAvailable, requireQemu, runQemuImg } from '../../helpers/qemu';

export { runQemuImg };

export { prng } from '../../helpers/common';

export const qemuIoPath = process.env.QEMU_IO ?? 'qemu-io';

let ioAvailable: boolean | undefined;
export function qemuIoAvailable(): boolean {
  if (ioAvailable === undefined) {
    const r = spawnSync(qemuIoPath, ['--version'], { encoding: 'utf8' });
    ioAvailable = r.error === undefined && r.status === 0;
  }
  return ioAvailable;
}

/** Skip (saying why) when qemu-img or qemu-io is missing, unless CI=true / REQUIRE_QEMU=1. */
export function skipWithoutQemuTools(suite: string): boolean {
  if ((qemuImgAvailable() && qemuIoAvailable()) || requireQemu) return false;
  console.warn(`[${suite}] skipping: qemu-img or qemu-io not found (set REQUIRE_QEMU=1 to make this fail)`);
  return true;
}

export function runQemuIo(args: string[], cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(qemuIoPath, args, { cwd, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`cannot run ${qemuIoPath}${requireQemu ? ' (required: CI=true or REQUIRE_QEMU=1)' : ''}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** qemu-img, failing the test with its stderr when it does not exit 0. */
export function qemuImg(args: string[], cwd?: string): string {
  const r = runQemuImg(args, cwd === undefined ? {} : { cwd });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export function qemuIo(args: string[], cwd?: string): void {
  const r = runQemuIo(args, cwd);
  if (r.status !== 0 || /error|failed/i.test(r.stderr)) throw new Error(`qemu-io ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `qcow2-${prefix}-`));
}

/** Parsed `qemu-img map --output=json`. */
export function qemuMap(file: string, extra: string[] = []): unknown[] {
  return JSON.parse(qemuImg(['map', '--output=json', ...extra, file])) as unknown[];
}
