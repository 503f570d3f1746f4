// bench/amend: whole-process wall time and peak RSS of `qcow2 amend` against `qemu-img amend`
// on a 1 TiB data_file_raw image (64 KiB clusters: 2048 preallocated L2 tables, 134 MB of
// metadata). Runs interleaved in one session so both see the same machine state; every run
// starts from a copy of the same template image. Prints a markdown table; exits non-zero if the
// two results differ in `qemu-img info` (minus filename / actual-size) or data file size, or if
// `qemu-img check` finds ours unclean.
//
//   npm run build && node dist/bench/amend.js [runs]

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, haveGnuTime, measure, median } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const SIZE = process.env.BENCH_AMEND_SIZE ?? '1T';
const CLUSTER = process.env.BENCH_AMEND_CLUSTER ?? '64k';
const cases: string[] = ['refcount_bits=64', 'size=2T', 'refcount_bits=64,size=2T'];


function qemu(args: string[], cwd: string): string {
  const r = spawnSync(QEMU_IMG, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (exit ${r.status}): ${r.stderr}`);
  return r.stdout;
}

function info(dir: string): string {
  const j = JSON.parse(qemu(['info', '--output=json', 'img.qcow2'], dir)) as Record<string, unknown>;
  delete j['filename'];
  delete j['actual-size'];
  return JSON.stringify(j);
}

/** A fresh copy of the template: the qcow2 file copied, the (sparse, all-zero) data file re-made. */
function freshCopy(template: string, dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(template, 'img.qcow2'), path.join(dir, 'img.qcow2'));
  fs.writeFileSync(path.join(dir, 'data.raw'), '');
  fs.truncateSync(path.join(dir, 'data.raw'), fs.statSync(path.join(template, 'data.raw')).size);
}

function main(): number {
  if (!haveGnuTime('amend')) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-amend-'));
  let mismatches = 0;
  try {
    const template = path.join(root, 'template');
    fs.mkdirSync(template);
    // Relative data file name, so copies in other folders use their own data file.
    const tc = measure([QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER},data_file=data.raw,data_file_raw=on`, 'img.qcow2', SIZE], template);
    const tsize = fs.statSync(path.join(template, 'img.qcow2')).size;
    console.log(`template: qemu-img create ${SIZE} data_file_raw=on, ${CLUSTER} clusters: ${tsize} B qcow2 file, ${tc.wall.toFixed(2)} s\n`);
    console.log(`| amend -o | qemu-img median s | qcow2 median s | speed-up | qemu-img range s | qcow2 range s | qemu-img RSS MiB | qcow2 RSS MiB | same info | ours clean |`);
    console.log(`|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|`);
    for (const opts of cases) {
      const ours: Sample[] = [], theirs: Sample[] = [];
      let same = true, clean = true;
      for (let i = 0; i < runs; i++) {
        const dirs: Record<string, string> = {};
        for (const who of i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu']) {
          const dir = path.join(root, `${who}-${i}`);
          freshCopy(template, dir);
          dirs[who] = dir;
          const args = ['amend', '-f', 'qcow2', '-o', opts, 'img.qcow2'];
          const s = who === 'qemu' ? measure([QEMU_IMG, ...args], dir) : measure([CLI, ...args], dir);
          (who === 'qemu' ? theirs : ours).push(s);
        }
        if (i === 0) {
          // Checked once per case (info and check of a 2 TiB image cost more than the amend).
          if (info(dirs['qemu']!) !== info(dirs['ours']!)) same = false;
          const sizes = ['qemu', 'ours'].map((w) => fs.statSync(path.join(dirs[w]!, 'data.raw')).size);
          if (sizes[0] !== sizes[1]) same = false;
          const c = spawnSync(QEMU_IMG, ['check', 'img.qcow2'], { cwd: dirs['ours'], encoding: 'utf8' });
          if (c.status !== 0) clean = false;
        }
        for (const w of ['qemu', 'ours']) fs.rmSync(dirs[w]!, { recursive: true, force: true });
      }
      if (!same || !clean) mismatches++;
      const q = median(theirs.map((s) => s.wall)), o = median(ours.map((s) => s.wall));
      const rq = Math.max(...theirs.map((s) => s.rssKiB)) / 1024, ro = Math.max(...ours.map((s) => s.rssKiB)) / 1024;
      const range = (xs: Sample[]) => `${Math.min(...xs.map((s) => s.wall)).toFixed(2)}-${Math.max(...xs.map((s) => s.wall)).toFixed(2)}`;
      console.log(`| ${opts} | ${q.toFixed(3)} | ${o.toFixed(3)} | ${(q / o).toFixed(2)}x | ${range(theirs)} | ${range(ours)} | ` +
        `${rq.toFixed(1)} | ${ro.toFixed(1)} | ${same ? 'yes' : 'NO'} | ${clean ? 'yes' : 'NO'} |`);
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  console.log(`\n${runs} runs per engine per case, interleaved, each on a fresh copy of the template; wall = whole process; RSS = peak (GNU time %M), max over runs.`);
  return mismatches ? 1 : 0;
}

process.exitCode = main();
