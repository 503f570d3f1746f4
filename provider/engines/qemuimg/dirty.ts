// A bitmap's dirty extents as QEMU reads them, for the qemu-img engine: qemu-nbd exports the
// image read-only with the bitmap (-B), and `qemu-img map` over that NBD export with
// x-dirty-bitmap reports the dirty ranges as extents with "data": false. qemu-nbd is the one
// from the same installation as qemu-img (qemu-utils ships both).

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import type { DirtyExtent } from '../../qcow2/meta/dirty-bitmap';
import type { RunResult } from './run';

/** The qemu-nbd beside `qemuImg` (same folder), else the one on PATH. */
export function qemuNbdBeside(qemuImg: string): string {
  const beside = path.join(path.dirname(qemuImg), 'qemu-nbd');
  return fs.existsSync(beside) ? beside : 'qemu-nbd';
}

/**
 * Export `spec` (a file name or json: spec) read-only with bitmap `name`, map it through
 * `map(args)` (qemu-img map --output=json ...), and return the merged dirty extents.
 */
export async function dirtyExtentsViaNbd(qemuNbd: string, spec: string, name: string, map: (args: string[]) => Promise<RunResult>, file: string): Promise<DirtyExtent[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-nbd-'));
  const sock = path.join(dir, 'nbd.sock');
  const pidFile = path.join(dir, 'nbd.pid');
  try {
    const r = spawnSync(qemuNbd, ['--read-only', '--shared=1', '-B', name, '-k', sock, `--pid-file=${pidFile}`, '--fork', spec], { encoding: 'utf8', timeout: 60_000 });
    if (r.error !== undefined || r.status !== 0) {
      const why = r.error !== undefined ? r.error.message : r.stderr.trim().split('\n')[0] ?? `exit ${r.status}`;
      throw new Qcow2Error('IO', `Could not export bitmap '${name}' of ${file} with qemu-nbd: ${why}`, { file });
    }
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    try {
      const opts = `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${name}`;
      const m = await map(['map', '--output=json', '--image-opts', opts]);
      if (m.status !== 0) throw new Qcow2Error('IO', `qemu-img map of bitmap '${name}' of ${file} failed: ${m.stderr.trim()}`, { file });
      const out: DirtyExtent[] = [];
      for (const e of JSON.parse(m.stdout) as Array<{ start: number; length: number; data: boolean }>) {
        if (e.data) continue;
        const last = out[out.length - 1];
        if (last !== undefined && last.offset + last.length === BigInt(e.start)) last.length += BigInt(e.length);
        else out.push({ offset: BigInt(e.start), length: BigInt(e.length) });
      }
      return out;
    } finally {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone already */
      }
      // qemu-nbd holds the image's read lock until it exits: wait (bounded) so the caller may write next.
      for (let i = 0; i < 500; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          break;
        }
        await new Promise((res) => setTimeout(res, 10));
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
