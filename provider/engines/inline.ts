// The native engine on the calling thread: the command line's engine (a command has nothing else
// to do, and starting a worker thread would cost more than most commands). It reaches neither the
// worker pool nor the qemu-img engine, so the command line loads, and its bundle holds, only what
// it runs.

import type { Engine } from './engine';
import { NativeEngine, type RemoteSupport } from './native/engine';
import type { TargetDescriptor } from './native/protocol';

/** @param remote how remote hosts are reached (engines/index.ts gives the pool and SSH); without it, local files only */
export function inlineEngine(target?: TargetDescriptor | Promise<TargetDescriptor>, remote?: RemoteSupport): Engine {
  return new NativeEngine(async (t, call, progress) => (await import('./native/dispatch')).runOp(t, call, progress), target, remote);
}
