// Small things several suites need: run in a folder, a seeded PRNG, stop a process we started.

import { spawnSync } from 'child_process';
import * as fs from 'fs';

/** Run `fn` with the working directory set to `dir` (relative names resolve there, as in qemu-img). */
export function inDir<T>(dir: string, fn: () => T): T {
  const prev = process.cwd();
  process.chdir(dir);
  try {
    return fn();
  } finally {
    process.chdir(prev);
  }
}

/** mulberry32: a small seeded PRNG, so random sequences are reproducible from their seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Whether a pid is running (a zombie counts as stopped: PID 1 here may not reap it). */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Stop a process we started (by its pid): SIGTERM, then SIGKILL after 3 s. */
export function stopProcess(pid: number): void {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + 3000;
  while (alive(pid) && Date.now() < deadline) spawnSync('sleep', ['0.02']);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
