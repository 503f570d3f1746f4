// What every bench shares: whole-process measurement under GNU time (wall, CPU, peak RSS), and
// the median.

import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/**
 * The `qcow2` executable as installed, run as a user runs it (its launcher starts `node` from
 * PATH): the bundled command line (benches run from dist/bench).
 */
export const CLI = path.join(__dirname, '..', 'provider', 'cli', 'qcow2.js');
// The launcher's `node` is the one running this bench.
process.env.PATH = `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`;

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

/** True when GNU time is there; otherwise says how to get it. */
export function haveGnuTime(bench: string): boolean {
  if (fs.existsSync('/usr/bin/time')) return true;
  console.error(`bench/${bench} needs GNU time (/usr/bin/time): apt-get install -y time`);
  return false;
}

/** Each command's samples over `runs` rounds, the order rotated every round so none always goes first. */
export function interleaved(runs: number, cwd: string, commands: Record<string, string[]>): Record<string, Sample[]> {
  const names = Object.keys(commands);
  const out: Record<string, Sample[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let i = 0; i < runs; i++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + k) % names.length]!;
      out[name]!.push(measure(commands[name]!, cwd));
    }
  }
  return out;
}

/** The median of one figure over samples. */
export function med(xs: Sample[], k: 'cpu' | 'wall'): number {
  return median(xs.map((s) => s[k]));
}

/** Peak RSS over samples, in MiB. */
export function peakMiB(xs: Sample[]): string {
  return (Math.max(...xs.map((s) => s.rssKiB)) / 1024).toFixed(1);
}

/** A new folder under `root` holding img.qcow2, a data-file-raw image qemu-img made (data file data.raw). */
function rawImage(root: string, size: string, qemuImg: string): string {
  const dir = fs.mkdtempSync(path.join(root, `${size}-`));
  const c = spawnSync(qemuImg, ['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.raw,data_file_raw=on', 'img.qcow2', size], { cwd: dir, encoding: 'utf8' });
  if (c.status !== 0) throw new Error(`qemu-img create failed: ${c.stderr}`);
  return dir;
}

/**
 * A bench over data-file-raw images of several sizes (made by qemu-img, removed after): prints a
 * markdown table with `columns` after the size and one row per size from `row`, which says
 * whether the tools agreed; returns the exit code (1 when any did not).
 */
export function perRawImage(bench: string, sizes: string[], runs: number, qemuImg: string, columns: string[],
  row: (dir: string) => { cells: string[]; same: boolean }): number {
  if (!haveGnuTime(bench)) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `qcow2-bench-${bench}-`));
  let mismatches = 0;
  try {
    const floor = nodeStartup(runs, root);
    console.log(`| size | ${columns.join(' | ')} |`);
    console.log(`|---:|${columns.map(() => '---:').join('|')}|`);
    for (const size of sizes) {
      const dir = rawImage(root, size, qemuImg);
      const r = row(dir);
      if (!r.same) mismatches++;
      console.log(`| ${size} | ${r.cells.join(' | ')} |`);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    console.log(`\n${runs} runs per command per size, interleaved; medians of whole-process CPU (user + system) and wall time; ` +
      `RSS = peak (GNU time %M), max over runs. \`node -e 0\` alone: ${floor.toFixed(3)} s CPU.`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return mismatches ? 1 : 0;
}

/** A static file server with Range support in a child process (the bench blocks in spawnSync). */
const SERVER = `
const http = require('http'), fs = require('fs');
const file = process.argv[1], size = fs.statSync(file).size;
http.createServer((req, res) => {
  const m = /^bytes=(\\d+)-(\\d*)$/.exec(req.headers.range || '');
  if (req.method === 'HEAD') { res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' }).end(); return; }
  if (m) {
    const a = Number(m[1]), b = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
    res.writeHead(206, { 'content-length': b - a + 1, 'content-range': 'bytes ' + a + '-' + b + '/' + size, 'accept-ranges': 'bytes' });
    fs.createReadStream(file, { start: a, end: b, highWaterMark: 1 << 20 }).pipe(res);
  } else {
    res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' });
    fs.createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res);
  }
}).listen(0, '127.0.0.1', function () { console.log(this.address().port); });
`;

export async function startHttpServer(file: string): Promise<{ url: string; stop(): void }> {
  const child = spawn(process.execPath, ['-e', SERVER, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d) => resolve(Number(String(d).trim())));
    child.once('exit', (c) => reject(new Error(`the bench's HTTP server exited (${c})`)));
  });
  return { url: `http://127.0.0.1:${port}/${path.basename(file)}`, stop: () => child.kill() };
}

/** Run a command to its end; its standard output, or an error with its standard error. */
export function sh(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error?.message}`);
  return r.stdout;
}
