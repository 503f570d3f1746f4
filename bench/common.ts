// What every bench shares: whole-process measurement under GNU time (wall, CPU, peak RSS), and
// the median.

import { spawnSync } from 'child_process';
import * as path from 'path';

/** The compiled `qcow2` command line (benches run from dist/bench). */
export const CLI = path.join(__dirname, '..', 'provider', 'cli', 'main.js');

export interface Sample {
  wall: number;
  rssKiB: number;
  /** CPU seconds, user + system. */
  cpu: number;
  status: number;
  stdout: string;
}

/**
 * Run a command under GNU time for its peak RSS and CPU; wall time measured here around the
 * spawn. A non-zero exit fails unless `okStatus` allows it (check exits 2 or 3 on findings).
 */
export function measure(argv: string[], cwd: string, okStatus: (s: number) => boolean = (s) => s === 0): Sample {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', 'TIME %M %U %S', ...argv], { cwd, encoding: 'utf8', maxBuffer: 256 << 20 });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const status = r.status ?? -1;
  if (!okStatus(status)) throw new Error(`${argv.join(' ')} failed (exit ${status}): ${r.stderr}`);
  const line = r.stderr.trim().split('\n').reverse().find((l) => l.startsWith('TIME '))!;
  const [, rss, user, sys] = line.split(' ');
  return { wall, rssKiB: Number(rss), cpu: Number(user) + Number(sys), status, stdout: r.stdout };
}

/** Whole-process CPU of `node -e 0`: Node's own start-up, the floor under every CLI figure. */
export function nodeStartup(runs: number, cwd: string): number {
  return median(Array.from({ length: runs }, () => measure([process.execPath, '-e', '0'], cwd).cpu));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
