// One scratch folder per `vitest run`, shared by the test files that need the packed package
// (test/harness/install.ts builds what they ask for there, once), removed at the end.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    harnessDir: string;
  }
}

export default function setup(project: TestProject): () => Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-run-'));
  project.provide('harnessDir', dir);
  // Asynchronous: removing the installs takes a while, and must not block vitest's main thread
  // while it shuts its workers down.
  return () => fs.promises.rm(dir, { recursive: true, force: true });
}
