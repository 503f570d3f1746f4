// bench/remote: images on a remote host over SSH. OpenSSH's sshd runs on 127.0.0.1 (generated
// keys) and is reached through a loopback TCP proxy that delays each direction by DELAY ms.
//
// 1. COUNT images through Pulumi's real dynamic-provider host (native engine, parallelism 10):
//    the wall time of a preview (Check + Diff) and of a refresh (Read) of all of them; the SSH
//    connections the proxy accepted (handshakes); and the round trips of one Read, counted at the
//    proxy on a refresh of SAMPLE images one at a time (a round trip: the client speaks after
//    the server has sent something; SSH's own window adjustments count too, so this is an upper
//    bound).
// 2. qemu-img create of a 1 TiB data-file-raw image on the host: `qcow2 create ssh://...` (the
//    native engine here, the host's files over SFTP) against `ssh host qemu-img create ...`, the
//    median of RUNS interleaved runs each, with and without the delay; the local process's peak
//    RSS. Whole processes under GNU time.
// 3. A URL source imported into an image on the host (`qcow2 convert --checksum ... URL
//    ssh://...`: downloaded, verified and converted here, the image streamed to the host) against
//    the same done on the host (`ssh host 'curl ... && qemu-img convert ...'`), median of RUNS
//    interleaved runs, on the direct connection; and the bytes that crossed the SSH link for one
//    of ours, counted at a proxy, against the source's size and the image's allocated data. The
//    source: a 2 GiB qcow2 holding 256 MiB of random data in 4 MiB extents, served over HTTP
//    from 127.0.0.1.
//
//   npm run build && node dist/bench/remote.js [count] [delay-ms] [provider,create,url]

import { spawn, spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, haveGnuTime, measure, med, peakMiB, sh, startHttpServer, type Sample } from './common';
import { startSshd, type Sshd } from '../test/helpers/sshd';
import { startTcpProxy, type TcpProxy } from '../test/helpers/tcp-proxy';
import { ProviderHost, Stack, serializedProvider } from '../test/resource/host';

const COUNT = Number(process.argv[2] ?? 500);
const DELAY = Number(process.argv[3] ?? 10);
const PARALLEL = 10;
const SAMPLE = 20;
const RUNS = 5;
const PARTS = (process.argv[4] ?? 'provider,create,url').split(',');

async function pool<T>(items: T[], fn: (t: T) => Promise<unknown>, parallel = PARALLEL): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

const secs = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e9;

async function provider(sshd: Sshd, proxy: TcpProxy, dir: string): Promise<void> {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-remote-prog-'));
  const host = await ProviderHost.start(cwd);
  try {
    const connection = { ...sshd.connection({ port: proxy.port }), hostKey: sshd.hostKeyLine };
    const provider = await serializedProvider();
    const stacks = Array.from({ length: COUNT }, (_, i) => new Stack(host, provider, `urn:pulumi:bench::qcow2::pulumi-nodejs:dynamic/qcow2:Image::img${i}`));
    const inputs = (i: number) => ({ path: path.join(dir, `img${i}.qcow2`), size: '1G', dataFile: path.join(dir, `img${i}.raw`), dataFileRaw: true, connection });
    const t0 = process.hrtime.bigint();
    await pool(stacks.map((s, i) => [s, i] as const), ([s, i]) => s.up(inputs(i)));
    const up = secs(t0);
    const dialsBefore = proxy.accepted;
    const t1 = process.hrtime.bigint();
    const c1 = host.cpuSeconds();
    await pool(stacks.map((s, i) => [s, i] as const), async ([s, i]) => {
      const p = await s.preview(inputs(i));
      if (p.op !== 'same') throw new Error(`unexpected plan ${p.op}`);
    });
    const preview = secs(t1);
    const t2 = process.hrtime.bigint();
    await pool(stacks, (s) => s.refresh());
    const refresh = secs(t2);
    const cpu = host.cpuSeconds() - c1;
    // Round trips of one Read: SAMPLE refreshes one after another, turns counted at the proxy.
    const turns = proxy.turns;
    const t3 = process.hrtime.bigint();
    for (const s of stacks.slice(0, SAMPLE)) await s.refresh();
    const serial = secs(t3) / SAMPLE;
    const perRead = (proxy.turns - turns) / SAMPLE;
    const handshakes = proxy.accepted;
    await pool(stacks, (s) => s.destroy());
    console.log(`| images | delay per direction | up (create) s | preview s | refresh s | preview + refresh s | provider host CPU s | SSH handshakes (all phases) | new during preview + refresh | round trips per Read | one Read alone ms |`);
    console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`);
    console.log(`| ${COUNT} | ${DELAY} ms | ${up.toFixed(2)} | ${preview.toFixed(2)} | ${refresh.toFixed(2)} | ${(preview + refresh).toFixed(2)} | ${cpu.toFixed(2)} | ${handshakes} | ${handshakes - dialsBefore} | ${perRead.toFixed(2)} | ${(serial * 1000).toFixed(1)} |`);
  } finally {
    host.stop();
    fs.rmSync(cwd, { recursive: true, force: true });
  }
}

/** OpenSSH's options for the test sshd: the bench's key and known_hosts, no prompts. */
function sshOptions(sshd: Sshd, home: string): string[] {
  return ['-q', '-i', sshd.clientKey.privateKeyPath, '-o', `UserKnownHostsFile=${path.join(home, '.ssh', 'known_hosts')}`,
    '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes'];
}

/** OpenSSH's client to the test sshd. */
function sshTo(sshd: Sshd, port: number, home: string): string[] {
  return ['ssh', ...sshOptions(sshd, home), '-p', String(port), `${sshd.user}@127.0.0.1`];
}

function create(sshd: Sshd, port: number, dir: string, home: string, label: string): void {
  let n = 0;
  const next = () => path.join(dir, `big${++n}`);
  const url = (p: string) => `ssh://127.0.0.1:${port}${p}`;
  const native: Sample[] = [];
  const qemu: Sample[] = [];
  const env = ['env', `HOME=${home}`, 'SSH_AUTH_SOCK='];
  const ssh = sshTo(sshd, port, home);
  for (let i = 0; i < RUNS; i++) {
    const a = next(), b = next();
    const ours = () => native.push(measure([...env, CLI, 'create', '-q', '-f', 'qcow2', '-o', `data_file=${a}.raw,data_file_raw=on`, url(`${a}.qcow2`), '1T'], dir));
    const theirs = () => qemu.push(measure([...ssh, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `data_file=${b}.raw,data_file_raw=on`, `${b}.qcow2`, '1T'], dir));
    if (i % 2 === 0) { ours(); theirs(); } else { theirs(); ours(); }
    for (const f of [a, b]) for (const x of ['.qcow2', '.raw']) fs.rmSync(f + x, { force: true });
  }
  const w = med(native, 'wall'), q = med(qemu, 'wall');
  console.log(`| ${label} | ${w.toFixed(2)} | ${q.toFixed(2)} | ${(w / q).toFixed(2)} | ${peakMiB(native)} |`);
}

async function urlSource(sshd: Sshd, dir: string, home: string): Promise<void> {
  const MiB = 2 ** 20;
  // The source: 64 extents of 4 MiB random data, one every 32 MiB, in a 2 GiB qcow2.
  const raw = path.join(home, 'src.raw');
  const fd = fs.openSync(raw, 'w');
  const chunk = Buffer.alloc(4 * MiB);
  for (let i = 0; i < 64; i++) fs.writeSync(fd, crypto.randomFillSync(chunk), 0, chunk.length, i * 32 * MiB);
  fs.ftruncateSync(fd, 2 * 1024 * MiB);
  fs.closeSync(fd);
  const src = path.join(home, 'src.qcow2');
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, src], home);
  fs.rmSync(raw);
  const sum = `sha256:${crypto.createHash('sha256').update(fs.readFileSync(src)).digest('hex')}`;
  const server = await startHttpServer(src);
  // A proxy without delay, to count the SSH link's bytes of one run (measure() below blocks this
  // event loop, so the timed runs use the direct connection).
  const counter = await startTcpProxy({ host: '127.0.0.1', port: sshd.port });
  fs.appendFileSync(path.join(home, '.ssh', 'known_hosts'), `[127.0.0.1]:${counter.port} ${sshd.hostKeyLine}\n`);
  try {
    const env = (tag: string) => ['env', `HOME=${home}`, 'SSH_AUTH_SOCK=', `PULUMI_QCOW2_CACHE_DIR=${path.join(home, `cache-${tag}`)}`];
    const ours = (port: number, out: string, tag: string) =>
      [...env(tag), CLI, 'convert', '--checksum', sum, '-O', 'qcow2', server.url, `ssh://127.0.0.1:${port}${out}`];
    const ssh = sshTo(sshd, sshd.port, home);
    // The same flow by hand: download and convert here, then scp to the host (-C off, as ours).
    const scp = ['scp', ...sshOptions(sshd, home), '-P', String(sshd.port)];
    const byHand = (out: string, tag: string) => {
      const dl = path.join(home, `${tag}.download`), img = path.join(home, `${tag}.qcow2`);
      return ['sh', '-c', `curl -sf -o '${dl}' '${server.url}' && qemu-img convert -f qcow2 -O qcow2 '${dl}' '${img}' && ${scp.join(' ')} '${img}' '${sshd.user}@127.0.0.1:${out}'; s=$?; rm -f '${dl}' '${img}'; exit $s`];
    };
    // Or all of it on the host, where the host can reach the URL.
    const onHost = (out: string) => [...ssh, `curl -sf -o '${out}.download' '${server.url}' && qemu-img convert -f qcow2 -O qcow2 '${out}.download' '${out}'; s=$?; rm -f '${out}.download'; exit $s`];
    const a: Sample[] = [];
    const b: Sample[] = [];
    const c: Sample[] = [];
    for (let i = 0; i < RUNS; i++) {
      const x = path.join(dir, `url-ours-${i}.qcow2`), y = path.join(dir, `url-hand-${i}.qcow2`), z = path.join(dir, `url-host-${i}.qcow2`);
      const runs = [() => a.push(measure(ours(sshd.port, x, String(i)), dir)), () => b.push(measure(byHand(y, String(i)), dir)), () => c.push(measure(onHost(z), dir))];
      for (let k = 0; k < runs.length; k++) runs[(i + k) % runs.length]!();
      for (const f of [x, y, z]) {
        if (spawnSync('qemu-img', ['compare', '-q', src, f]).status !== 0) throw new Error(`${path.basename(f)} differs from the source`);
      }
      sh('qemu-img', ['check', '-q', x], dir);
      for (const f of [x, y, z]) fs.rmSync(f);
      fs.rmSync(path.join(home, `cache-${i}`), { recursive: true, force: true });
    }
    // One more of ours through the counting proxy, asynchronously (the proxy runs on this loop).
    const out = path.join(dir, 'url-counted.qcow2');
    const before = counter.bytes.up + counter.bytes.down;
    const [cmd, ...args] = ours(counter.port, out, 'counted');
    const status = await new Promise<number | null>((resolve) => spawn(cmd!, args, { stdio: 'ignore' }).on('close', resolve));
    if (status !== 0) throw new Error('the counted import failed');
    const link = counter.bytes.up + counter.bytes.down - before;
    const info = JSON.parse(sh('qemu-img', ['info', '--output=json', out], dir)) as { 'actual-size': number };
    const w = med(a, 'wall'), h = med(b, 'wall'), q = med(c, 'wall');
    console.log(`| URL source (2 GiB qcow2, 256 MiB of data) into an image on the host | qcow2 convert URL ssh://… s | by hand: curl, qemu-img convert, scp s | ratio | on the host: ssh host 'curl && qemu-img convert' s | ratio | qcow2 peak RSS MiB | source MiB | image on the host MiB | bytes over SSH MiB |`);
    console.log(`|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|`);
    console.log(`| downloaded, verified and converted here, streamed to the host | ${w.toFixed(2)} | ${h.toFixed(2)} | ${(w / h).toFixed(2)} | ${q.toFixed(2)} | ${(w / q).toFixed(2)} | ${peakMiB(a)} | ` +
      `${(fs.statSync(src).size / MiB).toFixed(1)} | ${(info['actual-size'] / MiB).toFixed(1)} | ${(link / MiB).toFixed(1)} |`);
    fs.rmSync(out);
  } finally {
    await counter.close();
    server.stop();
  }
}

async function main(): Promise<void> {
  if (!haveGnuTime('remote')) process.exit(1);
  const sshd = await startSshd();
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: sshd.port }, { delayMs: DELAY });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-remote-'));
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bench-remote-home-'));
  try {
    fs.mkdirSync(path.join(home, '.ssh'), { mode: 0o700 });
    fs.writeFileSync(path.join(home, '.ssh', 'id_ed25519'), sshd.clientKey.privateKey, { mode: 0o600 });
    fs.writeFileSync(path.join(home, '.ssh', 'known_hosts'), `[127.0.0.1]:${sshd.port} ${sshd.hostKeyLine}\n[127.0.0.1]:${proxy.port} ${sshd.hostKeyLine}\n`);
    if (PARTS.includes('provider')) await provider(sshd, proxy, dir);
    console.log('');
    console.log(`| qemu-img create -f qcow2 -o data_file=…,data_file_raw=on 1T on the host | qcow2 create ssh://… s | ssh host qemu-img create … s | ratio | qcow2 peak RSS MiB |`);
    console.log(`|---|---:|---:|---:|---:|`);
    // measure() blocks this event loop (spawnSync), which the proxy runs on: the direct connection.
    if (PARTS.includes('create')) create(sshd, sshd.port, dir, home, 'loopback, no delay');
    console.log('');
    if (PARTS.includes('url')) await urlSource(sshd, dir, home);
    console.log(`\nsshd on 127.0.0.1 (the "remote" files are this machine's, reached only over SSH); the gRPC client and sshd share the machine's cores.`);
  } finally {
    await proxy.close();
    await sshd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(home, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
