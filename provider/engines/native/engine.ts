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
import type {
  BitmapAction, BitmapDump, BitmapOptions, BitmapResult, CommitOptions, CompareOptions, CompareResult, Dependents, Engine, FileStat, ImageChain, ImageRef, ImportOptions,
  ImportSource, ProgressFn, ReadOptions, RebaseOptions, RemoveOptions, RepairMode, RepairReport, ResizeOptions, SnapshotFacts,
} from '../engine';
import type { CommitRequest, SnapshotRequest } from '../../rules/types';
import type { ConnectionArgs } from '../../transport/ssh/connection';
import type { OpCall, TargetDescriptor } from './protocol';
import { Qcow2Error } from '../../model/errors';
import type { LocalImportSource } from './ops';

/** Runs a request somewhere and resolves with its result (errors as Qcow2Error). */
export type Executor = (target: TargetDescriptor, call: OpCall, progress?: ProgressFn) => Promise<unknown>;

export interface NativeEngineOptions {
  /**
   * 'worker' (default): a shared pool of worker threads. 'inline': on the calling thread (blocks
   * it); a remote host's files are always worked on in a worker.
   */
  executor?: 'worker' | 'inline' | Executor;
  /** The file system the paths are on (default: local files, or the host of `getEngine`'s `connection`). */
  target?: TargetDescriptor;
}

/**
 * What an engine needs for remote hosts, given where it is built (engines/index.ts) so that this
 * class reaches neither SSH nor the pool: an executor off the calling thread, and the target of
 * a connection.
 */
export interface RemoteSupport {
  /** Runs operations involving a remote host; never the calling thread, whose event loop serves the remote files. */
  exec: Executor;
  /** The target of a remote host (its connection kept in this process under an id). */
  target(connection: ConnectionArgs): Promise<TargetDescriptor>;
  /**
   * Answer a header read of a remote target on the calling thread (engines/remote-read.ts), or
   * resolve with `inWorker` when the operation must run in a worker.
   */
  headerRead?(target: TargetDescriptor, call: OpCall): Promise<unknown>;
  /** What headerRead resolves with to send the operation to a worker. */
  inWorker?: symbol;
}

/**
 * The Engine over an executor. Which executor is the caller's choice, made where the engine is
 * built (engines/index.ts: the worker pool by default; engines/inline.ts: the calling thread),
 * so that this class reaches neither: a command line running inline never loads the pool (nor
 * worker_threads), a provider never loads the dispatcher on its own thread.
 */
export class NativeEngine implements Engine {
  readonly name = 'native' as const;
  private readonly target: TargetDescriptor | Promise<TargetDescriptor>;

  /**
   * @param exec runs local operations
   * @param target the host the paths are on: local files, or a remote host's target
   * @param remote how remote hosts are reached; without it, only local files (a `target` of a
   *   remote host then runs on `exec`, which must not be the calling thread)
   */
  constructor(
    private readonly exec: Executor,
    target: TargetDescriptor | Promise<TargetDescriptor> = { kind: 'local' },
    private readonly remote?: RemoteSupport,
  ) {
    // A remote target is reported by the first operation that needs it.
    if (target instanceof Promise) target.catch(() => undefined);
    this.target = target;
  }

  private async run<T>(call: OpCall, progress?: ProgressFn): Promise<T> {
    const target = await this.target;
    const remote = target.kind !== 'local' || (call.op === 'import' && call.sourceTarget !== undefined && call.sourceTarget.kind !== 'local');
    if (target.kind !== 'local' && this.remote?.headerRead !== undefined) {
      const r = await this.remote.headerRead(target, call);
      if (r !== this.remote.inWorker) return r as T;
    }
    return (remote ? this.remote?.exec ?? this.exec : this.exec)(target, call, progress) as Promise<T>;
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

  /** A URL is downloaded (through the cache) and a compressed source decompressed here, on the caller's thread; the conversion runs on the executor. */
  async import(path: string, options: CreateOptions, source: ImportSource, opts: ImportOptions = {}): Promise<void> {
    if (opts.moreSources !== undefined && opts.moreSources.length > 0) {
      await this.withLocalSources(path, [source, ...opts.moreSources], opts, (first, more) => {
        const call: OpCall = { op: 'import', path, options, source: first, durable: opts.durable ?? true, more, ...copyOptions(opts) };
        if (opts.bitmaps) call.bitmaps = { skipBroken: opts.skipBrokenBitmaps ?? false };
        if (opts.targetFormat === 'raw') call.raw = true;
        return this.run(call, opts.progress);
      });
      return;
    }
    const { host, ...file } = source;
    const target = await this.target;
    const url = /^https?:\/\//i.test(source.path);
    if ((host === undefined && target.kind !== 'local' && !url) || (host !== undefined && host !== 'local')) {
      // A file on the image's remote host, or on another host: read there as it is.
      if (file.checksum !== undefined) {
        throw new Qcow2Error('UNSUPPORTED', `sourceChecksum is verified for URLs and files on this machine; '${source.path}' is read on its host as it is. ` +
          'Give it as a file of this machine (file:) or a URL, or remove sourceChecksum', { property: 'sourceChecksum', file: source.path });
      }
      const src: LocalImportSource = { path: file.path };
      if (file.format !== undefined) src.format = file.format;
      if (file.references !== undefined) src.references = file.references;
      if (file.maxSize !== undefined) src.maxSize = file.maxSize;
      if (file.snapshot !== undefined) src.snapshot = file.snapshot;
      const call: OpCall = { op: 'import', path, options, source: src, durable: opts.durable ?? true };
      if (host !== undefined) {
        if (this.remote === undefined) throw new Qcow2Error('UNSUPPORTED', 'This engine works on local files only: a source on a remote host needs the engine of getEngine()', { property: 'source' });
        call.sourceTarget = await this.remote.target(host);
      }
      if (opts.bitmaps) call.bitmaps = { skipBroken: opts.skipBrokenBitmaps ?? false };
      if (opts.compressed) call.compressed = true;
      if (opts.overBacking) call.overBacking = true;
      if (opts.targetFormat === 'raw') call.raw = true;
      if (opts.sparse !== undefined) call.sparse = opts.sparse;
      await this.run(call, opts.progress);
      return;
    }
    // A URL or a file of this machine: made a local raw or qcow2 file here (downloaded, verified,
    // decompressed), then converted here and written to the image's host as it is converted.
    const { prepareSource } = await import('../source');
    const local = await prepareSource(file, opts);
    try {
      const src: LocalImportSource = { path: local.path, format: local.format, references: local.references, label: local.label, downloaded: local.downloaded };
      if (source.maxSize !== undefined) src.maxSize = source.maxSize;
      if (source.snapshot !== undefined) src.snapshot = source.snapshot;
      const call: OpCall = { op: 'import', path, options, source: src, durable: opts.durable ?? true };
      if (target.kind !== 'local') call.sourceTarget = { kind: 'local' };
      if (opts.bitmaps) call.bitmaps = { skipBroken: opts.skipBrokenBitmaps ?? false };
      if (opts.compressed) call.compressed = true;
      if (opts.overBacking) call.overBacking = true;
      if (opts.targetFormat === 'raw') call.raw = true;
      if (opts.sparse !== undefined) call.sparse = opts.sparse;
      await this.run(call, opts.progress);
    } finally {
      await local.release();
    }
  }

  async convertInto(path: string, source: ImportSource, opts: ImportOptions = {}): Promise<void> {
    await this.withLocalSources(path, [source, ...(opts.moreSources ?? [])], opts, (first, more) =>
      this.run({ op: 'convertInto', path, source: first, ...(more.length > 0 ? { more } : {}), ...copyOptions(opts) }, opts.progress));
  }

  /**
   * Sources that are files of this machine (or URLs, downloaded), for an image of this machine:
   * each made a plain local file (engines/source.ts), `run` with them, then released.
   */
  private async withLocalSources(path: string, sources: readonly ImportSource[], opts: ImportOptions, run: (first: LocalImportSource, more: LocalImportSource[]) => Promise<unknown>): Promise<void> {
    if (sources.some((s) => s.host !== undefined && s.host !== 'local') || (await this.target).kind !== 'local') {
      throw new Qcow2Error('UNSUPPORTED', `convert -n, and convert from several sources, work on images and sources of this machine: '${path}'`, { file: path });
    }
    const { withPreparedSources } = await import('../source');
    await withPreparedSources(sources, opts, (prepared) => {
      const locals = prepared.map(({ local, source }) => {
        const src: LocalImportSource = { path: local.path, format: local.format, references: local.references, label: local.label, downloaded: local.downloaded };
        if (source.snapshot !== undefined) src.snapshot = source.snapshot;
        if (source.maxSize !== undefined) src.maxSize = source.maxSize;
        return src;
      });
      return run(locals[0]!, locals.slice(1));
    });
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

  bitmap(path: string, name: string, actions: readonly BitmapAction[], options: BitmapOptions = {}): Promise<BitmapResult> {
    return this.run({ op: 'bitmap', path, name, actions: [...actions], options });
  }

  dumpBitmap(path: string, name: string, options: ReadOptions = {}): Promise<BitmapDump> {
    return this.run({ op: 'dumpBitmap', path, name, options });
  }

  async remove(path: string, options: RemoveOptions = {}): Promise<void> {
    await this.run({ op: 'remove', path, options });
  }

  repair(path: string, mode: RepairMode): Promise<RepairReport> {
    return this.run({ op: 'repair', path, mode });
  }

  repairDirty(path: string): Promise<string[]> {
    return this.run({ op: 'repairDirty', path });
  }

  snapshot(path: string, request: SnapshotRequest, options: ReadOptions = {}): Promise<SnapshotFacts[] | undefined> {
    return this.run({ op: 'snapshot', path, request, options });
  }

  compare(a: ImageRef, b: ImageRef, options: CompareOptions = {}): Promise<CompareResult> {
    return this.run({ op: 'compare', path: a.path, a, b, strict: options.strict ?? false, forceShare: options.forceShare ?? false }, options.progress);
  }

  async commit(path: string, request: CommitRequest, options: CommitOptions = {}): Promise<void> {
    await this.run({ op: 'commit', path, request }, options.progress);
  }

  stat(path: string): Promise<FileStat | undefined> {
    return this.run({ op: 'stat', path });
  }

  chain(path: string, seen: string): Promise<ImageChain> {
    return this.run({ op: 'chain', path, seen });
  }

  dependents(path: string, candidates: readonly string[]): Promise<Dependents> {
    return this.run({ op: 'dependents', path, candidates: [...candidates] });
  }
}

/** How the copy is made (-c, -B, -S), as an OpCall carries it. */
function copyOptions(opts: ImportOptions): { compressed?: true; overBacking?: true; sparse?: number } {
  return { ...(opts.compressed ? { compressed: true as const } : {}), ...(opts.overBacking ? { overBacking: true as const } : {}), ...(opts.sparse !== undefined ? { sparse: opts.sparse } : {}) };
}
