// Another Node process that fetches one URL through the cache and prints what happened as JSON,
// for what only a separate process shows: NODE_EXTRA_CA_CERTS read at start, several processes
// sharing one cache. It loads the build (dist/) when that is newer than every source file, else
// the sources through ts-node (slower to start).

import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const REPO = path.resolve(__dirname, '../../..');

const CODE = `
const { fetchSource } = require(process.argv[1]);
const args = JSON.parse(process.argv[2]);
process.stderr.write('ready\\n');
fetchSource(args.url, { checksum: args.checksum, cache: { dir: args.cacheDir }, retryDelayMs: 0 }).then(
  async (s) => {
    await s.release();
    process.stdout.write(JSON.stringify({ path: s.path, size: s.size, fromCache: s.fromCache }));
  },
  (e) => process.stdout.write(JSON.stringify({ error: { code: e.code, message: e.message } })),
);
`;

function newest(dir: string): number {
  let t = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : e.name.endsWith('.ts') ? fs.statSync(p).mtimeMs : 0);
  }
  return t;
}

/** How the child loads the module: the build when it is current, else ts-node on the sources. */
function loader(): { execArgv: string[]; module: string } {
  const built = path.join(REPO, 'dist/provider/transport/http/index.js');
  if (fs.existsSync(built) && fs.statSync(built).mtimeMs >= newest(path.join(REPO, 'provider'))) return { execArgv: [], module: built };
  return {
    execArgv: ['--require', require.resolve('ts-node/register/transpile-only', { paths: [REPO] })],
    module: path.join(REPO, 'provider/transport/http/index.ts'),
  };
}

export interface ChildResult {
  path?: string;
  size?: number;
  fromCache?: boolean;
  error?: { code: string; message: string };
}

/**
 * Fetch in a new Node process whose environment is only `env` (plus PATH and HOME); `onReady`
 * is called when it has loaded the module and starts fetching.
 */
export function childFetch(args: { url: string; checksum: string; cacheDir: string }, env: NodeJS.ProcessEnv, onReady?: () => void): Promise<ChildResult> {
  const { execArgv, module } = loader();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...execArgv, '-e', CODE, module, JSON.stringify(args)], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, TS_NODE_PROJECT: path.join(REPO, 'tsconfig.json'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      if (!err.includes('ready\n') && (err + d.toString()).includes('ready\n')) onReady?.();
      err += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      try {
        resolve(JSON.parse(out) as ChildResult);
      } catch {
        reject(new Error(`child exited ${code}: ${err}`));
      }
    });
  });
}
