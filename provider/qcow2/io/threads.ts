// Starting this package's worker threads: the compiled .js beside the caller, or (running from
// the TypeScript sources, as the tests do) the .ts through ts-node with the repository's
// tsconfig. Shared by the native engine's pool and the format engine's cluster decoders.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Worker, WorkerOptions } from 'worker_threads';

/** Start the worker whose module is `base` (no extension) in folder `dir`; `options` as Worker's (workerData, transferList). */
export function startWorker(dir: string, base: string, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  // Loaded here, not at the top: a program that runs inline never loads worker_threads.
  const { Worker: WorkerClass } = require('worker_threads') as typeof import('worker_threads');
  const js = path.join(dir, `${base}.js`);
  if (fs.existsSync(js)) return new WorkerClass(js, options);
  const ts = path.join(dir, `${base}.ts`);
  // The repository's tsconfig, whatever the working directory is.
  let root = dir;
  while (!fs.existsSync(path.join(root, 'tsconfig.json')) && path.dirname(root) !== root) root = path.dirname(root);
  const tsNode = require.resolve('ts-node');
  const code = `require(${JSON.stringify(tsNode)}).register({ transpileOnly: true, project: ${JSON.stringify(path.join(root, 'tsconfig.json'))} }); require(${JSON.stringify(ts)});`;
  return new WorkerClass(code, { ...options, eval: true });
}

/** The machine's parallelism (cores the process may use). */
export function cores(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}
