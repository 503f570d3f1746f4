// bench/maintenance: `check -r leaks`, `compare` and `commit` of the qcow2 command line against
// qemu-img's, on images qemu-img and qemu-io made (64 KiB clusters, 4 GiB virtual, DATA MiB of
// data in 1 MiB extents spread over the disk). Each run of a command that changes an image gets
// a fresh copy, made outside the measurement; the commands run interleaved in one session, so
// load on the machine weighs on both. The figures that matter are the ratios (ours / qemu-img's)
// of median wall and CPU time. Exits 1 when a result differs from qemu-img's: the repaired file
// byte for byte, the committed base by content (and clean), compare's exit code and output.
//
//   npm run build && node dist/bench/maintenance.js [runs] [data MiB] [operations]
//
// operations: a comma-separated subset of check,compare,commit,convert (default: all).
//
// check -r leaks: a snapshot whose table entry is then dropped from the header (nb_snapshots 0):
//   every data cluster and L2 table has refcount 2 and one reference, the snapshot's L1 none.
// compare: the image against a copy of it made by qemu-img convert (equal contents, other layout).
// commit: an overlay holding half as much data again over that image, committed into it.
// convert -c: a raw file of DATA MiB of base64 text (compresses to about 3/4) into a compressed
//   qcow2 image, zlib and zstd; the results byte for byte.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, haveGnuTime, measure, med, peakMiB } from './common';

const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
const QEMU_IO = process.env.QEMU_IO ?? 'qemu-io';
const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const dataMiB = Number(process.argv[3] ?? 512);
const OPERATIONS = ['check', 'compare', 'commit', 'convert'];
const operations = new Set((process.argv[4] ?? OPERATIONS.join(',')).split(','));
for (const op of operations) if (!OPERATIONS.includes(op)) throw new Error(`unknown operation '${op}': choose from ${OPERATIONS.join(',')}`);

function sh(cmd: string, cwd: string): void {
  const r = spawnSync('bash', ['-c', cmd], { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`setup failed: ${cmd}\n${r.stderr}`);
}

/** qemu-io commands writing `mib` extents of 1 MiB, pattern `p`, spread over 4 GiB from `shift` MiB. */
function writes(mib: number, p: number, shift: number): string {
  const step = Math.floor(4096 / mib);
  return Array.from({ length: mib }, (_, i) => `-c 'write -P ${p} ${i * step + shift}M 1M'`).join(' ');
}

function cp(src: string, dst: string): void {
  sh(`cp --sparse=always ${src} ${dst}`, path.dirname(src));
}

/**
 * The two results agree: byte for byte, or (`byBytes` false: commit, whose cluster order in
 * qemu-img follows the completion order of its parallel mirror requests) equal guest contents
 * by qemu-img compare -s and both clean by qemu-img check.
 */
function sameResult(dir: string, a: string, b: string, byBytes: boolean): boolean {
  const ok = (args: string[], prog = QEMU_IMG) => spawnSync(prog, args, { cwd: dir }).status === 0;
  if (byBytes) return ok(['-s', a, b], 'cmp');
  return ok(['compare', '-s', a, b]) && ok(['check', a]) && ok(['check', b]);
}

interface Row { name: string; qemu: Sample[]; ours: Sample[]; same: boolean }

/**
 * `runs` interleaved pairs; `prepare(tag)` (outside the measurement) makes the files for one
 * run and returns the argv after the program name and what to compare afterwards.
 */
function pairRuns(name: string, dir: string, prepare: (tag: string) => { args: string[]; result?: string }, ok: (s: number) => boolean, byBytes = true): Row {
  const qemu: Sample[] = [], ours: Sample[] = [];
  let same = true;
  for (let i = 0; i < runs; i++) {
    const order: Array<'qemu' | 'ours'> = i % 2 ? ['ours', 'qemu'] : ['qemu', 'ours'];
    const results: Record<string, { sample: Sample; result?: string }> = {};
    for (const who of order) {
      const { args, result } = prepare(`${who}${i}`);
      const argv = who === 'qemu' ? [QEMU_IMG, ...args] : [CLI, ...args];
      const sample = measure(argv, dir, ok);
      (who === 'qemu' ? qemu : ours).push(sample);
      results[who] = { sample, result };
    }
    const q = results['qemu']!, o = results['ours']!;
    if (q.sample.status !== o.sample.status || q.sample.stdout !== o.sample.stdout) same = false;
    if (q.result && o.result && !sameResult(dir, q.result, o.result, byBytes)) same = false;
    for (const r of [q.result, o.result]) if (r) fs.rmSync(path.join(dir, r), { force: true });
  }
  return { name, qemu, ours, same };
}

function main(): number {
  if (!haveGnuTime('maintenance')) return 2;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-maintenance-'));
  const rows: Row[] = [];
  try {
    sh(`${QEMU_IMG} create -q -f qcow2 base.qcow2 4G && ${QEMU_IO} ${writes(dataMiB, 0x5a, 0)} base.qcow2 >/dev/null`, dir);
    // Leaks: a snapshot, then the header forgets it (nb_snapshots, at byte 60, set to 0).
    sh(`cp --sparse=always base.qcow2 leaky.qcow2 && ${QEMU_IMG} snapshot -c s leaky.qcow2 && printf '\\0\\0\\0\\0' | dd of=leaky.qcow2 bs=1 seek=60 conv=notrunc status=none`, dir);
    sh(`${QEMU_IMG} convert -O qcow2 base.qcow2 copy.qcow2`, dir);
    sh(`${QEMU_IMG} create -q -f qcow2 -F qcow2 -b base.qcow2 top.qcow2 && ${QEMU_IO} ${writes(Math.max(1, dataMiB >> 1), 0xa5, 1)} top.qcow2 >/dev/null`, dir);
    if (operations.has('convert')) sh(`head -c ${dataMiB * 3 / 4}M /dev/urandom | base64 -w 0 > text.raw`, dir);

    if (operations.has('check')) rows.push(pairRuns('check -r leaks', dir, (tag) => {
      cp(path.join(dir, 'leaky.qcow2'), path.join(dir, `${tag}.qcow2`));
      return { args: ['check', '-r', 'leaks', `${tag}.qcow2`], result: `${tag}.qcow2` };
    }, (s) => s === 0));
    if (operations.has('compare')) rows.push(pairRuns('compare', dir, () => ({ args: ['compare', 'base.qcow2', 'copy.qcow2'] }), (s) => s === 0));
    if (operations.has('commit')) rows.push(pairRuns('commit', dir, (tag) => {
      cp(path.join(dir, 'base.qcow2'), path.join(dir, `${tag}-base.qcow2`));
      sh(`cp --sparse=always top.qcow2 ${tag}-top.qcow2 && ${QEMU_IMG} rebase -u -F qcow2 -b ${tag}-base.qcow2 ${tag}-top.qcow2`, dir);
      return { args: ['commit', '-q', '-d', `${tag}-top.qcow2`], result: `${tag}-base.qcow2` };
    }, (s) => s === 0, false));
    for (const f of fs.readdirSync(dir)) if (/-top\.qcow2$/.test(f)) fs.rmSync(path.join(dir, f));
    for (const kind of operations.has('convert') ? ['zlib', 'zstd'] : []) {
      rows.push(pairRuns(`convert -c (${kind})`, dir, (tag) => ({
        args: ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${kind}`, 'text.raw', `${tag}.qcow2`], result: `${tag}.qcow2`,
      }), (s) => s === 0));
    }

    console.log(`| operation | qemu-img wall s | qcow2 wall s | wall ratio | qemu-img CPU s | qcow2 CPU s | CPU ratio | qemu-img RSS MiB | qcow2 RSS MiB | same result |`);
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
    for (const r of rows) {
      const [qw, ow, qc, oc] = [med(r.qemu, 'wall'), med(r.ours, 'wall'), med(r.qemu, 'cpu'), med(r.ours, 'cpu')];
      console.log(`| ${r.name} | ${qw.toFixed(3)} | ${ow.toFixed(3)} | ${(ow / qw).toFixed(2)}x | ${qc.toFixed(3)} | ${oc.toFixed(3)} | ` +
        `${(oc / qc).toFixed(2)}x | ${peakMiB(r.qemu)} | ${peakMiB(r.ours)} | ${r.same ? 'yes' : 'NO'} |`);
    }
    console.log(`\n4 GiB images, 64 KiB clusters, ${dataMiB} MiB of data; ${runs} runs per command, interleaved; medians of whole-process ` +
      'wall and CPU (user + system) time; RSS = peak (GNU time %M), max over runs.');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows.every((r) => r.same) ? 0 : 1;
}

process.exitCode = main();
