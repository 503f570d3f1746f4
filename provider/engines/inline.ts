// The native engine on the calling thread: the command line's engine (a command has nothing else
// to do, and starting a worker thread would cost more than most commands). It reaches neither the
// worker pool nor the qemu-img engine, so the command line loads, and its bundle holds, only what
// it runs.

import type { Engine } from './engine';
import { NativeEngine } from './native/engine';
import type { TargetDescriptor } from './native/protocol';

export function inlineEngine(target?: TargetDescriptor): Engine {
  return new NativeEngine(async (t, call, progress) => (await import('./native/dispatch')).runOp(t, call, progress), target);
}
