// bench/map: whole-process CPU, wall time and peak RSS of `qcow2 map --output=json` against
// `qemu-img map --output=json` on data-file-raw images (64 KiB clusters: a 4 TiB image has
// 8192 L2 tables, 64M entries). Runs interleaved in one session. Exits non-zero if the two
// outputs differ (byte for byte).
//
//   npm run build && node dist/bench/map.js [runs] [sizes, comma separated: 1T,4T]

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, measure, median, nodeStartup } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const sizes = (process.argv[3] ?? '1T,4T').split(',');

function main(): number {
  if (!fs.existsSync('/usr/bin/time')) {
    console.error('bench/map needs GNU time (/usr/bin/time): apt-get install -y time');
    return 2;
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-map-'));
  let mismatches = 0;
  try {
    const floor = nodeStartup(runs, root);
    console.log(`| size | qemu-img CPU s | qcow2 CPU s | CPU ratio | qemu-img wall s | qcow2 wall s | qemu-img RSS MiB | qcow2 RSS MiB | same output |`);
    console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|:---:|`);
    for (const size of sizes) {
      const dir = path.join(root, size);
      fs.mkdirSync(dir);
      const c = spawnSync(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.raw,data_file_raw=on', 'img.qcow2', size], { cwd: dir, encoding: 'utf8' });
      if (c.status !== 0) throw new Error(`qemu-img create failed: ${c.stderr}`);
      const ours: Sample[] = [], theirs: Sample[] = [];
      const args = ['map', '--output=json', 'img.qcow2'];
      for (let i = 0; i < runs; i++) {
        for (const who of i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu']) {
          const s = who === 'qemu' ? measure([QEMU_IMG, ...args], dir) : measure([process.execPath, CLI, ...args], dir);
          (who === 'qemu' ? theirs : ours).push(s);
        }
      }
      const same = theirs[0]!.stdout === ours[0]!.stdout;
      if (!same) mismatches++;
      const m = (xs: Sample[], k: 'cpu' | 'wall') => median(xs.map((s) => s[k]));
      const rss = (xs: Sample[]) => (Math.max(...xs.map((s) => s.rssKiB)) / 1024).toFixed(1);
      console.log(`| ${size} | ${m(theirs, 'cpu').toFixed(3)} | ${m(ours, 'cpu').toFixed(3)} | ${(m(ours, 'cpu') / m(theirs, 'cpu')).toFixed(2)}x | ` +
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
