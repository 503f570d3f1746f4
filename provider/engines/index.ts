// Engine selection: "native" (default) or "qemu-img". Each is loaded on first use: a program
// that never chooses qemu-img never loads its engine, and the native engine's format code loads
// in its worker threads, not in the caller.

import type { Engine, EngineName } from './engine';
import type { NativeEngineOptions } from './native/engine';
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
    case 'native': {
      const { NativeEngine } = require('./native/engine') as typeof import('./native/engine');
      return new NativeEngine({ ...options.native, ...(options.connection !== undefined ? { connection: options.connection } : {}) });
    }
    case 'qemu-img': {
      const { QemuImgEngine } = require('./qemuimg/engine') as typeof import('./qemuimg/engine');
      return new QemuImgEngine({ ...options.qemuImg, ...(options.connection !== undefined ? { connection: options.connection } : {}) });
    }
    default:
      throw new Qcow2Error('INVALID_OPTION', `Unknown engine '${String(name)}': use "native" or "qemu-img"`, { property: 'engine' });
  }
}

export type { Engine, EngineName } from './engine';
