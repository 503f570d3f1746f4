// A cluster decoding thread (io/codecs.ts's ClusterDecoder): claims and decodes jobs of the
// batches it is sent, from and into shared memory, until none are left; reports only failures.

import { parentPort } from 'worker_threads';
import { errorToData } from '../../model/errors';
import { DecodeBatch, DecodeRequest } from './codecs';

const port = parentPort;
if (port === null) throw new Error('provider/qcow2/io/decode-worker runs as a worker thread');

port.on('message', (req: DecodeRequest) => {
  const batch = new DecodeBatch(
    Buffer.from(req.stored, req.storedOffset, req.storedLength), Buffer.from(req.out, req.outOffset, req.outLength), req.ctrl, req.jobs,
  );
  try {
    batch.work();
  } catch (e) {
    port.postMessage({ id: req.id, error: errorToData(e) });
  }
});
