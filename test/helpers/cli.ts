// The built `qcow2` command line, run in this process: main() with its output captured (no Node
// start-up to pay), in a given working folder.

import * as path from 'path';

export const CLI = path.resolve(__dirname, '../../dist/provider/cli/main.js');

export interface CliRun { status: number; stdout: string; stderr: string }

export async function runCli(args: string[], cwd: string): Promise<CliRun> {
  const { main } = require(CLI) as { main(argv: string[], io: { out(t: string): void; err(t: string): void }): Promise<number> };
  const prev = process.cwd();
  let stdout = '', stderr = '';
  process.chdir(cwd);
  try {
    const status = await main(args, { out: (t) => { stdout += t; }, err: (t) => { stderr += t; } });
    return { status, stdout, stderr };
  } finally {
    process.chdir(prev);
  }
}
