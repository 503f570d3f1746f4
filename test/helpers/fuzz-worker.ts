// Child process of the fuzz test: replays one mutated-image case per message through open, info
// and (when provider/qcow2/ops/check.ts exists) check, and reports each call's outcome. Running in
// a child with a heap limit lets the test survive, and report, a case that hangs or exhausts
// memory instead of taking the whole test process down (a worker thread cannot: V8's fatal
// out-of-memory in a worker aborts the whole process).

import { existsSync } from 'node:fs';
import { join } from 'node:path';

import type { BlockFile } from '../../provider/qcow2/io/blockfile';
import { Qcow2Error } from '../../provider/model/errors';
import { Image } from '../../provider/qcow2/meta/image';
import { infoOf } from '../../provider/qcow2/ops/info';
import { GuardedFile, UnboundedReadError, apply, parseCase } from './mutate';

export interface CallResult {
  call: string;
  /** ok; qcow2 (a Qcow2Error); unbounded (a read over 64 MiB, or too many reads); threw (anything else). */
  outcome: 'ok' | 'qcow2' | 'unbounded' | 'threw';
  detail: string;
  /** CPU time of the call (user + system), in ms: unlike elapsed time, other load does not inflate it. */
  cpuMs: number;
  largestRead: number;
  reads: number;
}

export interface WorkerRequest { id: number; case: string }
export interface WorkerReply { id: number; results: CallResult[] }
export interface WorkerHello { ready: true; calls: string[] }

type Call = (file: BlockFile) => unknown;
const calls: Array<[string, Call]> = [
  ['Image.open', (f) => Image.open(f, 'x')],
  ['infoOf', (f) => infoOf(f, 'x')],
];
// FUZZ_CHECK_MODULE points the fuzzer at another check.ts (a candidate fix in a scratch copy).
const checkModule = process.env.FUZZ_CHECK_MODULE ?? join(__dirname, '../../provider/qcow2/ops/check.ts');
if (existsSync(checkModule)) {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const mod = require(checkModule) as { checkImage?: Call };
  if (typeof mod.checkImage === 'function') calls.push(['checkImage', (f) => mod.checkImage!(f)]);
}

function run(caseText: string): CallResult[] {
  const { bytes } = apply(parseCase(caseText));
  return calls.map(([name, call]) => {
    const file = new GuardedFile(bytes);
    const t0 = process.cpuUsage();
    let outcome: CallResult['outcome'] = 'ok';
    let detail = '';
    try {
      call(file);
    } catch (e) {
      if (e instanceof UnboundedReadError) {
        outcome = 'unbounded';
        detail = e.message;
      } else if (Qcow2Error.isInstance(e)) {
        outcome = 'qcow2';
        detail = `${e.code} ${e.message}`;
      } else {
        outcome = 'threw';
        detail = (e as Error)?.stack ?? String(e);
      }
    }
    const cpu = process.cpuUsage(t0);
    return { call: name, outcome, detail, cpuMs: (cpu.user + cpu.system) / 1000, largestRead: file.largestRead, reads: file.reads };
  });
}

process.on('message', (m: WorkerRequest) => {
  process.send!({ id: m.id, results: run(m.case) } satisfies WorkerReply);
});
process.on('disconnect', () => process.exit(0));
process.send!({ ready: true, calls: calls.map(([n]) => n) } satisfies WorkerHello);
