// bench/create: whole-process wall time and peak RSS of `qcow2 create` against `qemu-img
// create` for data_file_raw images, runs interleaved in one session so both see the same
// machine state. Prints a markdown table; exits non-zero if the two images differ in bytes.
//
//   npm run build && node dist/bench/create.js [runs]

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, haveGnuTime, measure, median } from './common';

const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const cases: Array<[string, string]> = [
  ['1G', '64k'], ['1G', '2M'], ['64G', '64k'], ['64G', '2M'], ['1T', '64k'], ['1T', '2M'],
];


function main(): number {
  if (!haveGnuTime('create')) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-'));
  let mismatches = 0;
  console.log(`| size | cluster | qemu-img median s | qcow2 median s | speed-up | qemu-img RSS MiB | qcow2 RSS MiB | identical |`);
  console.log(`|---:|---:|---:|---:|---:|---:|---:|:---:|`);
  try {
    for (const [size, cluster] of cases) {
      const ours: Sample[] = [], theirs: Sample[] = [];
      let identical = true;
      for (let i = 0; i < runs; i++) {
        for (const who of i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu']) {
          const dir = path.join(root, `${who}-${i}`);
          fs.mkdirSync(dir);
          const args = ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster},data_file=data.raw,data_file_raw=on`, 'img.qcow2', size];
          const s = who === 'qemu' ? measure(['qemu-img', ...args], dir) : measure([CLI, ...args], dir);
          (who === 'qemu' ? theirs : ours).push(s);
        }
        // Same relative names in both folders, so the images must match byte for byte.
        const a = fs.readFileSync(path.join(root, `qemu-${i}`, 'img.qcow2'));
        const b = fs.readFileSync(path.join(root, `ours-${i}`, 'img.qcow2'));
        const sizes = ['qemu', 'ours'].map((w) => fs.statSync(path.join(root, `${w}-${i}`, 'data.raw')).size);
        if (!a.equals(b) || sizes[0] !== sizes[1]) identical = false;
        for (const w of ['qemu', 'ours']) fs.rmSync(path.join(root, `${w}-${i}`), { recursive: true });
      }
      if (!identical) mismatches++;
      const q = median(theirs.map((s) => s.wall)), o = median(ours.map((s) => s.wall));
      const rq = Math.max(...theirs.map((s) => s.rssKiB)) / 1024, ro = Math.max(...ours.map((s) => s.rssKiB)) / 1024;
      console.log(`| ${size} | ${cluster} | ${q.toFixed(3)} | ${o.toFixed(3)} | ${(q / o).toFixed(2)}x | ${rq.toFixed(1)} | ${ro.toFixed(1)} | ${identical ? 'yes' : 'NO'} |`);
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  console.log(`\n${runs} runs per engine per case, interleaved; wall = whole process; RSS = peak (GNU time %M), max over runs.`);
  return mismatches ? 1 : 0;
}

process.exitCode = main();
