// bench/map: whole-process CPU, wall time and peak RSS of `qcow2 map --output=json` against
// `qemu-img map --output=json` on data-file-raw images (64 KiB clusters: a 4 TiB image has
// 8192 L2 tables, 64M entries). Runs interleaved in one session. Exits non-zero if the two
// outputs differ (byte for byte).
//
//   npm run build && node dist/bench/map.js [runs] [sizes, comma separated: 1T,4T]

import { CLI, Sample, interleaved, med, peakMiB, perRawImage } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const sizes = (process.argv[3] ?? '1T,4T').split(',');

const columns = ['qemu-img CPU s', 'qcow2 CPU s', 'CPU ratio', 'qemu-img wall s', 'qcow2 wall s', 'qemu-img RSS MiB', 'qcow2 RSS MiB', 'same output'];

process.exitCode = perRawImage('map', sizes, runs, QEMU_IMG, columns, (dir) => {
  const args = ['map', '--output=json', 'img.qcow2'];
  const r = interleaved(runs, dir, { qemu: [QEMU_IMG, ...args], ours: [CLI, ...args] });
  const qemu = r['qemu']!, ours = r['ours']!;
  const same = qemu[0]!.stdout === ours[0]!.stdout;
  const cpu = (xs: Sample[]) => med(xs, 'cpu');
  return {
    same,
    cells: [cpu(qemu).toFixed(3), cpu(ours).toFixed(3), `${(cpu(ours) / cpu(qemu)).toFixed(2)}x`, med(qemu, 'wall').toFixed(3),
      med(ours, 'wall').toFixed(3), peakMiB(qemu), peakMiB(ours), same ? 'yes' : 'NO'],
  };
});
