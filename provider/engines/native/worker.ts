// A worker thread of the native engine: runs the operations the pool sends, one at a time, and
// posts back progress, the result, or the error as data (protocol.ts). Loads the format engine,
// the rules and the model only.

import { parentPort } from 'worker_threads';
import { runOp } from './dispatch';
import { OpReply, OpRequest, toWire } from './protocol';

/** Progress is posted at most this often (a 1 TiB import reports every 4 MiB). */
const PROGRESS_INTERVAL_MS = 50;

const port = parentPort;
if (port === null) throw new Error('provider/engines/native/worker runs as a worker thread');

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
  try {
    post({ id: req.id, kind: 'result', value: runOp(req.target, req.call, progress) });
  } catch (e) {
    post({ id: req.id, kind: 'error', error: toWire(e) });
  }
});
