// The worker side of bridge.test.ts: synchronous calls into the main thread through the bridge,
// as the format engine will make them. Reports what it saw to the parent when done.

import { createHash } from 'crypto';
import { parentPort, workerData } from 'worker_threads';
import { BridgeClient, type BridgeEndpoint } from '../../provider/transport/bridge';
import { Qcow2Error } from '../../provider/model/errors';

interface Data {
  endpoint: BridgeEndpoint;
  scenario: 'basic' | 'sftp' | 'close';
  file?: string;
  ranges?: { offset: number; length: number }[];
}

const { endpoint, scenario, file, ranges } = workerData as Data;
const bridge = new BridgeClient(endpoint);
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    const q = Qcow2Error.isInstance(e);
    const err = e as Qcow2Error & { code?: string };
    return { qcow2: q, name: err.name, code: err.code, message: err.message, file: err.file, offset: err.offset };
  }
  return 'no error';
}

function basic(): unknown {
  const echo = bridge.call('echo', [1, 'two', 3n, { four: [4] }]).value;
  const big = bridge.call('bytes', [3 * 1024 * 1024 + 7]).data!;
  const into = new Uint8Array(100);
  const small = bridge.call('bytes', [10], { into });
  const upload = bridge.call('md5', [], { input: new Uint8Array(5 * 1024 * 1024).fill(7) }).value;
  let sum = 0;
  for (let i = 0; i < 2000; i++) sum += bridge.call('inc', [i]).value as number;
  return {
    echo,
    bigLength: big.length,
    bigMd5: md5(big),
    smallIsView: small.data!.buffer === into.buffer && small.data!.length === 10,
    smallMd5: md5(small.data!),
    upload,
    expectedUpload: md5(new Uint8Array(5 * 1024 * 1024).fill(7)),
    sum,
    typed: caught(() => bridge.call('fail', ['qcow2'])),
    plain: caught(() => bridge.call('fail', ['plain'])),
    unknown: caught(() => bridge.call('no-such-method')),
    uncloneable: caught(() => bridge.call('uncloneable')),
    after: bridge.call('echo', ['still fine']).value,
  };
}

function sftp(): unknown {
  const handle = bridge.call('open', [file]).value as number;
  const out: string[] = [];
  for (const r of ranges!) out.push(md5(bridge.call('read', [handle, r.offset, r.length]).data!));
  const many = bridge.call('readMany', [handle, ranges]).data!;
  bridge.call('close', [handle]);
  const missing = caught(() => bridge.call('open', [`${file}.missing`]));
  return { reads: out, manyMd5: md5(many), missing };
}

function close(): unknown {
  return caught(() => bridge.call('hang'));
}

const result = scenario === 'basic' ? basic() : scenario === 'sftp' ? sftp() : close();
parentPort!.postMessage(result);
