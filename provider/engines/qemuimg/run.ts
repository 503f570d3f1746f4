// Running qemu-img for the qemu-img engine: binary lookup, a cached version probe, and every
// invocation under resource limits and a wall-clock timeout, with an argument array (no shell
// ever parses a file name).
//
// Limits: `prlimit --as=BYTES --cpu=SECONDS -- qemu-img ...` (util-linux, as vdsm does for
// untrusted images). Without prlimit, a constant /bin/sh script sets the same limits with
// `ulimit -v/-t` and execs the command from its positional parameters: file names are only ever
// "$@" and are never parsed by the shell. Without either, only the timeout applies.

import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Qcow2Error } from '../../model/errors';

/** Resource limits of one qemu-img run. */
export interface Limits {
  /** Address-space limit (RLIMIT_AS), bytes. */
  addressSpace: number;
  /** CPU-time limit (RLIMIT_CPU), seconds; the kernel sends SIGXCPU, then SIGKILL. */
  cpuSeconds: number;
  /** Wall-clock timeout, milliseconds; the process is killed with SIGKILL. */
  timeoutMs: number;
}

/**
 * Defaults. `read` applies to commands that parse images we may not trust (info, check, the
 * version probe): vdsm's qemu-img info limits (1 GiB address space, 30 s CPU). `write` applies
 * to create, amend, resize and rebase of images this engine manages: a 1 TiB data-file-raw
 * create writes 134 MB of L2 tables and needs ~500 MiB of address space; a refcount rebuild of a
 * large image takes minutes of CPU.
 */
export const DEFAULT_LIMITS: Readonly<Record<'read' | 'write', Limits>> = {
  read: { addressSpace: 1 << 30, cpuSeconds: 30, timeoutMs: 60_000 },
  write: { addressSpace: 4 * (1 << 30), cpuSeconds: 1800, timeoutMs: 3_600_000 },
};

export const INSTALL_HINT = 'Install it with: apt-get install -y qemu-utils (Debian/Ubuntu; dnf install qemu-img on Fedora/RHEL), ' +
  'or point the engine at a binary with the QEMU_IMG environment variable';

export const MIN_VERSION: readonly [number, number, number] = [7, 2, 0];

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The wall-clock timeout killed the process. */
  timedOut: boolean;
}

/** Find an executable: a name with a slash as given, else on PATH. undefined when absent. */
export function findExecutable(name: string): string | undefined {
  const isExec = (p: string) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (name.includes('/')) return isExec(name) ? path.resolve(name) : undefined;
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(path.delimiter)) {
    if (dir === '') continue;
    const p = path.join(dir, name);
    if (isExec(p)) return p;
  }
  return undefined;
}

let limiter: { kind: 'prlimit' | 'sh' | 'none'; path?: string } | undefined;

/** How limits are applied here (probed once). */
export function limitMechanism(): { kind: 'prlimit' | 'sh' | 'none'; path?: string } {
  if (limiter === undefined) {
    const pl = findExecutable('prlimit');
    if (pl !== undefined) limiter = { kind: 'prlimit', path: pl };
    else if (findExecutable('/bin/sh') !== undefined) limiter = { kind: 'sh', path: '/bin/sh' };
    else limiter = { kind: 'none' };
  }
  return limiter;
}

/** The argv that runs `bin args` under `limits` (no shell parses bin or args). */
export function limitedArgv(bin: string, args: readonly string[], limits: Limits, m = limitMechanism()): [string, string[]] {
  const as = Math.max(1, Math.floor(limits.addressSpace));
  const cpu = Math.max(1, Math.ceil(limits.cpuSeconds));
  if (m.kind === 'prlimit') return [m.path!, [`--as=${as}`, `--cpu=${cpu}`, '--', bin, ...args]];
  if (m.kind === 'sh') {
    // Constant script; the values and the command arrive as positional parameters.
    const script = 'ulimit -v "$1" && ulimit -t "$2" && shift 2 && exec "$@"';
    return [m.path!, ['-c', script, 'qemu-img-limits', String(Math.max(1, Math.floor(as / 1024))), String(cpu), bin, ...args]];
  }
  return [bin, [...args]];
}

/** Spawn (argument array, C locale) under limits; collects output; never throws for a non-zero exit. */
export function runLimited(bin: string, args: readonly string[], limits: Limits, cwd?: string): Promise<RunResult> {
  const [file, argv] = limitedArgv(bin, args, limits);
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, {
      cwd: cwd ?? process.cwd(),
      env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, limits.timeoutMs);
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
  });
}

export interface QemuImgBinary {
  path: string;
  version: [number, number, number];
  versionText: string;
}

const probes = new Map<string, Promise<QemuImgBinary>>();

/** Forget cached probes (tests). */
export function clearVersionCache(): void {
  probes.clear();
}

/**
 * Locate qemu-img and check that it is 7.2 or newer; cached per binary name. NOT_FOUND when
 * it is not installed, UNSUPPORTED when it is older or unrecognisable, both saying how to install it.
 */
export function probeQemuImg(name: string): Promise<QemuImgBinary> {
  let p = probes.get(name);
  if (p === undefined) {
    p = doProbe(name);
    probes.set(name, p);
    // A failed probe is not cached: installing qemu-utils must not need a restart.
    p.catch(() => probes.delete(name));
  }
  return p;
}

async function doProbe(name: string): Promise<QemuImgBinary> {
  const bin = findExecutable(name);
  if (bin === undefined) {
    throw new Qcow2Error('NOT_FOUND', `qemu-img not found ('${name}' is not an executable${name.includes('/') ? '' : ' on PATH'}): ` +
      `the qemu-img engine needs qemu-img ${MIN_VERSION.slice(0, 2).join('.')} or newer. ${INSTALL_HINT}`, { file: name });
  }
  let r: RunResult;
  try {
    r = await runLimited(bin, ['--version'], DEFAULT_LIMITS.read);
  } catch (e) {
    throw new Qcow2Error('NOT_FOUND', `Could not run '${bin}': ${(e as Error).message}. ${INSTALL_HINT}`, { file: bin, cause: e });
  }
  const m = /qemu-img version (\d+)\.(\d+)(?:\.(\d+))?/.exec(r.stdout);
  if (r.status !== 0 || m === null) {
    throw new Qcow2Error('UNSUPPORTED', `'${bin} --version' did not report a qemu-img version ` +
      `(exit ${r.status ?? r.signal}): ${(r.stdout + r.stderr).trim().split('\n')[0] ?? ''}. ${INSTALL_HINT}`, { file: bin });
  }
  const version: [number, number, number] = [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
  const text = version.join('.');
  if (compareVersions(version, MIN_VERSION) < 0) {
    throw new Qcow2Error('UNSUPPORTED', `qemu-img ${text} at '${bin}' is too old: the qemu-img engine needs ` +
      `${MIN_VERSION.slice(0, 2).join('.')} or newer (its create, amend and locking behaviour). ${INSTALL_HINT}`, { file: bin });
  }
  return { path: bin, version, versionText: text };
}

export function compareVersions(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < 3; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
