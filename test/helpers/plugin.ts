// A Pulumi plugin process as the CLI starts one (the dynamic-provider host, run-policy-pack):
// node runs its entry point, which prints the port of its gRPC server on the first line.

import { ChildProcess, spawn } from 'child_process';

export interface Plugin {
  child: ChildProcess;
  port: number;
  /** Everything the plugin has written to stderr so far. */
  stderr(): string;
}

/**
 * Start `node <args>` in `cwd` and wait for the port it prints. No deadline of our own (a loaded
 * machine must not fail a test): a plugin that never prints its port is caught by the test's timeout.
 */
export async function startPlugin(what: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<Plugin> {
  const child = spawn(process.execPath, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (!out.includes('\n')) return;
      const line = out.split('\n')[0]!.trim();
      if (/^\d+$/.test(line)) resolve(Number(line));
      else reject(new Error(`${what} printed ${JSON.stringify(out)} instead of its port: ${stderr}`));
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`${what} exited with ${code}: ${stderr}`)));
  });
  return { child, port, stderr: () => stderr };
}
