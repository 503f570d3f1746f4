// bench/check: whole-process CPU, wall time and peak RSS of `qcow2 check` against
// `qemu-img check` on data-file-raw images (64 KiB clusters: a 1 TiB image has 2048 L2 tables,
// 16M entries). Runs interleaved in one session; the figure that matters is the CPU ratio. A
// third command runs the engine's check alone in a bare Node process (no command-line parsing
// or other modules loaded): what the check itself costs over Node's start-up.
// Exits non-zero if the reports disagree (the JSON report minus filename).
//
//   npm run build && node dist/bench/check.js [runs] [sizes, comma separated: 1T,4T]

import * as path from 'path';
import { CLI, Sample, interleaved, med, peakMiB, perRawImage } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 7);
const sizes = (process.argv[3] ?? '1T').split(',');

/** The engine's check in a bare process, printing the same JSON as the command line. */
const ENGINE_ONLY = `const c = require(${JSON.stringify(path.join(__dirname, '..', 'provider', 'qcow2', 'ops', 'check.js'))});
const r = require(${JSON.stringify(path.join(__dirname, '..', 'provider', 'cli', 'render', 'check.js'))});
const f = process.argv[1]; process.stdout.write(JSON.stringify(r.checkJson(c.checkImageFile(f), f)));`;

/** The JSON report minus the file name, keys sorted (qemu-img's key order is not stable). */
function report(s: Sample): string {
  const j = JSON.parse(s.stdout) as Record<string, unknown>;
  delete j['filename'];
  return JSON.stringify(Object.fromEntries(Object.entries(j).sort(([a], [b]) => a.localeCompare(b))));
}

const columns = ['qemu-img CPU s', 'qcow2 CPU s', 'CPU ratio', 'engine alone CPU s', 'ratio', 'qemu-img wall s', 'qcow2 wall s',
  'qemu-img RSS MiB', 'qcow2 RSS MiB', 'same report'];

process.exitCode = perRawImage('check', sizes, runs, QEMU_IMG, columns, (dir) => {
  const args = ['check', '--output=json', 'img.qcow2'];
  const r = interleaved(runs, dir, {
    qemu: [QEMU_IMG, ...args],
    ours: [CLI, ...args],
    engine: [process.execPath, '-e', ENGINE_ONLY, 'img.qcow2'],
  });
  const qemu = r['qemu']!, ours = r['ours']!, engine = r['engine']!;
  const same = report(qemu[0]!) === report(ours[0]!) && report(qemu[0]!) === report(engine[0]!);
  const cpu = (xs: Sample[]) => med(xs, 'cpu');
  return {
    same,
    cells: [cpu(qemu).toFixed(3), cpu(ours).toFixed(3), `${(cpu(ours) / cpu(qemu)).toFixed(2)}x`, cpu(engine).toFixed(3),
      `${(cpu(engine) / cpu(qemu)).toFixed(2)}x`, med(qemu, 'wall').toFixed(3), med(ours, 'wall').toFixed(3), peakMiB(qemu), peakMiB(ours),
      same ? 'yes' : 'NO'],
  };
});
