// The engine the command line drives: the native engine, run on the calling thread (a command
// has nothing else to do, and starting a worker thread would cost more than most commands).

import type { Engine } from '../engines/engine';
import { inlineEngine } from '../engines/inline';

export function cliEngine(): Engine {
  return inlineEngine();
}
