// What every bench shares: whole-process measurement under GNU time, and the median.

import { spawnSync } from 'child_process';
import * as path from 'path';

/** The compiled `qcow2` command line (benches run from dist/bench). */
export const CLI = path.join(__dirname, '..', 'provider', 'cli', 'main.js');

export interface Sample { wall: number; rssKiB: number }

/** Run a command under GNU time for its peak RSS; wall time measured here around the spawn. */
export function measure(argv: string[], cwd: string): Sample {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', ...argv], { cwd, encoding: 'utf8' });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  return { wall, rssKiB: Number(lines[lines.length - 1]) };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
