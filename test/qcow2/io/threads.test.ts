// Where a worker thread's module is found: beside its caller, or, from the command line's bundle
// (every bundled module's __dirname is the bundle's folder), at its place in the compiled tree.
// Without the second, the bundled `qcow2 convert` started its decoders from the TypeScript
// sources through ts-node (seconds of start-up and tens of MiB per thread), or not at all in an
// installed package.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, describe, expect, it } from 'vitest';
import { workerModule } from '../../../provider/qcow2/io/threads';

const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true }); });

function tree(files: string[]): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-threads-'));
  dirs.push(root);
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
    fs.writeFileSync(path.join(root, f), '');
  }
  return root;
}

describe('workerModule', () => {
  it('finds the compiled module beside its caller', () => {
    const root = tree(['dist/provider/qcow2/io/codec-worker.js']);
    const io = path.join(root, 'dist/provider/qcow2/io');
    expect(workerModule(io, 'codec-worker', 'qcow2/io')).toBe(path.join(io, 'codec-worker.js'));
  });

  it('finds it at its place in the compiled tree when the caller is the bundle in dist/provider/cli', () => {
    const root = tree(['dist/provider/cli/qcow2-bundle.js', 'dist/provider/qcow2/io/codec-worker.js', 'dist/provider/engines/native/worker.js']);
    const cli = path.join(root, 'dist/provider/cli');
    expect(workerModule(cli, 'codec-worker', 'qcow2/io')).toBe(path.join(root, 'dist/provider/qcow2/io/codec-worker.js'));
    expect(workerModule(cli, 'worker', 'engines/native')).toBe(path.join(root, 'dist/provider/engines/native/worker.js'));
  });

  it('finds none among the TypeScript sources (they run through ts-node)', () => {
    const root = tree(['provider/qcow2/io/codec-worker.ts', 'provider/cli/main.ts']);
    expect(workerModule(path.join(root, 'provider/qcow2/io'), 'codec-worker', 'qcow2/io')).toBeUndefined();
    expect(workerModule(path.join(root, 'provider/cli'), 'codec-worker', 'qcow2/io')).toBeUndefined();
  });
});
