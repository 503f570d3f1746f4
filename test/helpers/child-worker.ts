// A child process that answers one request at a time over IPC, for tests that must observe a
// hang or a runaway allocation rather than suffer it: a request not answered by the deadline, or
// a child that dies, is reported as a crash and the child replaced, so the run goes on.

import type { ChildProcess } from 'node:child_process';

export type Answer<R> = R | { crash: string };

export class ChildWorker<R extends { id: number }> {
  private child?: ChildProcess;
  private waiting?: { id: number; resolve: (v: Answer<R>) => void; timer: NodeJS.Timeout };
  private nextId = 0;
  /** The child's last words on stderr (for the crash report). */
  stderr = '';
  restarts = 0;

  /** `spawn` starts a child that sends one message when ready, then answers `{ id, ... }` per request. */
  constructor(private readonly spawn: () => ChildProcess, private readonly deadlineMs: number) {}

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
    clearTimeout(w.timer);
    this.waiting = undefined;
    w.resolve(v);
  }

  /** Send `request` (an id is added); a crash or a missed deadline replaces the child. */
  async run(request: object): Promise<Answer<R>> {
    const id = ++this.nextId;
    const v = await new Promise<Answer<R>>((resolve) => {
      const timer = setTimeout(() => this.settle(id, { crash: `no answer within ${this.deadlineMs} ms (hang)` }), this.deadlineMs);
      this.waiting = { id, resolve, timer };
      this.child!.send({ ...request, id });
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
