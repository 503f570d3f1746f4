// bench/check: whole-process CPU, wall time and peak RSS of `qcow2 check` against
// `qemu-img check` on data-file-raw images (64 KiB clusters: a 1 TiB image has 2048 L2 tables,
// 16M entries). Runs interleaved in one session; the figure that matters is the CPU ratio. A
// third column runs the engine's check alone in a bare Node process (no command-line parsing
// or other modules loaded): what the check itself costs over Node's start-up.
// Exits non-zero if the reports disagree (the JSON report minus filename).
//
//   npm run build && node dist/bench/check.js [runs] [sizes, comma separated: 1T,4T]

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, measure, median, nodeStartup } from './common';

/** The engine's check in a bare process, printing the same JSON as the command line. */
const ENGINE_ONLY = `const c = require(${JSON.stringify(path.join(__dirname, '..', 'provider', 'qcow2', 'ops', 'check.js'))});
const f = process.argv[1]; process.stdout.write(JSON.stringify(c.checkJson(c.checkImageFile(f), f)));`;

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 7);
const sizes = (process.argv[3] ?? '1T').split(',');

/** The JSON report minus the file name, keys sorted (qemu-img's key order is not stable). */
function report(stdout: string): string {
  const j = JSON.parse(stdout) as Record<string, unknown>;
  delete j['filename'];
  return JSON.stringify(Object.fromEntries(Object.entries(j).sort(([a], [b]) => a.localeCompare(b))));
}

function main(): number {
  if (!fs.existsSync('/usr/bin/time')) {
    console.error('bench/check needs GNU time (/usr/bin/time): apt-get install -y time');
    return 2;
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-check-'));
  let mismatches = 0;
  try {
    const floor = nodeStartup(runs, root);
    console.log(`| size | qemu-img CPU s | qcow2 CPU s | CPU ratio | engine alone CPU s | ratio | qemu-img wall s | qcow2 wall s | qemu-img RSS MiB | qcow2 RSS MiB | same report |`);
    console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|`);
    for (const size of sizes) {
      const dir = path.join(root, size);
      fs.mkdirSync(dir);
      const c = spawnSync(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.raw,data_file_raw=on', 'img.qcow2', size], { cwd: dir, encoding: 'utf8' });
      if (c.status !== 0) throw new Error(`qemu-img create failed: ${c.stderr}`);
      const ours: Sample[] = [], theirs: Sample[] = [], engine: Sample[] = [];
      const args = ['check', '--output=json', 'img.qcow2'];
      for (let i = 0; i < runs; i++) {
        const order = [['qemu', 'ours', 'engine'], ['ours', 'engine', 'qemu'], ['engine', 'qemu', 'ours']][i % 3]!;
        for (const who of order) {
          if (who === 'qemu') theirs.push(measure([QEMU_IMG, ...args], dir));
          else if (who === 'ours') ours.push(measure([process.execPath, CLI, ...args], dir));
          else engine.push(measure([process.execPath, '-e', ENGINE_ONLY, 'img.qcow2'], dir));
        }
      }
      const same = report(theirs[0]!.stdout) === report(ours[0]!.stdout) && report(theirs[0]!.stdout) === report(engine[0]!.stdout);
      if (!same) mismatches++;
      const m = (xs: Sample[], k: 'cpu' | 'wall') => median(xs.map((s) => s[k]));
      const rss = (xs: Sample[]) => (Math.max(...xs.map((s) => s.rssKiB)) / 1024).toFixed(1);
      console.log(`| ${size} | ${m(theirs, 'cpu').toFixed(3)} | ${m(ours, 'cpu').toFixed(3)} | ${(m(ours, 'cpu') / m(theirs, 'cpu')).toFixed(2)}x | ` +
        `${m(engine, 'cpu').toFixed(3)} | ${(m(engine, 'cpu') / m(theirs, 'cpu')).toFixed(2)}x | ` +
        `${m(theirs, 'wall').toFixed(3)} | ${m(ours, 'wall').toFixed(3)} | ${rss(theirs)} | ${rss(ours)} | ${same ? 'yes' : 'NO'} |`);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    console.log(`\n${runs} runs per tool per size, interleaved; medians of whole-process CPU (user + system) and wall time; ` +
      `RSS = peak (GNU time %M), max over runs. \`node -e 0\` alone: ${floor.toFixed(3)} s CPU.`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return mismatches ? 1 : 0;
}

process.exitCode = main();
