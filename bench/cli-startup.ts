// bench/cli-startup: the CPU a short command costs. `qcow2 info IMG` (the executable, through
// its launcher, as a user runs it) against bare `node -e 0`, runs interleaved, both without
// NODE_EXTRA_CA_CERTS (which Node 20 parses at start-up and the launcher defers), each process
// reporting its own CPU time (user + system, getrusage: the launcher's shell is the same
// process) and what it loaded, through a preload both get (NODE_OPTIONS). The target: info costs
// at most the bare start-up + 15 ms of CPU, loads neither cli-progress nor any other dependency
// from node_modules (commander is bundled into the executable; test/architecture.test.ts checks
// that info's code does not reach it), and none of Node's heavy built-ins (child_process, net,
// tty, crypto, zlib, streams, fs/promises, worker_threads) with its output to a pipe.
//
//   npm run build && node dist/bench/cli-startup.js [runs]

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CLI, median } from './common';

const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 41);
const BUDGET_MS = 15;

interface Report { cpuMs: number; modules: string[]; builtins: string[] }

/** Node built-ins a short command should not load. */
const HEAVY_BUILTINS = new Set(['child_process', 'net', 'tty', 'crypto', 'zlib', 'stream', 'fs/promises', 'worker_threads']);

// Printed from the process's exit hook: its whole CPU time so far, what require() loaded, and
// the built-ins loaded after the preload.
const PRELOAD = `const before = new Set(process.moduleLoadList);
process.on('exit', () => {
  const u = process.cpuUsage();
  const builtins = process.moduleLoadList.filter((m) => !before.has(m) && m.startsWith('NativeModule ')).map((m) => m.slice(13));
  require('fs').writeSync(3, JSON.stringify({ cpuMs: (u.user + u.system) / 1000, modules: Object.keys(require.cache), builtins }));
});
`;

/** Run `argv` (an executable, or node's arguments) with the preload; its stdout is a pipe. */
function once(argv: string[], cwd: string, preload: string): Report {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: `--require ${preload}` };
  delete env.NODE_EXTRA_CA_CERTS;
  const [cmd, ...args] = argv[0] === CLI ? argv : [process.execPath, ...argv];
  const r = spawnSync(cmd!, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(String(r.output[3])) as Report;
}

function main(): number {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-startup-'));
  try {
    const preload = path.join(dir, 'report-cpu.js');
    fs.writeFileSync(preload, PRELOAD);
    const img = path.join(dir, 'img.qcow2');
    const made = spawnSync(CLI, ['create', '-q', img, '1G'], { encoding: 'utf8' });
    if (made.status !== 0) throw new Error(made.stderr);
    const bare: number[] = [], info: number[] = [];
    let last: Report | undefined;
    for (let i = 0; i < runs; i++) {
      bare.push(once(['-e', '0'], dir, preload).cpuMs);
      last = once([CLI, 'info', img], dir, preload);
      info.push(last.cpuMs);
    }
    const b = median(bare), n = median(info);
    const ours = last!.modules.filter((m) => !m.includes(`${path.sep}node_modules${path.sep}`) && m !== preload);
    const deps = [...new Set(last!.modules.filter((m) => m.includes(`${path.sep}node_modules${path.sep}`))
      .map((m) => m.split(`${path.sep}node_modules${path.sep}`).pop()!.split(path.sep).slice(0, 1).join('')))];
    console.log(`| command | median CPU ms (${runs} runs) |`);
    console.log('|---|---:|');
    console.log(`| node -e 0 | ${b.toFixed(1)} |`);
    console.log(`| qcow2 info | ${n.toFixed(1)} |`);
    console.log(`| difference | ${(n - b).toFixed(1)} (budget ${BUDGET_MS}) |`);
    console.log(`\nqcow2 info loads ${ours.length} modules of this package; dependencies: ${deps.join(', ') || 'none'}`);
    const builtins = last!.builtins.filter((m) => HEAVY_BUILTINS.has(m));
    console.log(`Node built-ins it loads beyond node -e 0's: ${last!.builtins.join(', ') || 'none'}`);
    const heavy = [...deps, ...builtins];
    if (heavy.length) console.log(`NOT MET: info loads ${heavy.join(', ')}`);
    return n - b <= BUDGET_MS && heavy.length === 0 ? 0 : 1;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = main();
