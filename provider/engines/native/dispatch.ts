// Runs one native-engine operation, synchronously, on the thread that calls it: a worker thread
// (worker.ts) for the provider, the calling thread for the command line. Loads only the format
// engine, the rules and the model (and, for a remote target, the bridge's client side).

import { Qcow2Error } from '../../model/errors';
import type { ProgressFn } from '../../qcow2/guest/source';
import { HostFs, localFs } from '../../qcow2/io/hostfs';
import type { OpCall, TargetDescriptor } from './protocol';
import type { LocalImportSource } from './ops';

// Each operation loads what it needs when first run: `qcow2 info` must not pay for loading the
// whole format engine (module loading is most of a short command's cost).
const ops = () => require('./ops') as typeof import('./ops');
const maintenance = () => require('./maintenance') as typeof import('./maintenance');

/** The file access of a target: this machine's files, or a remote host's through the bridge. */
export type HostResolver = (target: TargetDescriptor) => HostFs;

/** Local files only: what the calling thread can reach without a bridge. */
export const localOnly: HostResolver = (target) => {
  if (target.kind === 'local') return localFs;
  if (target.kind === 'ssh') throw new Qcow2Error('UNSUPPORTED', `Files on ${target.label} are reached from a worker thread, not from the calling thread`);
  throw new Qcow2Error('UNSUPPORTED', `Unknown target kind '${String((target as { kind: unknown }).kind)}': this engine works on local files and on SSH hosts`);
};

/** Runs `call`; the result, or a promise of it for the operations that overlap their I/O (a local import). */
export function runOp(target: TargetDescriptor, call: OpCall, progress?: ProgressFn, hostOf: HostResolver = localOnly): unknown {
  const host = hostOf(target);
  switch (call.op) {
    case 'create':
      ops().createImage(call.path, call.options, call.behaviour, host);
      return undefined;
    case 'createRaw':
      ops().createRawImage(call.path, call.options, host);
      return undefined;
    case 'resolveCreate':
      return ops().resolveCreateOptions(call.path, call.options, call.behaviour, host);
    case 'import':
      if (call.raw) {
        if (host !== localFs) throw new Qcow2Error('UNSUPPORTED', 'convert -O raw writes a file of this machine: convert on the host the image is on');
        ops().importRawImage(call.path, call.options, call.source, {
          durable: call.durable, ...(progress ? { progress } : {}), ...(call.bitmaps ? { bitmaps: call.bitmaps } : {}), ...copyOf(call),
        });
        return undefined;
      }
      const special = copyOf(call);
      if (host === localFs && (call.sourceTarget === undefined || call.sourceTarget.kind === 'local')) {
        // Asynchronous: reads, decoding (on libuv's thread pool) and writes overlap.
        return ops().importImageAsync(call.path, call.options, call.source, {
          durable: call.durable, ...(progress ? { progress } : {}), ...(call.bitmaps ? { bitmaps: call.bitmaps } : {}), ...special,
        }).then(() => undefined);
      }
      // A remote host on either side: synchronous, its files through the bridge.
      ops().importImage(call.path, call.options, call.source, {
        host,
        ...(call.sourceTarget !== undefined ? { sourceHost: hostOf(call.sourceTarget) } : {}),
        durable: call.durable,
        ...(progress ? { progress } : {}),
        ...(call.bitmaps ? { bitmaps: call.bitmaps } : {}),
        ...special,
      });
      return undefined;
    case 'convertInto':
      if (host !== localFs) throw new Qcow2Error('UNSUPPORTED', 'convert -n writes into an image of this machine: convert on the host the image is on');
      ops().convertIntoImage(call.path, call.source, { ...(progress ? { progress } : {}), ...copyOf(call) });
      return undefined;
    case 'amend':
      ops().amendImage(call.path, call.request, { host });
      return undefined;
    case 'resize':
      ops().resizeImage(call.path, call.size, { allowShrink: call.options.allowShrink ?? false, host, ...(call.options.preallocation ? { preallocation: call.options.preallocation } : {}) });
      return undefined;
    case 'rebase':
      if (call.safe) ops().rebaseImage(call.path, call.backingFile, call.backingFormat, { host, ...(progress ? { progress } : {}) });
      else ops().rebaseUnsafe(call.path, call.backingFile, call.backingFormat, { host });
      return undefined;
    case 'info': {
      const { readImageFacts } = require('../../qcow2/ops/info') as typeof import('../../qcow2/ops/info');
      return readImageFacts(call.path, { lock: !call.options.forceShare, host, ...(call.options.format ? { format: call.options.format } : {}) });
    }
    case 'check': {
      const { checkImageFile } = require('../../qcow2/ops/check') as typeof import('../../qcow2/ops/check');
      return checkImageFile(call.path, { forceShare: call.options.forceShare ?? false, host });
    }
    case 'map':
      return ops().mapImage(call.path, { ...(call.options.format !== 'probe' ? { format: call.options.format ?? 'qcow2' } : {}), forceShare: call.options.forceShare ?? false, host });
    case 'bitmap':
      return ops().bitmapImage(call.path, call.name, call.actions, { ...call.options, host });
    case 'dumpBitmap':
      return ops().dumpBitmap(call.path, call.name, { forceShare: call.options.forceShare ?? false, host });
    case 'remove': {
      const { removeImageFiles } = require('../../qcow2/ops/remove') as typeof import('../../qcow2/ops/remove');
      removeImageFiles(call.path, call.options, host);
      return undefined;
    }
    case 'repair':
      return (require('./repair') as typeof import('./repair')).repairImageFile(call.path, call.mode, host);
    case 'repairDirty':
      return maintenance().repairDirtyImage(call.path, host);
    case 'snapshot':
      return maintenance().snapshotImage(call.path, call.request, { forceShare: call.options.forceShare ?? false, host });
    case 'compare':
      return maintenance().compareImageFiles(call.a, call.b, { strict: call.strict, forceShare: call.forceShare, host, ...(progress ? { progress } : {}) });
    case 'commit':
      // Commit finds its base by real path, which a remote host's files do not give.
      if (target.kind !== 'local') throw new Qcow2Error('UNSUPPORTED', `commit works on local images only: '${call.path}' is on ${target.label}`, { file: call.path });
      // Asynchronous: the writes into the base overlap the reads and the placing.
      return maintenance().commitImage(call.path, call.request, progress ? { progress } : {});
    case 'stat': {
      const st = host.stat(call.path);
      return st === undefined ? undefined : { kind: st.kind, size: st.size, id: st.id };
    }
    case 'chain':
      return (require('../chain') as typeof import('../chain')).readImageChain(call.path, call.seen, host);
    case 'dependents':
      return (require('../chain') as typeof import('../chain')).findDependents(call.path, call.candidates, host);
    default: {
      const never: never = call;
      throw new Qcow2Error('UNSUPPORTED', `Unknown operation '${(never as { op: string }).op}'`);
    }
  }
}

/** How an import or convert -n copies: -c, -B, further sources, -S. */
function copyOf(call: Extract<OpCall, { op: 'import' | 'convertInto' }>): { compressed?: true; overBacking?: true; more?: LocalImportSource[]; sparse?: number } {
  return {
    ...('compressed' in call && call.compressed ? { compressed: true as const } : {}), ...(call.overBacking ? { overBacking: true as const } : {}),
    ...(call.more !== undefined && call.more.length > 0 ? { more: call.more } : {}), ...(call.sparse !== undefined ? { sparse: call.sparse } : {}),
  };
}
