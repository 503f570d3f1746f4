// The native engine behind the Engine interface: this package's format engine, no QEMU. Each
// operation is a request (protocol.ts) run by an executor: a worker pool by default, so the
// caller's event loop never blocks on image I/O, or inline on the calling thread for a command
// line, which has nothing else to do and should not pay for starting a thread.

import type { CreateOptions, RawCreateOptions, ResolvedCreateOptions } from '../../model/options';
import type { ImageFacts } from '../../model/facts';
import type { AmendRequest } from '../../rules/types';
import type { CreateBehaviour } from '../../rules/create';
import type { CheckResult } from '../../qcow2/ops/check';
import type { MapEntry } from '../../qcow2/ops/map';
import type { Engine, FileStat, ImportOptions, ImportSource, ProgressFn, ReadOptions, RebaseOptions, RemoveOptions, ResizeOptions } from '../engine';
import type { ConnectionArgs } from '../../transport/ssh/connection';
import type { OpCall, TargetDescriptor } from './protocol';

/** Runs a request somewhere and resolves with its result (errors as Qcow2Error). */
export type Executor = (target: TargetDescriptor, call: OpCall, progress?: ProgressFn) => Promise<unknown>;

export interface NativeEngineOptions {
  /**
   * 'worker' (default): a shared pool of worker threads. 'inline': on the calling thread (blocks
   * it); a remote host's files are always worked on in a worker.
   */
  executor?: 'worker' | 'inline' | Executor;
  /** The file system the paths are on (default: local files; see `connection`). */
  target?: TargetDescriptor;
  /** A remote host the paths are on, reached over SSH (its files through SFTP). */
  connection?: ConnectionArgs;
}

/** The target of a remote host: its connection kept in this process under an id (no secret in the descriptor). */
export async function sshTarget(connection: ConnectionArgs): Promise<TargetDescriptor> {
  const { remoteFs } = await import('../../transport/ssh/remote-fs');
  const fs = remoteFs(connection);
  fs.prepare(); // the connection comes up while a worker starts
  return { kind: 'ssh', id: fs.id, label: fs.label };
}

// Each executor loads its machinery on first use: a command line running inline never loads the
// pool (nor worker_threads), a provider never loads the dispatcher on its own thread.
function executorOf(kind: NativeEngineOptions['executor']): Executor {
  if (typeof kind === 'function') return kind;
  if (kind === 'inline') {
    return async (target, call, progress) => (await import('./dispatch')).runOp(target, call, progress);
  }
  return async (target, call, progress) => (await import('./pool')).sharedPool().run(target, call, progress);
}

export class NativeEngine implements Engine {
  readonly name = 'native' as const;
  private readonly exec: Executor;
  /** Runs what involves a remote host when `exec` runs on the calling thread. */
  private readonly remoteExec: Executor;
  private target: TargetDescriptor | Promise<TargetDescriptor>;

  constructor(options: NativeEngineOptions = {}) {
    const connection = options.connection;
    // A connection is validated and registered on first use (ssh2 is loaded only then).
    this.target = options.target ?? (connection !== undefined ? { kind: 'ssh', id: '', label: '' } : { kind: 'local' });
    if (options.target === undefined && connection !== undefined) {
      const p = sshTarget(connection);
      p.catch(() => undefined); // reported by the first operation
      this.target = p;
    }
    this.exec = executorOf(options.executor);
    // The bridge that serves a remote host's files needs this thread's event loop free.
    this.remoteExec = options.executor === 'inline' ? executorOf('worker') : this.exec;
  }

  private async run<T>(call: OpCall, progress?: ProgressFn): Promise<T> {
    const target = await this.target;
    const remote = target.kind !== 'local' || (call.op === 'import' && call.sourceTarget !== undefined && call.sourceTarget.kind !== 'local');
    return (remote ? this.remoteExec : this.exec)(target, call, progress) as Promise<T>;
  }

  async create(path: string, options: CreateOptions, behaviour: CreateBehaviour = {}): Promise<void> {
    await this.run({ op: 'create', path, options, behaviour });
  }

  async createRaw(path: string, options: RawCreateOptions): Promise<void> {
    await this.run({ op: 'createRaw', path, options });
  }

  resolveCreate(path: string, options: CreateOptions, behaviour: CreateBehaviour = {}): Promise<ResolvedCreateOptions> {
    return this.run({ op: 'resolveCreate', path, options, behaviour });
  }

  async import(path: string, options: CreateOptions, source: ImportSource, opts: ImportOptions = {}): Promise<void> {
    const { host, ...file } = source;
    const call: OpCall = { op: 'import', path, options, source: file };
    if (host !== undefined) call.sourceTarget = host === 'local' ? { kind: 'local' } : await sshTarget(host);
    // A local source read into a remote image still runs in a worker (the remote side needs the bridge).
    await this.run(call, opts.progress);
  }

  async amend(path: string, request: AmendRequest): Promise<void> {
    await this.run({ op: 'amend', path, request });
  }

  async resize(path: string, size: bigint | { relative: bigint }, options: ResizeOptions = {}): Promise<void> {
    await this.run({ op: 'resize', path, size, options });
  }

  async rebase(path: string, backingFile: string, backingFormat?: string, options: RebaseOptions = {}): Promise<void> {
    const call: OpCall = { op: 'rebase', path, backingFile, safe: options.safe ?? false };
    if (backingFormat !== undefined) call.backingFormat = backingFormat;
    await this.run(call, options.progress);
  }

  info(path: string, options: ReadOptions = {}): Promise<ImageFacts> {
    return this.run({ op: 'info', path, options });
  }

  check(path: string, options: ReadOptions = {}): Promise<CheckResult> {
    return this.run({ op: 'check', path, options });
  }

  map(path: string, options: ReadOptions = {}): Promise<MapEntry[]> {
    return this.run({ op: 'map', path, options });
  }

  async remove(path: string, options: RemoveOptions = {}): Promise<void> {
    await this.run({ op: 'remove', path, options });
  }

  stat(path: string): Promise<FileStat | undefined> {
    return this.run({ op: 'stat', path });
  }
}
