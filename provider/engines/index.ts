// Engine selection: "native" (default) or "qemu-img". Each is loaded on first use: a program
// that never chooses qemu-img never loads its engine, and the native engine's format code loads
// in its worker threads, not in the caller.

import type { Engine, EngineName } from './engine';
import type { Executor, NativeEngineOptions, RemoteSupport } from './native/engine';
import type { TargetDescriptor } from './native/protocol';
import type { QemuImgEngineOptions } from './qemuimg/engine';
import { Qcow2Error } from '../model/errors';
import type { ConnectionArgs } from '../transport/ssh/connection';

export interface EngineOptions {
  /** Native engine: where operations run ('worker' threads by default, or 'inline'). */
  native?: NativeEngineOptions;
  /** qemu-img engine: the binary and its resource limits. */
  qemuImg?: QemuImgEngineOptions;
  /** A remote host the images are on, reached over SSH (paths are paths there). */
  connection?: ConnectionArgs;
}

export function getEngine(name: EngineName = 'native', options: EngineOptions = {}): Engine {
  switch (name) {
    case 'native':
      return nativeEngine(options.native, options.connection);
    case 'qemu-img': {
      const { QemuImgEngine } = require('./qemuimg/engine') as typeof import('./qemuimg/engine');
      return new QemuImgEngine({ ...options.qemuImg, ...(options.connection !== undefined ? { connection: options.connection } : {}) });
    }
    default:
      throw new Qcow2Error('INVALID_OPTION', `Unknown engine '${String(name)}': use "native" or "qemu-img"`, { property: 'engine' });
  }
}

/** Operations in the shared pool of worker threads, started with the first operation. */
const inWorkers: Executor = async (target, call, progress) =>
  (require('./native/pool') as typeof import('./native/pool')).sharedPool().run(target, call, progress);

/** The target of a remote host: its connection kept in this process under an id (no secret in the descriptor). */
async function sshTarget(connection: ConnectionArgs): Promise<TargetDescriptor> {
  const { remoteFs } = await import('../transport/ssh/remote-fs');
  const fs = remoteFs(connection);
  fs.prepare(); // the connection comes up while a worker starts
  return { kind: 'ssh', id: fs.id, label: fs.label };
}

const IN_WORKER = Symbol('in a worker');

/** Remote hosts for the native engine: their operations in the pool (the calling thread serves the bridge). */
const REMOTE: RemoteSupport = {
  exec: inWorkers,
  target: sshTarget,
  // Header reads (info -U, chain identities) are answered on this thread from one fetched cluster.
  headerRead: async (target, call) => {
    const m = require('./remote-read') as typeof import('./remote-read');
    const r = await m.remoteHeaderRead(target, call);
    return r === m.IN_WORKER ? IN_WORKER : r;
  },
  inWorker: IN_WORKER,
};

function nativeEngine(options: NativeEngineOptions = {}, connection?: ConnectionArgs): Engine {
  // A connection is validated and registered on first use (ssh2 is loaded only then).
  const target = options.target ?? (connection !== undefined ? sshTarget(connection) : undefined);
  if (options.executor === 'inline') return (require('./inline') as typeof import('./inline')).inlineEngine(target, REMOTE);
  const { NativeEngine } = require('./native/engine') as typeof import('./native/engine');
  const exec = typeof options.executor === 'function' ? options.executor : inWorkers;
  return new NativeEngine(exec, target, { ...REMOTE, exec });
}

export type { Engine, EngineName } from './engine';
