// A worker thread of the native engine: runs the operations the pool sends, one at a time, and
// posts back progress, the result, or the error as data (protocol.ts). Loads the format engine,
// the rules and the model only.

import * as os from 'os';
import { parentPort, workerData } from 'worker_threads';
import { HostResolver, localOnly, runOp } from './dispatch';
import { errorToData } from '../../model/errors';
import type { HostFs } from '../../qcow2/io/hostfs';
import type { BridgeEndpoint } from '../../transport/bridge';
import type { OpReply, OpRequest } from './protocol';

/** Progress is posted at most this often (a 1 TiB import reports every 4 MiB). */
const PROGRESS_INTERVAL_MS = 50;

/**
 * Operations that write in bulk run at a lower CPU priority (Linux nice values are per thread),
 * so that the host's event loop and the short reads of other workers are served first.
 */
const BULK = new Set(['create', 'import', 'amend', 'resize', 'rebase', 'commit', 'repair']);
const BULK_NICE = 10;

/** Lower this thread's priority; true when it was lowered. */
function lower(): boolean {
  try {
    os.setPriority(0, BULK_NICE);
    return true;
  } catch {
    return false;
  }
}

/** Back to normal; false when not allowed (raising priority needs CAP_SYS_NICE). */
function restore(): boolean {
  try {
    os.setPriority(0, 0);
    return true;
  } catch {
    return false;
  }
}

const port = parentPort;
if (port === null) throw new Error('provider/engines/native/worker runs as a worker thread');

/** The bridge to the main thread (pool.ts hands every worker one), for remote targets. */
const endpoint = (workerData as { bridge?: BridgeEndpoint } | undefined)?.bridge;
const remote = new Map<string, HostFs>();

/** Local files directly; a remote host's through the bridge (loaded on first use). */
const hostOf: HostResolver = (target) => {
  if (target.kind !== 'ssh' || endpoint === undefined) return localOnly(target);
  let host = remote.get(target.id);
  if (host === undefined) {
    const { BridgeClient } = require('../../transport/bridge') as typeof import('../../transport/bridge');
    const { BridgedHostFs } = require('../../transport/remote/hostfs') as typeof import('../../transport/remote/hostfs');
    bridge ??= new BridgeClient(endpoint);
    host = new BridgedHostFs(bridge, target.id);
    remote.set(target.id, host);
  }
  return host;
};
let bridge: import('../../transport/bridge').BridgeClient | undefined;

// Load the format engine now, while the thread is idle: the first operation sent here (often a
// short read arriving during a long write elsewhere) then does not pay for compiling it.
setImmediate(() => {
  require('./ops');
  require('../../qcow2/ops/info');
  require('../../qcow2/ops/check');
});

port.on('message', (req: OpRequest) => {
  const post = (m: OpReply) => port.postMessage(m);
  let last = 0;
  const progress = req.progress
    ? (done: number, total: number) => {
      const now = Date.now();
      if (done < total && now - last < PROGRESS_INTERVAL_MS) return;
      last = now;
      post({ id: req.id, kind: 'progress', done, total });
    }
    : undefined;
  const niced = BULK.has(req.call.op) && lower();
  // A thread that cannot get its priority back retires; the pool starts a fresh one when needed.
  const finish = () => {
    if (niced && !restore()) process.exit(0);
  };
  try {
    const value = runOp(req.target, req.call, progress, hostOf);
    if (value instanceof Promise) {
      value.then(
        (v) => post({ id: req.id, kind: 'result', value: v }),
        (e) => post({ id: req.id, kind: 'error', error: errorToData(e) }),
      ).finally(finish);
      return;
    }
    post({ id: req.id, kind: 'result', value });
  } catch (e) {
    post({ id: req.id, kind: 'error', error: errorToData(e) });
  }
  finish();
});
