// A child process that answers one request at a time over IPC, for tests that must observe a
// hang or a runaway allocation rather than suffer it: a request not answered in time, or a child
// that dies, is reported as a crash and the child replaced, so the run goes on.
//
// "In time" is either CPU time the child spends without answering (for calls that only compute:
// load on the machine cannot inflate it) or, for calls that wait on other processes, elapsed time
// long enough to tell a hang from a slow case.

import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

export type Answer<R> = R | { crash: string };

/** When a request counts as hung. */
export type HangWatch =
  | { /** elapsed time without an answer */ wallMs: number }
  | { /** CPU time (user + system) the child spends without answering; read from /proc every pollMs */ cpuMs: number; pollMs?: number };

/** CPU time (user + system) a process has used, in ms, from /proc (Linux); undefined elsewhere. */
export function cpuMsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // clock ticks: USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

export class ChildWorker<R extends { id: number }> {
  private child?: ChildProcess;
  private waiting?: { id: number; resolve: (v: Answer<R>) => void; timer?: NodeJS.Timeout };
  private nextId = 0;
  /** The child's last words on stderr (for the crash report). */
  stderr = '';
  restarts = 0;

  /**
   * `spawn` starts a child that sends one message when ready, then answers `{ id, ... }` per request.
   * With a CPU watch where /proc is missing, nothing is watched and the test's own timeout catches a hang.
   */
  constructor(private readonly spawn: () => ChildProcess, private readonly hang: HangWatch) {}

  /** Resolves with the child's ready message. */
  async start(): Promise<unknown> {
    const child = this.spawn();
    this.child = child;
    child.stderr?.on('data', (d: Buffer) => { this.stderr = (this.stderr + d.toString()).slice(-4000); });
    const hello = await new Promise<unknown>((resolve, reject) => {
      child.once('message', resolve);
      child.once('exit', (code) => reject(new Error(`child exited (${code}) before it was ready: ${this.stderr}`)));
    });
    child.on('message', (m: R) => this.settle(m.id, m));
    child.on('exit', (code, signal) => {
      const oom = /heap out of memory/.test(this.stderr) ? ' (JavaScript heap out of memory)' : '';
      this.settle(undefined, { crash: `child died: code ${code} signal ${signal}${oom}: ${this.stderr.slice(-800)}` });
    });
    return hello;
  }

  private settle(id: number | undefined, v: Answer<R>): void {
    const w = this.waiting;
    if (!w || (id !== undefined && id !== w.id)) return;
    if (w.timer) clearInterval(w.timer); // clears a timeout too
    this.waiting = undefined;
    w.resolve(v);
  }

  /** Send `request` (an id is added); a crash or a missed deadline replaces the child. */
  async run(request: object): Promise<Answer<R>> {
    const id = ++this.nextId;
    const child = this.child!;
    const v = await new Promise<Answer<R>>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      if ('wallMs' in this.hang) {
        const { wallMs } = this.hang;
        timer = setTimeout(() => this.settle(id, { crash: `no answer within ${wallMs} ms (hang)` }), wallMs);
      } else {
        const { cpuMs, pollMs = 250 } = this.hang;
        const start = cpuMsOf(child.pid!);
        if (start !== undefined) {
          timer = setInterval(() => {
            const used = (cpuMsOf(child.pid!) ?? start) - start;
            if (used > cpuMs) this.settle(id, { crash: `no answer after ${used.toFixed(0)} ms of CPU (hang)` });
          }, pollMs);
        }
      }
      this.waiting = { id, resolve, ...(timer ? { timer } : {}) };
      child.send({ ...request, id });
    });
    if ('crash' in v) {
      await this.stop();
      this.restarts++;
      await this.start();
    }
    return v;
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    child.removeAllListeners();
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    }
  }
}
