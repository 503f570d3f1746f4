// A worker thread of the native engine: runs the operations the pool sends, one at a time, and
// posts back progress, the result, or the error as data (protocol.ts). Loads the format engine,
// the rules and the model only.

import * as os from 'os';
import { parentPort } from 'worker_threads';
import { runOp } from './dispatch';
import { errorToData } from '../../model/errors';
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
    const value = runOp(req.target, req.call, progress);
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
