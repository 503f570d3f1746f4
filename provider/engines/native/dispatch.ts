// Runs one native-engine operation, synchronously, on the thread that calls it: a worker thread
// (worker.ts) for the provider, the calling thread for the command line. Loads only the format
// engine, the rules and the model.

import { Qcow2Error } from '../../model/errors';
import type { ProgressFn } from '../../qcow2/guest/source';
import type { OpCall, TargetDescriptor } from './protocol';

// Each operation loads what it needs when first run: `qcow2 info` must not pay for loading the
// whole format engine (module loading is most of a short command's cost).
const ops = () => require('./ops') as typeof import('./ops');
const maintenance = () => require('./maintenance') as typeof import('./maintenance');

/**
 * The file access a target gives. Local files are the only kind today: the format engine opens
 * them itself. A remote target would build its file system here, over the synchronous bridge.
 */
function checkTarget(target: TargetDescriptor): void {
  if (target.kind !== 'local') {
    throw new Qcow2Error('UNSUPPORTED', `Unknown target kind '${String((target as { kind: unknown }).kind)}': this engine works on local files`);
  }
}

/** Runs `call`; the result, or a promise of it for the operations that overlap their I/O (import). */
export function runOp(target: TargetDescriptor, call: OpCall, progress?: ProgressFn): unknown {
  checkTarget(target);
  switch (call.op) {
    case 'create':
      ops().createImage(call.path, call.options, call.behaviour);
      return undefined;
    case 'createRaw':
      ops().createRawImage(call.path, call.options);
      return undefined;
    case 'resolveCreate':
      return ops().resolveCreateOptions(call.path, call.options, call.behaviour);
    case 'import':
      if (call.raw) {
        ops().importRawImage(call.path, call.options, call.source, { durable: call.durable, ...(progress ? { progress } : {}) });
        return undefined;
      }
      // Asynchronous: reads, decoding (on libuv's thread pool) and writes overlap.
      return ops().importImageAsync(call.path, call.options, call.source, {
        durable: call.durable, ...(progress ? { progress } : {}), ...(call.bitmaps ? { bitmaps: call.bitmaps } : {}),
        ...(call.compressed ? { compressed: true } : {}), ...(call.overBacking ? { overBacking: true } : {}),
      }).then(() => undefined);
    case 'convertInto':
      ops().convertIntoImage(call.path, call.source, progress ? { progress } : {});
      return undefined;
    case 'amend':
      ops().amendImage(call.path, call.request);
      return undefined;
    case 'resize':
      ops().resizeImage(call.path, call.size, { allowShrink: call.options.allowShrink ?? false });
      return undefined;
    case 'rebase':
      if (call.safe) ops().rebaseImage(call.path, call.backingFile, call.backingFormat, progress ? { progress } : {});
      else ops().rebaseUnsafe(call.path, call.backingFile, call.backingFormat);
      return undefined;
    case 'info': {
      const { readImageFacts } = require('../../qcow2/ops/info') as typeof import('../../qcow2/ops/info');
      return readImageFacts(call.path, { lock: !call.options.forceShare, ...(call.options.format ? { format: call.options.format } : {}) });
    }
    case 'check': {
      const { checkImageFile } = require('../../qcow2/ops/check') as typeof import('../../qcow2/ops/check');
      return checkImageFile(call.path, { forceShare: call.options.forceShare ?? false });
    }
    case 'map':
      return ops().mapImage(call.path, { ...(call.options.format !== 'probe' ? { format: call.options.format ?? 'qcow2' } : {}), forceShare: call.options.forceShare ?? false });
    case 'bitmap':
      return ops().bitmapImage(call.path, call.name, call.actions, call.options);
    case 'dumpBitmap':
      return ops().dumpBitmap(call.path, call.name, { forceShare: call.options.forceShare ?? false });
    case 'remove': {
      const { removeImageFiles } = require('../../qcow2/ops/remove') as typeof import('../../qcow2/ops/remove');
      removeImageFiles(call.path, call.options);
      return undefined;
    }
    case 'repair':
      return maintenance().repairImageFile(call.path, call.mode);
    case 'repairDirty':
      return maintenance().repairDirtyImage(call.path);
    case 'snapshot':
      return maintenance().snapshotImage(call.path, call.request, { forceShare: call.options.forceShare ?? false });
    case 'compare':
      return maintenance().compareImageFiles(call.a, call.b, { strict: call.strict, forceShare: call.forceShare, ...(progress ? { progress } : {}) });
    case 'commit':
      maintenance().commitImage(call.path, call.request, progress ? { progress } : {});
      return undefined;
    case 'stat': {
      const { localFs } = require('../../qcow2/io/hostfs') as typeof import('../../qcow2/io/hostfs');
      const st = localFs.stat(call.path);
      return st === undefined ? undefined : { kind: st.kind, size: st.size, id: st.id };
    }
    default: {
      const never: never = call;
      throw new Qcow2Error('UNSUPPORTED', `Unknown operation '${(never as { op: string }).op}'`);
    }
  }
}
