// The native engine's worker pool: operations run in worker threads, reused; errors come back
// as branded Qcow2Errors with their code, property, file and offset; progress callbacks arrive
// on the calling thread; the request's target descriptor is checked by the worker.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { NativeEngine } from '../../../provider/engines/native/engine';
import { WorkerPool } from '../../../provider/engines/native/pool';
import type { OpCall, TargetDescriptor } from '../../../provider/engines/native/protocol';

describe('native engine worker pool', () => {
  let dir: string;
  let pool: WorkerPool;
  let engine: NativeEngine;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-pool-'));
    pool = new WorkerPool(2);
    engine = new NativeEngine((target, call, progress) => pool.run(target, call, progress));
  });
  afterAll(async () => {
    await pool.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs_operations_in_reused_workers', async () => {
    for (let i = 0; i < 6; i++) await engine.create(path.join(dir, `img${i}.qcow2`), { size: 1n << 20n });
    const facts = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => engine.info(path.join(dir, `img${i}.qcow2`), { forceShare: true })));
    expect(facts.map((f) => f.virtualSize)).toEqual(Array(6).fill(1n << 20n));
    expect(pool.started).toBeLessThanOrEqual(2);
  });

  it('errors_cross_as_branded_qcow2_errors_with_their_details', async () => {
    const exists = await engine.create(path.join(dir, 'img0.qcow2'), { size: 1n << 20n }).catch((e: unknown) => e);
    expect(Qcow2Error.isInstance(exists)).toBe(true);
    expect(exists).toMatchObject({ code: 'EXISTS', property: 'path', file: path.join(dir, 'img0.qcow2') });

    const refused = await engine.create(path.join(dir, 'x.qcow2'), { size: 1n << 20n, compat: '0.10', lazyRefcounts: true }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'INVALID_OPTION', property: 'lazy_refcounts' });

    // A header whose L1 table points past any sane bound: INVALID_IMAGE at a byte offset.
    const bad = path.join(dir, 'bad.qcow2');
    const bytes = fs.readFileSync(path.join(dir, 'img1.qcow2'));
    bytes.writeUInt32BE(0x7fffffff, 36); // l1_size
    fs.writeFileSync(bad, bytes);
    const invalid = await engine.info(bad, { forceShare: true }).catch((e: unknown) => e);
    expect(Qcow2Error.isInstance(invalid)).toBe(true);
    expect((invalid as Qcow2Error).code).toBe('INVALID_IMAGE');
    expect((invalid as Qcow2Error).offset).toBeDefined();
  });

  it('delivers_progress_on_the_calling_thread', async () => {
    const src = path.join(dir, 'src.raw');
    fs.writeFileSync(src, Buffer.alloc(1 << 20, 0x5a));
    fs.truncateSync(src, 64 << 20);
    const seen: Array<[number, number]> = [];
    await engine.import(path.join(dir, 'imported.qcow2'), {}, { path: src, format: 'raw' }, { progress: (done, total) => seen.push([done, total]) });
    expect(seen.length).toBeGreaterThan(0);
    // Progress counts the data to copy (as qemu-img convert does): the 1 MiB written, not the holes.
    expect(seen[seen.length - 1]).toEqual([1 << 20, 1 << 20]);
    for (let i = 1; i < seen.length; i++) expect(seen[i]![0]).toBeGreaterThanOrEqual(seen[i - 1]![0]);
  });

  it('refuses_a_target_it_does_not_know', async () => {
    const call: OpCall = { op: 'info', path: path.join(dir, 'img0.qcow2'), options: {} };
    const e = await pool.run({ kind: 'sftp' } as unknown as TargetDescriptor, call).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'UNSUPPORTED' });
    expect((e as Error).message).toMatch(/Unknown target kind 'sftp'/);
  });

  it('a_closed_pool_fails_new_operations', async () => {
    const p = new WorkerPool(1);
    await p.close();
    await expect(p.run({ kind: 'local' }, { op: 'info', path: 'x', options: {} })).rejects.toThrow(/closed/);
  });
});
