// Runs qemu-iotests' own `check -qcow2` on a list of tests, with the qcow2 command line in place of
// qemu-img (mode 'ours', through ./qemu-img) or with the real qemu-img everywhere (mode 'real'),
// and reads the result of every test from check's TAP output.

import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { IotestsSource } from './sources';

export const repoRoot = path.resolve(__dirname, '..', '..');
const here = __dirname;

/** The committed lists: test names separated by white space, `#` to the end of a line a comment. */
export const lists = {
  /** qcow2 tests that need no qemu-system and pass with the real qemu-img. */
  qcow2: path.join(here, 'qcow2-tests.txt'),
  /** The subset run by the test suite (and so by CI). */
  ci: path.join(here, 'ci-tests.txt'),
};

export function readList(file: string): string[] {
  return fs.readFileSync(file, 'utf8').split('\n').flatMap((l) => l.replace(/#.*/, '').split(/\s+/)).filter(Boolean);
}

export type Mode = 'ours' | 'real';
export type Status = 'pass' | 'fail' | 'not run';

export interface TestOutcome {
  name: string;
  status: Status;
  /** Wall-clock seconds from check's start of the test to its result. */
  seconds: number;
  /** check's reason for a failure or a skip (exit status, output mismatch, notrun reason). */
  reason: string;
}

export interface RunResult {
  mode: Mode;
  outcomes: TestOutcome[];
  passed: string[];
  failed: string[];
  notRun: string[];
  /** check's diffs of the failing tests (reference output against ours). */
  diffs: string;
  seconds: number;
  /** The run's folder (scratch images, each failing test's NNN.out.bad); removed unless kept. */
  runDir: string;
  /**
   * Tests that had calls sent to the real qemu-img for one of our deliberate differences
   * (encryption, QEMU's test drivers), with why: mode 'ours' only.
   */
  routed: Map<string, string[]>;
}

export interface RunOptions {
  mode: Mode;
  tests: string[];
  source: IotestsSource;
  /** Parallel jobs for check (-j); 1 by default. */
  jobs?: number;
  /** Keep the run folder (images and outputs of failing tests). */
  keep?: boolean;
  /** Called with each test's outcome as it is known. */
  onOutcome?: (o: TestOutcome) => void;
  /** Stops check and everything it started (its process group). */
  signal?: AbortSignal;
}

/** A program on PATH, as an absolute path (never our own wrapper). */
export function findProgram(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir || path.resolve(dir) === here) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What the harness cannot run without, each with the way to get it. */
export function missingPrerequisites(mode: Mode): string[] {
  const missing: string[] = [];
  for (const p of ['qemu-img', 'qemu-io', 'qemu-nbd']) {
    if (!findProgram(p)) missing.push(`${p} (apt-get install qemu-utils)`);
  }
  if (!findProgram('python3')) missing.push('python3, which runs qemu-iotests\' check (apt-get install python3)');
  if (mode === 'ours' && !fs.existsSync(path.join(repoRoot, 'dist', 'provider', 'cli', 'main.js'))) {
    missing.push('dist/provider/cli/main.js (npm run build)');
  }
  return missing;
}

/** Environment for check: the programs it runs, our wrapper's settings, a scratch folder. */
function checkEnv(mode: Mode, runDir: string): NodeJS.ProcessEnv {
  const realImg = findProgram('qemu-img')!;
  const stub = path.join(here, 'qemu-system-stub');
  return {
    ...process.env,
    QEMU_PROG: stub,
    QEMU_IMG_PROG: mode === 'ours' ? path.join(here, 'qemu-img') : realImg,
    QEMU_IO_PROG: findProgram('qemu-io')!,
    QEMU_NBD_PROG: findProgram('qemu-nbd')!,
    // Only a few tests use the storage daemon; check insists on a path all the same.
    QSD_PROG: findProgram('qemu-storage-daemon') ?? stub,
    TEST_DIR: path.join(runDir, 'scratch'),
    IOTESTS_REAL_QEMU_IMG: realImg,
    IOTESTS_NODE: process.execPath,
    IOTESTS_QCOW2_CLI: path.join(repoRoot, 'dist', 'provider', 'cli', 'main.js'),
    IOTESTS_AS_QEMU_IMG: path.join(here, 'as-qemu-img.js'),
    IOTESTS_ROUTE_LOG: routeLog(runDir),
  };
}

function routeLog(runDir: string): string {
  return path.join(runDir, 'routed.log');
}

/** The wrapper's log of routed calls ("<test> <why>" a line), as why's by test. */
function readRouted(runDir: string): Map<string, string[]> {
  const routed = new Map<string, string[]>();
  let text = '';
  try {
    text = fs.readFileSync(routeLog(runDir), 'utf8');
  } catch {
    return routed; // no call was routed
  }
  for (const line of text.split('\n')) {
    const m = /^(\S+) (.+)$/.exec(line);
    if (!m) continue;
    const whys = routed.get(m[1]) ?? [];
    if (!whys.includes(m[2])) whys.push(m[2]);
    routed.set(m[1], whys);
  }
  return routed;
}

/**
 * Run check on `tests`. check is started through a symlink in a private run folder, as from a
 * build tree: its state (.last-elapsed-cache, scratch) stays out of the cached source.
 */
export function runIotests(opts: RunOptions): Promise<RunResult> {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), `qcow2-iotests-${opts.mode}-`));
  fs.symlinkSync(path.join(opts.source.dir, 'tests', 'qemu-iotests', 'check'), path.join(runDir, 'check'));
  const args = [path.join(runDir, 'check'), '-qcow2', '-tap', '-j', String(opts.jobs ?? 1), ...opts.tests];
  const started = process.hrtime.bigint();
  const outcomes: TestOutcome[] = [];
  const startOf = new Map<string, bigint>();
  let diffs = '';
  let pending = '';
  let header = '';

  const onLine = (line: string) => {
    let m = /^# running qcow2 (\S+)$/.exec(line);
    if (m) {
      startOf.set(m[1], process.hrtime.bigint());
      return;
    }
    m = /^(ok|not ok) qcow2 (\S+)(?: # SKIP)?$/.exec(line);
    if (!m) {
      if (!outcomes.length && !startOf.size) header += line + '\n';
      return;
    }
    const name = m[2];
    const status: Status = m[1] === 'not ok' ? 'fail' : line.endsWith('# SKIP') ? 'not run' : 'pass';
    const t0 = startOf.get(name) ?? started;
    const o: TestOutcome = { name, status, seconds: Number(process.hrtime.bigint() - t0) / 1e9, reason: '' };
    outcomes.push(o);
    opts.onOutcome?.(o);
  };

  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(findProgram('python3') ?? 'python3', args, {
      cwd: runDir,
      env: checkEnv(opts.mode, runDir),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, so an abort reaches the tests and their qemu-img
    });
    const abort = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    opts.signal?.addEventListener('abort', abort, { once: true });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop()!;
      lines.forEach(onLine);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => { diffs += chunk; });
    child.on('error', reject);
    child.on('close', (code) => {
      opts.signal?.removeEventListener('abort', abort);
      if (pending) onLine(pending);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      // check exits 1 when a test failed; anything else without results is check itself failing.
      if (outcomes.length === 0) {
        const why = (diffs || header).trim().split('\n').slice(-8).join('\n');
        stopLeftDaemons(runDir);
        detachMounts(runDir);
        removeRunDir(runDir);
        reject(new Error(`qemu-iotests check ran no test (exit ${code}):\n${why}`));
        return;
      }
      for (const o of outcomes) o.reason = reasonOf(runDir, o, opts.jobs ?? 1);
      const routed = readRouted(runDir);
      stopLeftDaemons(runDir);
      detachMounts(runDir);
      if (!opts.keep) removeRunDir(runDir);
      const named = (s: Status) => outcomes.filter((o) => o.status === s).map((o) => o.name);
      resolve({ mode: opts.mode, outcomes, passed: named('pass'), failed: named('fail'), notRun: named('not run'), diffs, seconds, runDir, routed });
    });
  });
}

/**
 * Detach what tests left mounted in the run folder: a failing FUSE-export test (108) can leave its
 * export mounted there. Lazily, and only root can; otherwise the folder stays, with a warning.
 */
function detachMounts(runDir: string): void {
  const real = fs.realpathSync(runDir);
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((m): m is string => m !== undefined && m.startsWith(real + path.sep));
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
}

/**
 * Stop daemons a test started and left running: 162 forks a qemu-nbd that only exits once a
 * client has come and gone, so when our CLI fails before connecting it stays, outside check's
 * process group. check has ended by now: what still names this run's folder on its command line
 * (the iotests' qemu-nbd wrapper passes --pid-file=$TEST_DIR/...) is such a daemon, stopped by pid.
 */
function stopLeftDaemons(runDir: string): void {
  for (const entry of fs.readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(runDir + path.sep)) process.kill(pid, 'SIGTERM');
    } catch {
      // gone, or not ours to read
    }
  }
}

function removeRunDir(runDir: string): void {
  try {
    fs.rmSync(runDir, { recursive: true, force: true });
  } catch (e) {
    console.warn(`iotests: could not remove ${runDir} (${(e as NodeJS.ErrnoException).code}): a test left a mount there`);
  }
}

/** Why a test failed or did not run, from the files check leaves in its scratch folder. */
function reasonOf(runDir: string, o: TestOutcome, jobs: number): string {
  const dir = jobs > 1 ? path.join(runDir, 'scratch', o.name) : path.join(runDir, 'scratch');
  if (o.status === 'not run') {
    try {
      return fs.readFileSync(path.join(dir, `${o.name}.notrun`), 'utf8').trim();
    } catch {
      return 'not run';
    }
  }
  return o.status === 'fail' ? (fs.existsSync(path.join(dir, `${o.name}.out.bad`)) ? 'output differs' : 'failed') : '';
}

/** The failures by name, then "iotests: N passed, N failed" (", N skipped" for tests check did not run). */
export function summary(r: RunResult): string {
  const lines = [`iotests with ${r.mode === 'ours' ? 'the qcow2 CLI as qemu-img' : 'the real qemu-img'}: ` +
    `${r.outcomes.length} tests in ${r.seconds.toFixed(0)} s`];
  if (r.failed.length) lines.push(`failed: ${r.failed.join(' ')}`);
  if (r.notRun.length) lines.push(`not run: ${r.notRun.join(' ')}`);
  const routedPasses = r.passed.filter((t) => r.routed.has(t));
  if (routedPasses.length) {
    lines.push(`passed with calls sent to the real qemu-img for a deliberate difference (${routedPasses.length}): ` +
      routedPasses.map((t) => `${t} (${r.routed.get(t)!.join(', ')})`).join('; '));
  }
  lines.push(`iotests: ${r.passed.length} passed, ${r.failed.length} failed${r.notRun.length ? `, ${r.notRun.length} skipped` : ''}`);
  return lines.join('\n');
}
