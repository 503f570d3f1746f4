// A cluster decoding thread (io/codecs.ts's ClusterDecoder): decodes the compressed clusters it
// is sent, from and into shared memory, and answers with nothing but done or the error.

import { parentPort } from 'worker_threads';
import { errorToData } from '../../model/errors';
import { DecodeRequest, runDecodeJobs } from './codecs';

const port = parentPort;
if (port === null) throw new Error('provider/qcow2/io/decode-worker runs as a worker thread');

port.on('message', (req: DecodeRequest) => {
  try {
    runDecodeJobs(Buffer.from(req.stored, req.storedOffset), Buffer.from(req.out, req.outOffset), req.jobs);
    port.postMessage({ id: req.id });
  } catch (e) {
    port.postMessage({ id: req.id, error: errorToData(e) });
  }
});
