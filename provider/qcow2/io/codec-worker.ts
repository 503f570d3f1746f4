// A codec thread of the process's pool (io/codecs.ts CodecPool): claims clusters of the batches
// it is sent, decoding (io/codecs.ts DecodeBatch) or compressing (io/compressor.ts), from and
// into shared memory, until none are left; reports only failures.

import { parentPort } from 'worker_threads';
import { errorToData } from '../../model/errors';
import { CodecRequest, DecodeBatch } from './codecs';
import { compressInWorker } from './compressor';

const port = parentPort;
if (port === null) throw new Error('provider/qcow2/io/codec-worker runs as a worker thread');

port.on('message', (req: CodecRequest) => {
  try {
    if (req.op === 'compress') {
      compressInWorker(req);
    } else {
      new DecodeBatch(
        Buffer.from(req.stored, req.storedOffset, req.storedLength), Buffer.from(req.out, req.outOffset, req.outLength), req.ctrl, req.jobs,
      ).work();
    }
  } catch (e) {
    port.postMessage({ id: req.id, error: errorToData(e) });
  }
});
