// The provider never blocks: native-engine operations run in worker threads, so the real
// dynamic-provider host keeps answering while a long operation writes. A `preallocation: full`
// create of a 2 GiB image (gigabytes of zeros written) runs while a Read of another image is
// made; the Read must answer within 100 ms, and must provably fall inside the create.
//
// `npm test` runs this file on its own after the rest of the suite (npm run test:latency): a
// latency is only meaningful while no other test file competes for the same cores.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireQemu, qemuImgAvailable } from '../helpers/qemu';
import { HostInScratch, ProviderHost, Stack } from './host';

const skip = !qemuImgAvailable() && !requireQemu;
const URN = (name: string) => `urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::${name}`;

describe('the provider host answers while a native operation runs', () => {
  let dir: string;
  let host: ProviderHost;
  let provider: string;

  const scratch = new HostInScratch('qcow2-loop-');
  beforeAll(async () => {
    if (skip) return;
    // On disk (not /dev/shm): the create writes 2 GiB.
    ({ dir, host, provider } = await scratch.start());
  }, 60_000);
  afterAll(() => scratch.stop());

  it.skipIf(skip)('a_read_answers_within_100_ms_during_a_full_preallocation_create', async () => {
    const small = new Stack(host, provider, URN('small'));
    await small.up({ path: 'small.qcow2', size: '1M' });

    const big = new Stack(host, provider, URN('big'));
    let bigDone = false;
    const creating = big.up({ path: 'big.qcow2', size: '2G', preallocation: 'full' }).finally(() => { bigDone = true; });

    // Wait until the create is writing: some file other than small.qcow2 has grown past 64 MiB.
    const writing = () => fs.readdirSync(dir).some((f) => f !== 'small.qcow2' && fs.statSync(path.join(dir, f)).size >= 64 << 20);
    for (let i = 0; i < 20_000 && !writing() && !bigDone; i++) await new Promise((r) => setTimeout(r, 5));
    expect(bigDone, 'the create finished before it could be observed writing: make it bigger').toBe(false);

    const t0 = process.hrtime.bigint();
    const r = await host.read(small.urn, small.state!.id, small.state!.outputs);
    const readMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const overlapped = !bigDone;

    expect(r.id).toBe(small.state!.id);
    expect(r.props).toMatchObject({ virtualSize: 1 << 20 });
    expect(overlapped, 'the Read answered after the create had finished: no overlap proven').toBe(true);
    console.log(`Read during a 2 GiB full-preallocation create: ${readMs.toFixed(1)} ms`);
    expect(readMs).toBeLessThan(100);

    const c = await creating;
    expect(c.outputs).toMatchObject({ virtualSize: 2 ** 31, preallocation: 'full' });
    await big.destroy();
    await small.destroy();
  }, 300_000);
});
