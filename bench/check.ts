// bench/check: whole-process CPU, wall time and peak RSS of `qcow2 check` against
// `qemu-img check` on data-file-raw images (64 KiB clusters: a 1 TiB image has 2048 L2 tables,
// 16M entries). Runs interleaved in one session; the figure that matters is the CPU ratio. A
// third command runs the engine's check alone in a bare Node process (no command-line parsing
// or other modules loaded): what the check itself costs over Node's start-up.
// Exits non-zero if the reports disagree (the JSON report minus filename).
//
//   npm run build && node dist/bench/check.js [runs] [sizes, comma separated: 1T,4T]

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, haveGnuTime, interleaved, med, nodeStartup, peakMiB, rawImage } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 7);
const sizes = (process.argv[3] ?? '1T').split(',');

/** The engine's check in a bare process, printing the same JSON as the command line. */
const ENGINE_ONLY = `const c = require(${JSON.stringify(path.join(__dirname, '..', 'provider', 'qcow2', 'ops', 'check.js'))});
const f = process.argv[1]; process.stdout.write(JSON.stringify(c.checkJson(c.checkImageFile(f), f)));`;

/** The JSON report minus the file name, keys sorted (qemu-img's key order is not stable). */
function report(stdout: string): string {
  const j = JSON.parse(stdout) as Record<string, unknown>;
  delete j['filename'];
  return JSON.stringify(Object.fromEntries(Object.entries(j).sort(([a], [b]) => a.localeCompare(b))));
}

function main(): number {
  if (!haveGnuTime('check')) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-check-'));
  let mismatches = 0;
  try {
    const floor = nodeStartup(runs, root);
    console.log(`| size | qemu-img CPU s | qcow2 CPU s | CPU ratio | engine alone CPU s | ratio | qemu-img wall s | qcow2 wall s | qemu-img RSS MiB | qcow2 RSS MiB | same report |`);
    console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|`);
    for (const size of sizes) {
      const dir = rawImage(root, size, QEMU_IMG);
      const args = ['check', '--output=json', 'img.qcow2'];
      const r = interleaved(runs, dir, {
        qemu: [QEMU_IMG, ...args],
        ours: [process.execPath, CLI, ...args],
        engine: [process.execPath, '-e', ENGINE_ONLY, 'img.qcow2'],
      });
      const { qemu, ours, engine } = r as Record<'qemu' | 'ours' | 'engine', typeof r[string]>;
      const same = report(qemu[0]!.stdout) === report(ours[0]!.stdout) && report(qemu[0]!.stdout) === report(engine[0]!.stdout);
      if (!same) mismatches++;
      console.log(`| ${size} | ${med(qemu, 'cpu').toFixed(3)} | ${med(ours, 'cpu').toFixed(3)} | ${(med(ours, 'cpu') / med(qemu, 'cpu')).toFixed(2)}x | ` +
        `${med(engine, 'cpu').toFixed(3)} | ${(med(engine, 'cpu') / med(qemu, 'cpu')).toFixed(2)}x | ` +
        `${med(qemu, 'wall').toFixed(3)} | ${med(ours, 'wall').toFixed(3)} | ${peakMiB(qemu)} | ${peakMiB(ours)} | ${same ? 'yes' : 'NO'} |`);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    console.log(`\n${runs} runs per command per size, interleaved; medians of whole-process CPU (user + system) and wall time; ` +
      `RSS = peak (GNU time %M), max over runs. \`node -e 0\` alone: ${floor.toFixed(3)} s CPU.`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return mismatches ? 1 : 0;
}

process.exitCode = main();
