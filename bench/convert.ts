// bench/convert: import a 4 GiB sparse raw file (1 GiB of random data in 16 MiB extents, 3 GiB
// of holes) with `qcow2 convert` and with `qemu-img convert -O qcow2`, runs interleaved in one
// session. Reports median wall time, their ratio, peak RSS (GNU time %M) and the allocated size
// of the result; fails when our peak RSS reaches 150 MiB or the guest views differ.
//
//   npm run build && node dist/bench/convert.js [runs]

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample as Measured, haveGnuTime, measure, median } from './common';

const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 3);
const GiB = 1 << 30;
const RSS_LIMIT_MIB = 150;

interface Sample extends Measured { allocated: number }

/** measureConvert() plus the bytes the output (and its data file) allocated. */
function measureConvert(argv: string[], cwd: string, out: string, extraAlloc?: string): Sample {
  const m = measure(argv, cwd);
  const blocks = (p: string) => fs.statSync(p).blocks * 512;
  return { ...m, allocated: blocks(out) + (extraAlloc ? blocks(extraAlloc) : 0) };
}

/** 4 GiB sparse: 64 extents of 16 MiB random data, one every 64 MiB; the rest holes. */
function makeSource(file: string): void {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(16 << 20);
  for (let i = 0; i < 64; i++) {
    for (let p = 0; p < chunk.length; p += 65536) chunk.set(require('crypto').randomBytes(65536), p);
    fs.writeSync(fd, chunk, 0, chunk.length, i * (64 << 20) + ((i * 7) % 48) * (1 << 20));
  }
  fs.ftruncateSync(fd, 4 * GiB);
  fs.closeSync(fd);
}

function main(): number {
  if (!haveGnuTime('convert')) return 2;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-convert-'));
  const src = path.join(root, 'src.raw');
  let failures = 0;
  try {
    makeSource(src);
    const cases: Array<[string, (tag: string) => string[]]> = [
      ['default', () => []],
      ['data_file_raw=on', (tag) => ['-o', `data_file=${path.join(root, `${tag}.data.raw`)},data_file_raw=on`]],
    ];
    console.log(`source: 4 GiB raw, 1 GiB random data, 3 GiB holes (${(fs.statSync(src).blocks * 512 / GiB).toFixed(2)} GiB allocated)\n`);
    console.log('| target | qemu-img median s | qcow2 median s | wall ratio (ours/qemu) | qemu-img RSS MiB | qcow2 RSS MiB | qemu-img allocated MiB | qcow2 allocated MiB | identical |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|:---:|');
    for (const [name, opts] of cases) {
      const ours: Sample[] = [], theirs: Sample[] = [];
      let identical = true;
      for (let i = 0; i < runs; i++) {
        for (const who of i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu']) {
          const tag = `${who}-${i}`;
          const out = path.join(root, `${tag}.qcow2`);
          const o = opts(tag);
          const data = o.length ? path.join(root, `${tag}.data.raw`) : undefined;
          const argv = who === 'qemu'
            ? ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', ...o, src, out]
            : [process.execPath, CLI, 'convert', '-f', 'raw', '-O', 'qcow2', ...o, src, out];
          (who === 'qemu' ? theirs : ours).push(measureConvert(argv, root, out, data));
        }
        if (i === 0) {
          const r = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, path.join(root, 'ours-0.qcow2')], { encoding: 'utf8' });
          identical = r.status === 0;
        }
        for (const f of fs.readdirSync(root)) if (f !== 'src.raw') fs.rmSync(path.join(root, f));
      }
      const q = median(theirs.map((s) => s.wall)), o = median(ours.map((s) => s.wall));
      const rq = Math.max(...theirs.map((s) => s.rssKiB)) / 1024, ro = Math.max(...ours.map((s) => s.rssKiB)) / 1024;
      const aq = median(theirs.map((s) => s.allocated)) / (1 << 20), ao = median(ours.map((s) => s.allocated)) / (1 << 20);
      if (!identical || ro >= RSS_LIMIT_MIB) failures++;
      console.log(`| ${name} | ${q.toFixed(2)} | ${o.toFixed(2)} | ${(o / q).toFixed(2)} | ${rq.toFixed(1)} | ${ro.toFixed(1)} | ${aq.toFixed(1)} | ${ao.toFixed(1)} | ${identical ? 'yes' : 'NO'} |`);
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  console.log(`\n${runs} runs per engine per target, interleaved; wall = whole process; RSS = peak (GNU time %M), max over runs; allocated = st_blocks of image (+ data file).`);
  if (failures) console.log(`FAILED: guest views differ or our peak RSS reached ${RSS_LIMIT_MIB} MiB`);
  return failures ? 1 : 0;
}

process.exitCode = main();
