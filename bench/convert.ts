// bench/convert: `qcow2 convert -O qcow2` against `qemu-img convert -O qcow2` on the sources an
// import meets, runs interleaved in one session (median wall time, peak RSS by GNU time %M):
//
//   raw sparse        4 GiB raw, 1 GiB of random data in 16 MiB extents, 3 GiB of holes
//   backing chain     a qcow2 overlay (64 random 1 MiB writes) over a qcow2 copy of that raw
//                     file, flattened
//   cloud image       4 GiB raw holding an ext4 file system with about 1 GiB of real files
//                     (from /usr), compressed with `qemu-img convert -c` (zlib clusters)
//   cloud image, URL  the same file served over HTTP from 127.0.0.1 (a server in a child
//                     process, Range supported): ours downloads into an empty cache each run
//                     and verifies its sha256, against curl's download + qemu-img convert;
//                     qemu-img's own curl driver (reading the image over HTTP as it converts)
//                     is timed once, capped at CURL_CAP_S, when the local qemu-img has it
//
// Every result is compared with its source (`qemu-img compare`). Targets: ours at most qemu-img's
// time on every source, at most 1/1.5 of it on the cloud image, peak RSS under 100 MiB. Exits 1
// when a result differs or a target is missed. Both sides write with qemu-img's default cache
// mode (-t unsafe: no flush before exit).
//
//   npm run build && node dist/bench/convert.js [runs]     (default 5)

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, Sample, haveGnuTime, measure, median, sh, startHttpServer } from './common';

const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const RSS_LIMIT_MIB = 100;
/** Seconds qemu-img's curl driver gets. */
const CURL_CAP_S = 180;

/** 4 GiB sparse: 64 extents of 16 MiB random data, one every 64 MiB; the rest holes. */
function makeSparseRaw(file: string): void {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(16 * MiB);
  for (let i = 0; i < 64; i++) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk, 0, chunk.length, i * 64 * MiB + ((i * 7) % 48) * MiB);
  }
  fs.ftruncateSync(fd, 4 * GiB);
  fs.closeSync(fd);
}

/** A base qcow2 of `raw` and an overlay over it with 64 random 1 MiB writes, some over data, some over holes. */
function makeChain(raw: string, dir: string): string {
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, 'base.qcow2'], dir);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2', '4G'], dir);
  const cmds: string[] = [];
  for (let i = 0; i < 64; i++) cmds.push('-c', `write -P ${(i * 37) % 251 + 1} ${i * 64 + ((i * 13) % 60)}M 1M`);
  sh('qemu-io', ['-f', 'qcow2', ...cmds, 'overlay.qcow2'], dir);
  return path.join(dir, 'overlay.qcow2');
}

/** Regular files from /usr, in a stable order, copied into `stage` until `bytes` are there. */
function stageRealFiles(stage: string, bytes: number): number {
  let total = 0;
  const walk = (d: string): boolean => {
    let names: string[];
    try {
      names = fs.readdirSync(d).sort();
    } catch {
      return false;
    }
    for (const n of names) {
      const p = path.join(d, n);
      let st: fs.Stats;
      try {
        st = fs.lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        if (walk(p)) return true;
      } else if (st.isFile() && st.size > 0) {
        const to = path.join(stage, path.relative('/usr', p));
        try {
          fs.mkdirSync(path.dirname(to), { recursive: true });
          fs.copyFileSync(p, to);
        } catch {
          continue;
        }
        total += st.size;
        if (total >= bytes) return true;
      }
    }
    return false;
  };
  for (const top of ['/usr/share', '/usr/lib', '/usr/bin']) if (walk(top)) break;
  return total;
}

/** The cloud image: a 4 GiB ext4 file system (about 1 GiB of real files) compressed by qemu-img. */
function makeCloudImage(dir: string): { raw: string; image: string; files: number } {
  const stage = path.join(dir, 'stage');
  const files = stageRealFiles(stage, GiB);
  const raw = path.join(dir, 'cloud.raw');
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', stage, raw, '4G'], dir);
  fs.rmSync(stage, { recursive: true, force: true });
  sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, 'cloud.qcow2'], dir);
  return { raw, image: path.join(dir, 'cloud.qcow2'), files };
}

function qemuHasCurl(): boolean {
  const r = spawnSync('qemu-img', ['info', '--output=json', 'http://127.0.0.1:1/x'], { encoding: 'utf8' });
  return !/Unknown protocol|Unknown driver/i.test(r.stderr);
}

interface Case {
  name: string;
  /** Reference file (raw or qcow2) and format the result must equal. */
  reference: string;
  referenceFormat: string;
  ours(out: string, tag: string): string[];
  theirs(out: string, tag: string): string[];
  theirsLabel: string;
  /** Ours must be at least this many times faster. */
  speedup: number;
}

interface Row { name: string; theirsLabel: string; q: number; o: number; rq: number; ro: number; identical: boolean; speedup: number }

function runCase(c: Case, root: string): Row {
  const ours: Sample[] = [], theirs: Sample[] = [];
  let identical = true;
  for (let i = 0; i < runs; i++) {
    for (const who of i % 2 === 0 ? ['qemu', 'ours'] : ['ours', 'qemu']) {
      const tag = `${who}-${i}`;
      const out = path.join(root, `${tag}.qcow2`);
      const argv = who === 'qemu' ? c.theirs(out, tag) : c.ours(out, tag);
      (who === 'qemu' ? theirs : ours).push(measure(argv, root));
      if (i === 0) {
        const r = spawnSync('qemu-img', ['compare', '-q', '-f', c.referenceFormat, '-F', 'qcow2', c.reference, out], { encoding: 'utf8' });
        identical &&= r.status === 0;
      }
      for (const f of fs.readdirSync(root)) if (f.startsWith(`${tag}`)) fs.rmSync(path.join(root, f), { recursive: true, force: true });
    }
  }
  return {
    name: c.name, theirsLabel: c.theirsLabel, speedup: c.speedup, identical,
    q: median(theirs.map((s) => s.wall)), o: median(ours.map((s) => s.wall)),
    rq: Math.max(...theirs.map((s) => s.rssKiB)) / 1024, ro: Math.max(...ours.map((s) => s.rssKiB)) / 1024,
  };
}

async function main(): Promise<number> {
  if (!haveGnuTime('convert')) return 2;
  for (const t of ['qemu-img', 'qemu-io', 'mkfs.ext4', 'curl']) {
    if (spawnSync(t, ['-V'], { encoding: 'utf8' }).error) {
      console.error(`bench/convert needs ${t} (apt-get install -y qemu-utils e2fsprogs curl)`);
      return 2;
    }
  }
  const root = fs.mkdtempSync(path.join(process.env.BENCH_TMP ?? os.tmpdir(), 'qcow2-bench-convert-'));
  const work = path.join(root, 'work');
  fs.mkdirSync(work);
  let server: { url: string; stop(): void } | undefined;
  try {
    const sparse = path.join(root, 'sparse.raw');
    makeSparseRaw(sparse);
    const overlay = makeChain(sparse, root);
    // The chain's guest view, for comparison.
    const cloud = makeCloudImage(root);
    const sum = `sha256:${crypto.createHash('sha256').update(fs.readFileSync(cloud.image)).digest('hex')}`;
    server = await startHttpServer(cloud.image);
    const curl = qemuHasCurl();
    const ourCli = (args: string[], env: string[] = []) => ['env', ...env, CLI, 'convert', ...args];
    const cases: Case[] = [
      {
        name: 'raw sparse', reference: sparse, referenceFormat: 'raw', speedup: 1, theirsLabel: 'qemu-img convert',
        theirs: (out) => ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', sparse, out],
        ours: (out) => ourCli(['-f', 'raw', '-O', 'qcow2', sparse, out]),
      },
      {
        name: 'qcow2 backing chain, flattened', reference: overlay, referenceFormat: 'qcow2', speedup: 1, theirsLabel: 'qemu-img convert',
        theirs: (out) => ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'qcow2', overlay, out],
        ours: (out) => ourCli(['-f', 'qcow2', '-O', 'qcow2', overlay, out]),
      },
      {
        name: 'compressed cloud image', reference: cloud.raw, referenceFormat: 'raw', speedup: 1.5, theirsLabel: 'qemu-img convert',
        theirs: (out) => ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'qcow2', cloud.image, out],
        ours: (out) => ourCli(['-f', 'qcow2', '-O', 'qcow2', cloud.image, out]),
      },
      {
        name: 'compressed cloud image, http://127.0.0.1', reference: cloud.raw, referenceFormat: 'raw', speedup: 1,
        theirsLabel: 'curl download + qemu-img convert',
        theirs: (out, tag) => ['sh', '-c', `curl -sf -o "$1" "$2" && qemu-img convert -f qcow2 -O qcow2 "$1" "$3"`, 'sh', path.join(root, `${tag}.download`), server!.url, out],
        // An empty cache every run: the download is timed, never a cache hit.
        ours: (out, tag) => ourCli(['--checksum', sum, '-O', 'qcow2', server!.url, out], [`PULUMI_QCOW2_CACHE_DIR=${path.join(root, `${tag}.cache`)}`]),
      },
    ];
    const cloudQ = fs.statSync(cloud.image);
    console.log(`uptime: ${os.loadavg().map((l) => l.toFixed(2)).join(', ')} (load average 1/5/15 min), ${os.cpus().length} CPUs`);
    console.log(`cloud image: ${(cloud.files / GiB).toFixed(2)} GiB of files from /usr in ext4 on 4 GiB, compressed qcow2 ${(cloudQ.size / MiB).toFixed(0)} MiB\n`);
    console.log('| source | qemu-img side | qemu-img median s | qcow2 median s | ours / theirs | target | qemu-img RSS MiB | qcow2 RSS MiB | identical |');
    console.log('|---|---|---:|---:|---:|---:|---:|---:|:---:|');
    let failures = 0;
    for (const c of cases) {
      const r = runCase(c, root);
      const ok = r.identical && r.o * r.speedup <= r.q && r.ro < RSS_LIMIT_MIB;
      if (!ok) failures++;
      console.log(`| ${r.name} | ${r.theirsLabel} | ${r.q.toFixed(2)} | ${r.o.toFixed(2)} | ${(r.o / r.q).toFixed(2)} | ≤ ${(1 / r.speedup).toFixed(2)} | ${r.rq.toFixed(1)} | ${r.ro.toFixed(1)} | ${r.identical ? 'yes' : 'NO'} |${ok ? '' : ' missed'}`);
    }
    if (curl) {
      // qemu-img's curl driver reads the image over HTTP as it converts; once, with a cap.
      const out = path.join(root, 'curl-driver.qcow2');
      const t0 = process.hrtime.bigint();
      const r = spawnSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', server.url, out], { timeout: CURL_CAP_S * 1000, encoding: 'utf8' });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      fs.rmSync(out, { force: true });
      console.log(`\nqemu-img convert through its curl driver (1 run): ${r.status === 0 ? `${s.toFixed(2)} s` : r.signal ? `stopped after ${CURL_CAP_S} s` : `failed: ${r.stderr.trim()}`}`);
    }
    console.log(`\n${runs} runs per side per source, interleaved; wall = whole process; RSS = peak (GNU time %M), max over runs.`);
    console.log(`uptime after: ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`);
    if (failures) console.log(`FAILED: ${failures} source(s) differ, miss the time target, or reach ${RSS_LIMIT_MIB} MiB`);
    return failures ? 1 : 0;
  } finally {
    server?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().then((c) => { process.exitCode = c; }, (e) => { console.error(e); process.exitCode = 2; });
