// Engine selection: "native" (default) or "qemu-img". Each is loaded on first use: a program
// that never chooses qemu-img never loads its engine, and the native engine's format code loads
// in its worker threads, not in the caller.

import type { Engine, EngineName } from './engine';
import type { Executor, NativeEngineOptions } from './native/engine';
import type { QemuImgEngineOptions } from './qemuimg/engine';
import { Qcow2Error } from '../model/errors';

export interface EngineOptions {
  /** Native engine: where operations run ('worker' threads by default, or 'inline'). */
  native?: NativeEngineOptions;
  /** qemu-img engine: the binary and its resource limits. */
  qemuImg?: QemuImgEngineOptions;
}

export function getEngine(name: EngineName = 'native', options: EngineOptions = {}): Engine {
  switch (name) {
    case 'native':
      return nativeEngine(options.native);
    case 'qemu-img': {
      const { QemuImgEngine } = require('./qemuimg/engine') as typeof import('./qemuimg/engine');
      return new QemuImgEngine(options.qemuImg);
    }
    default:
      throw new Qcow2Error('INVALID_OPTION', `Unknown engine '${String(name)}': use "native" or "qemu-img"`, { property: 'engine' });
  }
}

/** Operations in the shared pool of worker threads, started with the first operation. */
const inWorkers: Executor = async (target, call, progress) =>
  (require('./native/pool') as typeof import('./native/pool')).sharedPool().run(target, call, progress);

function nativeEngine(options: NativeEngineOptions = {}): Engine {
  if (options.executor === 'inline') return (require('./inline') as typeof import('./inline')).inlineEngine(options.target);
  const { NativeEngine } = require('./native/engine') as typeof import('./native/engine');
  return new NativeEngine(typeof options.executor === 'function' ? options.executor : inWorkers, options.target);
}

export type { Engine, EngineName } from './engine';
