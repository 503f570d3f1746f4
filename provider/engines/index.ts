// Engine selection: "native" (default) or "qemu-img".

import type { Engine, EngineName } from './engine';
import { Qcow2Error } from '../model/errors';

export function getEngine(name: EngineName = 'native'): Engine {
  switch (name) {
    case 'native': {
      const { NativeEngine } = require('./native/engine') as typeof import('./native/engine');
      return new NativeEngine();
    }
    case 'qemu-img': {
      // Loaded on demand: the qemu-img engine is only needed by those who choose it.
      const mod = require('./qemuimg/engine') as { QemuImgEngine: new () => Engine };
      return new mod.QemuImgEngine();
    }
    default:
      throw new Qcow2Error('INVALID_OPTION', `Unknown engine '${String(name)}': use "native" or "qemu-img"`, { property: 'engine' });
  }
}

export type { Engine, EngineName, ImageInfo } from './engine';
