// A small pool of worker threads that run native-engine operations off the caller's event loop
// (the dynamic-provider host must keep answering while a large create writes gigabytes).
//
// - Size: QCOW2_WORKERS, else the machine's parallelism clamped to 2..4. Operations are mostly
//   synchronous file I/O; more threads than that only queue on the same disks.
// - Operations on a remote host wait on the network, not on this machine: they run in a lane of
//   their own, QCOW2_REMOTE_WORKERS (default 10, Pulumi's default parallelism) at once, beside
//   the local ones, so ten Reads of remote images overlap their round trips.
// - Workers start on demand and are reused. When a task takes the last idle worker, one more is
//   started (up to the size), so a short read arriving during a long write finds a warm thread.
// - Idle workers are unref'd: they never keep a process alive.
// - A worker that dies fails its task with an IO error and is replaced on the next demand.

import type { Worker } from 'worker_threads';
import { Qcow2Error } from '../../model/errors';
import type { ProgressFn } from '../../qcow2/guest/source';
import { errorFromData } from '../../model/errors';
import { cores, startWorker } from '../../qcow2/io/threads';
import type { OpCall, OpReply, OpRequest, TargetDescriptor } from './protocol';
import { BridgeHandler, BridgeHost, createBridge } from '../../transport/bridge';
import { REMOTE_FS_METHODS } from '../../transport/remote/protocol';

interface Task {
  id: number;
  request: OpRequest;
  progress?: ProgressFn;
  resolve(value: unknown): void;
  reject(e: Error): void;
}

interface Slot {
  worker: Worker;
  task?: Task;
  /** The main thread's end of the worker's bridge (remote targets' file access). */
  bridge: BridgeHost;
}

/**
 * The bridge handlers a worker's remote file access calls: the SSH side is loaded on the first
 * call, so a process that only ever works on local files never loads it.
 */
function remoteHandlers(): Record<string, BridgeHandler> {
  let served: Promise<Record<string, BridgeHandler>> | undefined;
  const serve = () => (served ??= import('../../transport/ssh/remote-fs').then((m) => m.remoteFsHandlers()));
  return Object.fromEntries(REMOTE_FS_METHODS.map((m) => [m, async (args: unknown[], input: Uint8Array | undefined) => (await serve())[m]!(args, input)]));
}

/** The pool size: QCOW2_WORKERS, else the machine's parallelism clamped to 2..4. */
export function defaultPoolSize(): number {
  const env = Number(process.env.QCOW2_WORKERS);
  if (Number.isInteger(env) && env >= 1) return env;
  return Math.min(4, Math.max(2, cores()));
}

/** Concurrent operations on remote hosts: QCOW2_REMOTE_WORKERS, else 10. */
export function defaultRemoteLane(): number {
  const env = Number(process.env.QCOW2_REMOTE_WORKERS);
  return Number.isInteger(env) && env >= 1 ? env : 10;
}

/** True when an operation's files are on another host (its worker mostly waits on the network). */
function remote(t: Task): boolean {
  const { target, call } = t.request;
  return target.kind !== 'local' || (call.op === 'import' && call.sourceTarget !== undefined && call.sourceTarget.kind !== 'local');
}

export class WorkerPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Task[] = [];
  private nextId = 1;
  private closed = false;

  constructor(readonly size: number = defaultPoolSize(), readonly remoteLane: number = defaultRemoteLane()) {}

  /** Run one operation on a worker; progress callbacks arrive on this thread. */
  run(target: TargetDescriptor, call: OpCall, progress?: ProgressFn): Promise<unknown> {
    if (this.closed) return Promise.reject(new Qcow2Error('IO', 'The native engine is closed'));
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const task: Task = { id, request: { id, target, call, progress: progress !== undefined }, resolve, reject };
      if (progress) task.progress = progress;
      this.queue.push(task);
      this.pump();
    });
  }

  /** Workers started so far (for tests and diagnostics). */
  get started(): number {
    return this.slots.length;
  }

  /** Stop every worker; queued and running tasks fail. */
  async close(): Promise<void> {
    this.closed = true;
    const err = new Qcow2Error('IO', 'The native engine was closed before the operation finished');
    for (const t of this.queue.splice(0)) t.reject(err);
    await Promise.all(this.slots.splice(0).map((s) => {
      s.task?.reject(err);
      s.bridge.close();
      return s.worker.terminate();
    }));
  }

  private pump(): void {
    if (this.closed) return;
    // In order, each task whose lane (local or remote) has room: a full lane holds back only its own.
    for (let i = 0; i < this.queue.length;) {
      const task = this.queue[i]!;
      const lane = remote(task);
      const busy = this.slots.filter((s) => s.task !== undefined && remote(s.task) === lane).length;
      let slot = busy < (lane ? this.remoteLane : this.size) ? this.slots.find((s) => s.task === undefined) : undefined;
      if (slot === undefined && busy < (lane ? this.remoteLane : this.size) && this.slots.length < this.size + this.remoteLane) slot = this.spawn();
      if (slot === undefined) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      slot.task = task;
      slot.worker.ref();
      slot.worker.postMessage(task.request);
    }
    // Keep one warm spare while there is room: the next short task need not wait for a start.
    if (!this.slots.some((s) => s.task === undefined) && this.slots.length < this.size) this.spawn();
  }

  private spawn(): Slot {
    const bridge = createBridge(remoteHandlers(), { initialBytes: 64 * 1024 });
    bridge.host.unref();
    const worker = startWorker(__dirname, 'worker', 'engines/native', { workerData: { bridge: bridge.endpoint }, transferList: bridge.transferList });
    const slot: Slot = { worker, bridge: bridge.host };
    worker.on('message', (m: OpReply) => this.onReply(slot, m));
    const fail = (why: string) => {
      slot.bridge.close();
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      const t = slot.task;
      slot.task = undefined;
      t?.reject(new Qcow2Error('IO', `The native engine's worker thread stopped (${why}) during ${t.request.call.op} of '${t.request.call.path}'`, { file: t.request.call.path }));
      this.pump();
    };
    worker.on('error', (e) => fail(e instanceof Error ? e.message : (require('util') as typeof import('util')).inspect(e)));
    worker.on('exit', (code) => fail(`exit code ${code}`)); // (an idle worker retiring fails nothing)
    worker.unref(); // after the listeners: adding one refs the worker's port again
    this.slots.push(slot);
    return slot;
  }

  private onReply(slot: Slot, m: OpReply): void {
    const t = slot.task;
    if (t === undefined || t.id !== m.id) return;
    if (m.kind === 'progress') {
      t.progress?.(m.done, m.total);
      return;
    }
    slot.task = undefined;
    slot.worker.unref();
    if (m.kind === 'result') t.resolve(m.value);
    else t.reject(errorFromData(m.error));
    this.pump();
  }
}

let shared: WorkerPool | undefined;

/** The process-wide pool the native engine uses by default. */
export function sharedPool(): WorkerPool {
  shared ??= new WorkerPool();
  return shared;
}
