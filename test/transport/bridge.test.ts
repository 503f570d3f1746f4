// The synchronous bridge with a real worker thread: values (bigint included), bulk bytes both
// ways past the shared buffer's size, typed errors, many calls in a row, closing while a call
// waits, and SFTP reads made synchronously by the worker through a real sshd.

import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../provider/model/errors';
import { BridgeClient, createBridge, type BridgeHandler } from '../../provider/transport/bridge';
import type { SftpFile, SshConnection } from '../../provider/transport/ssh';
import { scratchBase } from '../engines/helpers';
import { skipWithoutSshd } from '../helpers/sshd';
import { useSshd } from './support';

const repo = path.resolve(__dirname, '../..');
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

/** Run bridge-worker.ts in a worker thread with `handlers` on this side; resolves with its report. */
async function runWorker(handlers: Record<string, BridgeHandler>, data: Record<string, unknown>, during?: (close: () => void) => void): Promise<unknown> {
  const { host, endpoint, transferList } = createBridge(handlers, { initialBytes: 4096 });
  const register = require.resolve('ts-node/register/transpile-only', { paths: [repo] });
  const code = `require(${JSON.stringify(register)}); require(${JSON.stringify(path.join(__dirname, 'bridge-worker.ts'))});`;
  const worker = new Worker(code, {
    eval: true,
    workerData: { ...data, endpoint },
    transferList,
    env: { ...process.env, TS_NODE_PROJECT: path.join(repo, 'tsconfig.json') },
  });
  during?.(() => host.close());
  try {
    return await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`worker exited (${code}) without a report`)));
    });
  } finally {
    host.close();
    await worker.terminate();
  }
}

describe('the synchronous bridge', () => {
  it('refuses to block the main thread', () => {
    const { endpoint, host } = createBridge({});
    expect(() => new BridgeClient(endpoint)).toThrow(/never on the main thread/);
    host.close();
    endpoint.port.close();
  });

  it('carries values, bulk bytes both ways past the shared buffer, and typed errors', async () => {
    const pattern = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => i & 0xff));
    const report = (await runWorker(
      {
        echo: async (args) => ({ value: args }),
        bytes: async (args) => ({ data: pattern(args[0] as number) }),
        md5: async (_args, input) => ({ value: md5(input!) }),
        inc: async (args) => ({ value: (args[0] as number) + 1 }),
        fail: async (args) => {
          if (args[0] === 'qcow2') throw new Qcow2Error('CONNECTION', 'Lost the connection', { file: 'h:/img', offset: 2n ** 60n });
          throw Object.assign(new TypeError('plain failure'), { code: 'ECONNRESET' });
        },
        uncloneable: async () => ({ value: () => 1 }),
      },
      { scenario: 'basic' },
    )) as Record<string, unknown>;
    expect(report.echo).toEqual([1, 'two', 3n, { four: [4] }]);
    expect(report.bigLength).toBe(3 * 1024 * 1024 + 7);
    expect(report.bigMd5).toBe(md5(pattern(3 * 1024 * 1024 + 7)));
    expect(report.smallIsView).toBe(true);
    expect(report.smallMd5).toBe(md5(pattern(10)));
    expect(report.upload).toBe(report.expectedUpload);
    expect(report.sum).toBe((2000 * 2001) / 2);
    expect(report.typed).toEqual({ qcow2: true, name: 'Qcow2Error', code: 'CONNECTION', message: 'Lost the connection', file: 'h:/img', offset: 2n ** 60n });
    expect(report.plain).toMatchObject({ qcow2: false, name: 'TypeError', code: 'ECONNRESET', message: 'plain failure' });
    expect(report.unknown).toMatchObject({ qcow2: false, message: "no bridge handler for 'no-such-method'" });
    expect((report.uncloneable as { message: string }).message).toMatch(/could not be cloned/);
    expect(report.after).toEqual(['still fine']);
  });

  it('wakes a waiting worker with an error when the host closes', async () => {
    let close = () => {};
    const hang: BridgeHandler = () => {
      setTimeout(() => close(), 20); // once the call is in flight
      return new Promise(() => undefined);
    };
    const report = await runWorker({ hang }, { scenario: 'close' }, (c) => (close = c));
    expect(report).toMatchObject({ message: 'the bridge was closed during the call' });
  });
});

const skipSsh = skipWithoutSshd('bridge');

describe.skipIf(skipSsh)('SFTP reads from a worker thread through the bridge', () => {
  const suite = useSshd();
  let conn: SshConnection;
  let dir: string;

  beforeAll(() => {
    ({ conn } = suite);
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-bridge-'));
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads what the file holds, one call per range and in one batch', async () => {
    const file = path.join(dir, 'image.bin');
    const data = randomBytes(3 * 1024 * 1024);
    fs.writeFileSync(file, data);
    const ranges = [
      { offset: 0, length: 512 },
      { offset: 65536, length: 2 * 1024 * 1024 },
      { offset: data.length - 100, length: 4096 },
    ];
    const sftp = await conn.sftp();
    const files = new Map<number, SftpFile>();
    let next = 0;
    const report = (await runWorker(
      {
        open: async (args) => {
          const f = await sftp.open(args[0] as string, 'read');
          files.set(++next, f);
          return { value: next };
        },
        read: async (args) => ({ data: await files.get(args[0] as number)!.read(args[1] as number, args[2] as number) }),
        readMany: async (args) => ({ data: Buffer.concat(await files.get(args[0] as number)!.readMany(args[1] as typeof ranges)) }),
        close: async (args) => {
          await files.get(args[0] as number)!.close();
          files.delete(args[0] as number);
        },
      },
      { scenario: 'sftp', file, ranges },
    )) as { reads: string[]; manyMd5: string; missing: { qcow2: boolean; code: string; message: string } };
    const expected = ranges.map((r) => {
      const b = Buffer.alloc(r.length);
      data.copy(b, 0, r.offset, Math.min(data.length, r.offset + r.length));
      return b;
    });
    expect(report.reads).toEqual(expected.map(md5));
    expect(report.manyMd5).toBe(md5(Buffer.concat(expected)));
    expect(report.missing).toMatchObject({ qcow2: true, code: 'NOT_FOUND' });
    expect(report.missing.message).toContain(`${conn.label}:${file}.missing`);
    expect(files.size).toBe(0);
  });
});
