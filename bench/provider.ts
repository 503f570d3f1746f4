// bench/provider: a stack of N images through Pulumi's real dynamic-provider host. Times a
// preview (Check + Diff for every image) and a refresh (Read for every image), with the native
// engine and with the qemu-img engine, at the Pulumi engine's default parallelism (10).
//
//   npm run build && node dist/bench/provider.js [count]

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ProviderHost, Stack, serializedProvider } from '../test/resource/host';

const count = Number(process.argv[2] ?? 500);
const PARALLEL = 10;

async function pool<T>(items: T[], fn: (t: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

interface Phase { wall: number; hostCpu: number }

async function run(engine: 'native' | 'qemu-img'): Promise<{ preview: Phase; refresh: Phase }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `qcow2-bench-provider-${engine}-`));
  const host = await ProviderHost.start(dir);
  try {
    const provider = await serializedProvider();
    const stacks = Array.from({ length: count }, (_, i) => new Stack(host, provider, `urn:pulumi:bench::qcow2::pulumi-nodejs:dynamic/qcow2:Image::img${i}`));
    const inputs = (i: number) => ({ path: `img${i}.qcow2`, size: '10G', dataFile: `img${i}.raw`, dataFileRaw: true, engine });
    await pool(stacks.map((s, i) => [s, i] as const), ([s, i]) => s.up(inputs(i)));
    const phase = async (fn: () => Promise<void>): Promise<Phase> => {
      const t = process.hrtime.bigint();
      const c = host.cpuSeconds();
      await fn();
      return { wall: Number(process.hrtime.bigint() - t) / 1e9, hostCpu: host.cpuSeconds() - c };
    };
    const preview = await phase(() => pool(stacks.map((s, i) => [s, i] as const), async ([s, i]) => {
      const p = await s.preview(inputs(i));
      if (p.op !== 'same') throw new Error(`unexpected plan ${p.op}`);
    }));
    const refresh = await phase(() => pool(stacks, (s) => s.refresh()));
    await pool(stacks, (s) => s.destroy());
    return { preview, refresh };
  } finally {
    host.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  console.log(`| engine | images | preview wall s | refresh wall s | total wall s | per image ms | provider host CPU s (preview + refresh) |`);
  console.log(`|---|---:|---:|---:|---:|---:|---:|`);
  for (const engine of ['native', 'qemu-img'] as const) {
    const r = await run(engine);
    const total = r.preview.wall + r.refresh.wall;
    console.log(`| ${engine} | ${count} | ${r.preview.wall.toFixed(3)} | ${r.refresh.wall.toFixed(3)} | ${total.toFixed(3)} | ${((total / count) * 1000).toFixed(2)} | ${(r.preview.hostCpu + r.refresh.hostCpu).toFixed(2)} |`);
  }
  console.log('\nThe gRPC client here is a Node process (the Pulumi engine is Go); wall time includes its own CPU, on the same 2 cores.');
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
