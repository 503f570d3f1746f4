// Starting this package's worker threads: the compiled .js beside the caller, or (running from
// the TypeScript sources, as the tests do) the .ts through ts-node with the repository's
// tsconfig. Shared by the native engine's pool and the format engine's cluster decoders.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Worker, WorkerOptions } from 'worker_threads';

/**
 * The compiled module of worker `base` (no extension), whose place in the package is `home`
 * (its folder under provider/, e.g. 'qcow2/io'): beside the caller (`dir`), or, when the caller
 * is the command line's bundle (dist/provider/cli/qcow2-bundle.js, where every module's
 * __dirname is the bundle's folder), at `home` in the compiled tree. Undefined when there is
 * none (running from the TypeScript sources).
 */
export function workerModule(dir: string, base: string, home: string): string | undefined {
  const beside = path.join(dir, `${base}.js`);
  if (fs.existsSync(beside)) return beside;
  for (let d = dir; path.dirname(d) !== d; d = path.dirname(d)) {
    if (path.basename(d) !== 'provider') continue;
    const js = path.join(d, home, `${base}.js`);
    return fs.existsSync(js) ? js : undefined;
  }
  return undefined;
}

/**
 * Start the worker whose module is `base` (no extension) in folder `dir`, at `home` under
 * provider/ (see workerModule); `options` as Worker's (workerData, transferList).
 */
export function startWorker(dir: string, base: string, home: string, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  // Loaded here, not at the top: a program that runs inline never loads worker_threads.
  const { Worker: WorkerClass } = require('worker_threads') as typeof import('worker_threads');
  const js = workerModule(dir, base, home);
  if (js !== undefined) return new WorkerClass(js, options);
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
