// bench/map: whole-process CPU, wall time and peak RSS of `qcow2 map --output=json` against
// `qemu-img map --output=json` on data-file-raw images (64 KiB clusters: a 4 TiB image has
// 8192 L2 tables, 64M entries). Runs interleaved in one session. Exits non-zero if the two
// outputs differ (byte for byte).
//
//   npm run build && node dist/bench/map.js [runs] [sizes, comma separated: 1T,4T]

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, haveGnuTime, interleaved, med, nodeStartup, peakMiB, rawImage } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const sizes = (process.argv[3] ?? '1T,4T').split(',');

function main(): number {
  if (!haveGnuTime('map')) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-map-'));
  let mismatches = 0;
  try {
    const floor = nodeStartup(runs, root);
    console.log(`| size | qemu-img CPU s | qcow2 CPU s | CPU ratio | qemu-img wall s | qcow2 wall s | qemu-img RSS MiB | qcow2 RSS MiB | same output |`);
    console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|:---:|`);
    for (const size of sizes) {
      const dir = rawImage(root, size, QEMU_IMG);
      const args = ['map', '--output=json', 'img.qcow2'];
      const { qemu, ours } = interleaved(runs, dir, { qemu: [QEMU_IMG, ...args], ours: [process.execPath, CLI, ...args] });
      const same = qemu![0]!.stdout === ours![0]!.stdout;
      if (!same) mismatches++;
      console.log(`| ${size} | ${med(qemu!, 'cpu').toFixed(3)} | ${med(ours!, 'cpu').toFixed(3)} | ${(med(ours!, 'cpu') / med(qemu!, 'cpu')).toFixed(2)}x | ` +
        `${med(qemu!, 'wall').toFixed(3)} | ${med(ours!, 'wall').toFixed(3)} | ${peakMiB(qemu!)} | ${peakMiB(ours!)} | ${same ? 'yes' : 'NO'} |`);
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
