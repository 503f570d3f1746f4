// The qemu-img engine: the Engine interface carried out by QEMU's own qemu-img (7.2 or newer),
// with the native engine's guarantees. Both engines ask provider/rules first, so they refuse the
// same plans with the same words and codes; this one then spawns qemu-img.
//
// What is run (argument arrays, never a shell; SPEC is a json: image specification, see
// qemuimg/spec.ts):
//   create   qemu-img create -q -f qcow2 -o compat=..,cluster_size=..,refcount_bits=..,lazy_refcounts=..,
//              extended_l2=..,compression_type=..,preallocation=..[,data_file=THROWAWAY,data_file_raw=..]
//              [-u -b BACKING -F FMT] img.qcow2 SIZE          (cwd: a private temp folder beside the image)
//            [qemu-img amend -q -o data_file=NAME SPEC(tmp image; data-file null-co; backing null)]
//            then link(2) the data file (new ones only) and the image into place.
//   amend    qemu-img amend -q -o OPTS SPEC
//   resize   qemu-img resize -q [--shrink] [--preallocation=MODE] SPEC BYTES
//   rebase   qemu-img rebase -q -u -b BACKING [-F FMT] SPEC
//   info     qemu-img info --output=json [-U] SPEC
//   check    qemu-img check --output=json SPEC
//   remove   (no qemu-img: QEMU's write lock probed on an fd, unlink; qemu-img info -U for the
//            data file name when that is to go too; never the backing file)
//   (amend/resize/rebase first read the image with qemu-img info --output=json -U SPEC, and a
//   zstd downgrade with qemu-img check --output=json -U SPEC for its compressed-clusters count;
//   a growth of a backed image reads the backing file's size: qemu-img info --output=json -U
//   json:{"driver":FMT,"file":{"driver":"file","filename":ABS},"backing":null}.)
//
// Safety design:
// - Names: the image is passed as json:{"driver":"qcow2","file":{"driver":"file","filename":ABS}},
//   so commas, spaces, newlines, quotes, a leading dash and prefixes such as json:, nbd:, ssh:,
//   file: are plain file names; `-o` values double their commas. qemu-img create only ever sees
//   `img.qcow2` / `data.raw` in a temp folder (or an absolute temp path for a data file in another
//   folder); hostile data file names are written by `amend -o data_file=`, which stores the name
//   without opening it. Backing names go in `-b` with `-u` (never opened by qemu-img).
// - No data loss: qemu-img create truncates an existing data file and deletes both files when it
//   fails. It never sees the caller's files here: it creates a throw-away image and data file in
//   a private temp folder; the name is amended in; link(2) publishes the files, and fails rather
//   than replace anything. An adopted data file is never opened by qemu-img or by us. A failure
//   removes the temp folder and leaves the caller's paths as they were.
// - What qemu-img may open: every SPEC says "backing": null, or, when QEMU must know the image is
//   backed (amend, resize: a compat=0.10 downgrade writes zero clusters only for backed images),
//   a raw file of ours as a stand-in; the real backing file is never opened. The stand-in is
//   empty, except when the image grows while its backing file is longer than its current size:
//   then it gets the backing file's virtual size (read from that file's header with the plain
//   file driver, its own backing and data file not opened), so that qemu-img zeroes the new area
//   as it does with the real chain (refused where that would need the backing data itself: a
//   compat=0.10 image, or a current size that ends inside a cluster). The data file
//   is a null-co node unless the operation needs the data (a size change): then the stored name,
//   resolved against the working directory as QEMU does, opened with the plain file driver.
//   check therefore never opens the data file or the backing file: like the native engine, it
//   only requires that the data file exists. So a check or info of an untrusted image cannot make
//   qemu-img read other files, connect to NBD/SSH servers or parse json: names from the image.
// - Resource limits (qemuimg/run.ts): info, check and the version probe run under 1 GiB address
//   space, 30 s CPU, 60 s wall clock (vdsm's qemu-img info limits); create, amend, resize and
//   rebase under 4 GiB, 30 min CPU, 1 h wall clock. prlimit(1) applies them; without it a
//   constant `sh -c 'ulimit -v; ulimit -t; exec "$@"'`; the wall clock is ours (SIGKILL).
// - Locks: reads with forceShare pass -U. Changes first probe QEMU's write lock on an fd of the
//   image (provider/qcow2/io/lock.ts), as the native engine does, so a held image is LOCKED before
//   any validation; qemu-img's own lock failures map to LOCKED too. check runs without -U, as
//   qemu-img check does: an image a VM is writing is LOCKED rather than checked.
// - Messages (qemuimg/errors.ts): qemu-img's reason without its "Could not open 'SPEC': "
//   wrapper, lock messages naming the caller's path, codes as the native engine's.

import * as fs from 'fs';
import * as path from 'path';
import type { CheckResult } from '../../qcow2/ops/check';
import { hasProtocolPrefix, resolveBackingName } from '../../qcow2/spec/backing';
import { refused, sizeArg, throwIfRefused } from '../refusal';
import { Qcow2Error } from '../../model/errors';
import { roundToSector } from '../../model/facts';
import type { CreateOptions, RawCreateOptions, ResolvedCreateOptions } from '../../model/options';
import type { ImageFacts } from '../../model/facts';
import { optionOf, type OptionName } from '../../model/names';
import type { MapEntry } from '../../qcow2/ops/map';
import { validateAmend, validateConsistent, validateDowngradeZeroClusters, validateGrowOverBacking, validateRebase, validateResizeRequest, validateWritable } from '../../rules/amend';
import { CreateBehaviour, resolveCreate, validateRawCreate } from '../../rules/create';
import { validateConvertInto, validateImport } from '../../rules/data';
import { ReferencePolicy, validateSourceReference } from '../../rules/references';
import { prepareSource, withPreparedSources } from '../source';
import type { AmendRequest, CommitFacts, CommitRequest, ConsistencyFacts, SnapshotRequest } from '../../rules/types';
import type {
  BitmapAction, BitmapDump, BitmapOptions, BitmapResult, CommitOptions, CompareOptions, CompareResult, Dependents, Engine, FileStat, ImageChain, ImageRef,
  ImportOptions, ImportSource, ReadOptions, RebaseOptions, RemoveOptions, RepairMode, RepairReport, ResizeOptions, SnapshotFacts,
} from '../engine';
import type { ConnectionArgs } from '../../transport/ssh/connection';
import { validateSnapshot } from '../../rules/snapshot';
import { validateCommit } from '../../rules/commit';
import { BitmapState, inconsistentMessage, validateBitmapActions, validateCopyBitmaps } from '../../rules/bitmaps';
import { dirtyExtentsViaNbd, qemuNbdBeside } from './dirty';
import { qemuImgError } from './errors';
import { QemuImgHost, localHost, notFound } from './host';
import { DEFAULT_LIMITS, Limits, QemuImgBinary, RunResult } from './run';
import { BackingSpec, ChainLayer, DataFileSpec, chainSpec, imageSpec, optList } from './spec';
import { parseCheck, parseInfo, parseMap } from './state';

export interface QemuImgEngineOptions {
  /** The qemu-img binary: a path, or a name looked up on PATH. Default: $QEMU_IMG, else `qemu-img`. */
  qemuImg?: string;
  /** Override the resource limits (see DEFAULT_LIMITS). */
  limits?: { read?: Partial<Limits>; write?: Partial<Limits> };
  /**
   * A remote host to work on, reached over SSH: qemu-img runs there (SSH exec, every argument
   * quoted by transport/ssh/quote.ts) and its files are reached through SFTP. Default: this machine.
   */
  connection?: ConnectionArgs;
  /** The host to work on, given directly (tests); `connection` makes one. */
  host?: QemuImgHost;
}

type Kind = 'read' | 'write';

/** An import's source as the reference policy judges the names in its chain. */
interface ChainSource { path: string; label: string; references: ReferencePolicy; downloaded: boolean }



const onOff = (b: boolean) => (b ? 'on' : 'off');

/** An `-o` pair named from the one option table (model/names.ts). */
const opt = (property: Parameters<typeof optionOf>[0], value: string): [OptionName, string] => [optionOf(property), value];

export class QemuImgEngine implements Engine {
  readonly name = 'qemu-img' as const;
  private readonly binName: string;
  readonly limits: Readonly<Record<Kind, Limits>>;
  private readonly hostP: Promise<QemuImgHost>;

  constructor(options: QemuImgEngineOptions = {}) {
    // On a remote host, qemu-img is the one on its PATH unless named: $QEMU_IMG names a local binary.
    this.binName = options.qemuImg ?? (options.connection === undefined ? process.env.QEMU_IMG : undefined) ?? 'qemu-img';
    this.limits = {
      read: { ...DEFAULT_LIMITS.read, ...options.limits?.read },
      write: { ...DEFAULT_LIMITS.write, ...options.limits?.write },
    };
    const connection = options.connection;
    this.hostP = options.host !== undefined ? Promise.resolve(options.host)
      : connection !== undefined ? import('./ssh-host').then((m) => m.sshQemuImgHost(connection))
      : Promise.resolve(localHost);
    this.hostP.catch(() => undefined); // reported by the first operation
  }

  /** The qemu-img binary and its version (probed once per binary and host, cached). */
  async binary(): Promise<QemuImgBinary> {
    return (await this.hostP).binary(this.binName);
  }

  // -------------------------------------------------------------------------------------------
  // Running qemu-img

  private async spawn(kind: Kind, args: string[], cwd?: string): Promise<RunResult> {
    const bin = await this.binary();
    const host = await this.hostP;
    try {
      return await host.run(bin.path, args, this.limits[kind], cwd);
    } catch (e) {
      if (Qcow2Error.isInstance(e)) throw e;
      throw new Qcow2Error('IO', `Could not run qemu-img ${args[0]}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Run; a non-zero exit becomes the mapped Qcow2Error. */
  private async run(kind: Kind, args: string[], ctx: { arg?: string; file?: string }, cwd?: string): Promise<RunResult> {
    const r = await this.spawn(kind, args, cwd);
    if (r.status !== 0) throw qemuImgError(r, { command: args[0]!, ...ctx, limits: this.limits[kind] });
    return r;
  }

  /** SPEC for reading: no backing file, and a null data file node when the image has one. */
  private async readSpec(abs: string): Promise<string> {
    const peek = await (await this.hostP).peek(abs);
    return imageSpec(abs, peek?.hasDataFile ? { kind: 'null' } : { kind: 'none' }, { kind: 'none' });
  }

  private async readInfo(file: string, forceShare: boolean): Promise<ImageFacts> {
    const abs = (await this.hostP).resolve(file);
    const spec = await this.readSpec(abs);
    const r = await this.run('read', ['info', '--output=json', ...(forceShare ? ['-U'] : []), spec], { arg: spec, file });
    const facts = parseInfo(r.stdout, file);
    // qemu-img resolved the backing name against our absolute json: name; the caller's is `file`.
    if (facts.backingFile !== undefined && facts.detail) facts.detail.fullBackingFile = resolveBackingName(file, facts.backingFile);
    await this.addSnapshotDiskSizes(abs, facts);
    return facts;
  }

  /**
   * Each snapshot's disk size (which decides a downgrade), read from the image where the host
   * reads files here: qemu-img info does not report it. Elsewhere it stays unknown, and qemu-img
   * decides a downgrade in its own words.
   */
  private async addSnapshotDiskSizes(abs: string, facts: ImageFacts): Promise<void> {
    const host = await this.hostP;
    if (facts.snapshots === 0 || !facts.detail || facts.compat !== '1.1' || host.downgradeFacts === undefined) return;
    const sizes = await host.downgradeFacts(abs).then((d) => d.snapshotDiskSizes, () => undefined);
    if (sizes === undefined || sizes.length !== facts.detail.snapshots.length) return;
    facts.detail.snapshots = facts.detail.snapshots.map((s, i) => ({ ...s, diskSize: sizes[i]! }));
  }

  /** Like the native engine: NOT_FOUND (same words) before qemu-img names an absolute path. */
  /** The format a read names: qemu-img's probing for 'probe' (qcow2 magic, else raw). */
  private async formatOf(file: string, format: ReadOptions['format']): Promise<'qcow2' | 'raw' | undefined> {
    if (format !== 'probe') return format;
    return (await (await this.hostP).peek(file)) !== undefined ? 'qcow2' : 'raw';
  }

  private async mustExist(file: string): Promise<void> {
    if ((await (await this.hostP).stat(file)) === undefined) throw notFound(file);
  }

  /**
   * The first step of every change, as in the native engine: open the image read-write and
   * probe QEMU's write lock (LOCKED when a VM or qemu-nbd holds it), then let go: qemu-img takes
   * the lock again for the change itself.
   */
  private async probeWriteLock(file: string): Promise<void> {
    await (await this.hostP).probeLock(file, 'write');
  }

  /** Lock probe, then the image as the rules see it (qemu-img info -U). */
  private async stateForChange(file: string): Promise<ImageFacts> {
    await this.probeWriteLock(file);
    const state = await this.readInfo(file, true);
    throwIfRefused(validateWritable(state), file);
    return state;
  }

  /** The data file node for a change: opened only when the data itself is needed. */
  private async dataSpecFor(file: string, state: ImageFacts, needed: boolean): Promise<DataFileSpec> {
    if (!state.hasDataFile) return { kind: 'none' };
    if (!needed) return { kind: 'null' };
    const name = state.dataFile;
    if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file });
    await this.mustExist(name);
    return { kind: 'file', path: (await this.hostP).resolve(name) };
  }

  /**
   * Run fn with the backing specification a change needs: when the image is backed, a private
   * stand-in raw file of `length` bytes (sparse; 0 unless a growth needs the backing's length).
   */
  private async withBacking<T>(file: string, state: ImageFacts, length: number, fn: (b: BackingSpec) => Promise<T>): Promise<T> {
    if (state.backingFile === undefined) return fn({ kind: 'none' });
    const standIn = await (await this.hostP).scratchFile(file, length);
    try {
      return await fn({ kind: 'stand-in', emptyFile: standIn.path });
    } finally {
      await standIn.dispose();
    }
  }

  /**
   * The virtual size of the image's backing file, read from its header only (qemu-img info -U,
   * declared format raw or qcow2, plain file driver, its own backing and data file not opened),
   * or 0 when it cannot be known without following more: no declared format, a protocol-looking
   * name (QEMU would not open it as a file), a missing file.
   */
  private async backingLength(file: string, state: ImageFacts): Promise<number> {
    const name = state.backingFile;
    const fmt = state.backingFormat;
    if (name === undefined || (fmt !== 'raw' && fmt !== 'qcow2')) return 0;
    if (hasProtocolPrefix(name)) return 0;
    const host = await this.hostP;
    const full = resolveBackingName(host.resolve(file), name);
    if ((await host.stat(full)) === undefined) return 0;
    const spec: Record<string, unknown> = { driver: fmt, file: { driver: 'file', filename: full } };
    if (fmt === 'qcow2') {
      spec.backing = null;
      if ((await host.peek(full))?.hasDataFile) spec['data-file'] = { driver: 'null-co' };
    }
    const r = await this.spawn('read', ['info', '--output=json', '-U', `json:${JSON.stringify(spec)}`]);
    const m = r.status === 0 ? /^ {4}"virtual-size": (\d+),?$/m.exec(r.stdout) : null;
    return m ? Number(m[1]) : 0;
  }

  /**
   * QEMU zeroes the new area when an image grows while its backing file is longer than its old
   * size, so that the backing file's data does not appear in the guest (bdrv_co_truncate's
   * BDRV_REQ_ZERO_WRITE). The stand-in backing file gets the real one's length so qemu-img does
   * exactly that. Returns the stand-in length. Refused before qemu-img runs: a compat=0.10 image
   * (qemu-img fails half way: no zero clusters), and a current end inside a cluster (QEMU copies
   * that cluster's backing data into the image first, which the stand-in cannot provide).
   */
  private async growthBackingLength(file: string, state: ImageFacts, newSize: bigint): Promise<number> {
    if (state.backingFile === undefined || newSize <= state.virtualSize) return 0;
    const length = await this.backingLength(file, state);
    if (BigInt(length) <= state.virtualSize) return 0;
    const r = validateGrowOverBacking(state, newSize, BigInt(length));
    if (r) throw refused(r, file);
    const unit = BigInt(state.extendedL2 ? state.clusterSize / 32 : state.clusterSize);
    if (state.virtualSize % unit !== 0n) {
      throw new Qcow2Error('REFUSED',
        `Growing this image from ${state.virtualSize} bytes zeroes the new area because its backing file is longer (${length} bytes), ` +
        `and its current end is inside a cluster of ${unit} bytes: QEMU first copies the rest of that cluster from the backing ` +
        'file, which the qemu-img engine never opens. Run qemu-img resize on the image directly',
        { property: 'size', file });
    }
    return length;
  }

  private async change(file: string, state: ImageFacts, dataNeeded: boolean, args: (spec: string) => string[], newSize?: bigint): Promise<void> {
    const abs = (await this.hostP).resolve(file);
    const data = await this.dataSpecFor(file, state, dataNeeded);
    const length = newSize === undefined ? 0 : await this.growthBackingLength(file, state, newSize);
    await this.withBacking(abs, state, length, async (backing) => {
      const spec = imageSpec(abs, data, backing);
      await this.run('write', args(spec), { arg: spec, file });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Engine

  async create(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): Promise<void> {
    await this.binary();
    // Rules (validateCreate, validateAdoption) and the size from a backing file or adopted file:
    // the same resolution, refusals and words as the native engine.
    const host = await this.hostP;
    const o = await this.resolved(imagePath, options, behaviour);
    await host.assertNewImageFiles(imagePath, o);
    await this.publishViaTemp(imagePath, o, async (tmp, pairs) => {
      const args = ['create', '-q', '-f', 'qcow2', '-o', optList(pairs)];
      // -u: the backing file is never opened by qemu-img (resolveCreate read its size).
      if (o.backingFile !== undefined) args.push('-u', '-b', o.backingFile, '-F', o.backingFormat!);
      args.push('img.qcow2', String(o.size));
      await this.run('write', args, { arg: 'img.qcow2', file: imagePath }, tmp);
    });
  }

  /** `qemu-img create -f raw` in a private temp folder beside the target, linked into place. */
  async createRaw(imagePath: string, options: RawCreateOptions): Promise<void> {
    await this.binary();
    const r = validateRawCreate(options);
    if (!r.ok) throw refused(r.refusal, undefined, 'INVALID_OPTION');
    const host = await this.hostP;
    await host.assertNewImageFiles(imagePath, { adoptDataFile: false });
    const absImage = host.resolve(imagePath);
    const pub = host.publication();
    try {
      const tmp = await pub.folderBeside(absImage);
      const args = ['create', '-q', '-f', 'raw', '-o', `preallocation=${r.options.preallocation}`, 'img.raw', String(r.options.size)];
      await this.run('write', args, { arg: 'img.raw', file: imagePath }, tmp);
      pub.stage(path.join(tmp, 'img.raw'), absImage, 'image');
      await pub.publish();
    } catch (e) {
      await pub.abort();
      throw e;
    }
  }

  resolveCreate(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): Promise<ResolvedCreateOptions> {
    return this.resolved(imagePath, options, behaviour);
  }

  private async resolved(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): Promise<ResolvedCreateOptions> {
    const r = resolveCreate(options, await (await this.hostP).createFacts(imagePath, options), behaviour);
    if (!r.ok) throw refused(r.refusal, undefined, 'INVALID_OPTION');
    return r.options;
  }

  /**
   * `qemu-img convert -O qcow2`: the source (raw, or qcow2 through its backing chain, every
   * layer an explicit file node) into a new image built in a private temp folder and linked into
   * place like create's. The same refusals as the native engine (provider/rules).
   */
  async import(imagePath: string, options: CreateOptions, source: ImportSource, opts: ImportOptions = {}): Promise<void> {
    await this.binary();
    if (opts.moreSources !== undefined && opts.moreSources.length > 0) {
      await this.withLocalChains(imagePath, [source, ...opts.moreSources], opts, (chains) =>
        (opts.targetFormat === 'raw' ? this.importRaw(imagePath, options, chains, source, opts) : this.importQcow2(imagePath, options, chains, source, opts)));
      return;
    }
    const host = await this.hostP;
    throwIfRefused(source.format !== undefined ? validateImport({ sourceFormat: source.format, options: {}, sourceSize: 0n, sameFile: false }) : undefined);
    if (source.host !== undefined && source.host !== 'local') {
      throw new Qcow2Error('UNSUPPORTED', 'The qemu-img engine imports from a file on the image\'s host or on this machine; ' +
        'to import from a third host, use the native engine', { property: 'source' });
    }
    const { host: where, ...file } = source;
    const url = /^https?:\/\//i.test(file.path);
    // A file on the image's remote host is read there as it is; a URL, or a file of this machine,
    // is made a plain local file here first (downloaded through the cache, verified,
    // decompressed: qemu-img's curl driver is never used), then copied to a remote host.
    const onHost = host.label !== '' && where === undefined && !url;
    if (onHost && file.checksum !== undefined) {
      throw new Qcow2Error('UNSUPPORTED', `sourceChecksum is verified for URLs and files on this machine; '${file.path}' is read on ${host.label} as it is. ` +
        'Give it as a file of this machine (file:) or a URL, or remove sourceChecksum', { property: 'sourceChecksum', file: file.path });
    }
    const prepared = onHost ? undefined : await prepareSource(file, opts);
    let copy: { path: string; dispose(): Promise<void> } | undefined;
    try {
      // A file of this machine for an image on a remote host: copied there (holes are not sent).
      if (prepared !== undefined && host.label !== '') copy = await host.localFile(prepared.path, imagePath);
      const at = copy?.path ?? prepared?.path ?? file.path;
      const label = prepared?.label ?? file.path;
      await this.mustExist(at);
      const format = prepared?.format ?? file.format ?? ((await host.peek(at)) !== undefined ? 'qcow2' : 'raw');
      const src = await this.guestChain(at, format, {
        path: host.resolve(at), label, references: prepared?.references ?? file.references ?? 'any', downloaded: prepared?.downloaded ?? false,
      });
      const chain: SourceChain = { spec: src.spec, size: src.size, path: at, format, label, ...(copy !== undefined ? { copied: true } : {}) };
      if (opts.targetFormat === 'raw') {
        if (host.label !== '') throw new Qcow2Error('UNSUPPORTED', 'convert -O raw with the qemu-img engine writes a file of this machine', { property: 'format' });
        await this.importRaw(imagePath, options, [chain], source, opts);
        return;
      }
      await this.importQcow2(imagePath, options, [chain], source, opts);
    } finally {
      await copy?.dispose();
      await prepared?.release();
    }
  }

  /** `qemu-img convert -O qcow2` of the sources' chains (one after another) into a new image, published when complete. */
  private async importQcow2(imagePath: string, options: CreateOptions, chains: SourceChain[], source: ImportSource, opts: ImportOptions): Promise<void> {
    const host = await this.hostP;
    const size = chainsSize(chains);
    const same = (a: string) => this.sameAsAny(a, chains);
    const r = validateImport({
      ...sourceFacts(chains, size),
      options,
      sameFile: (await same(imagePath)) || (options.dataFile !== undefined && (await same(options.dataFile))),
      ...(source.maxSize !== undefined ? { maxSize: source.maxSize } : {}), ...(opts.bitmaps ? { bitmaps: true } : {}),
      ...(opts.compressed ? { compress: true } : {}), ...(opts.overBacking ? { overBacking: true } : {}),
    });
    throwIfRefused(r, imagePath);
    const o = await this.resolved(imagePath, { ...options, size });
    const first = chains[0]!;
    if (opts.bitmaps) {
      const top = first.format === 'qcow2' ? await this.readInfo(first.path, false) : undefined;
      throwIfRefused(validateCopyBitmaps({
        sourceFormat: first.format, bitmaps: top ? QemuImgEngine.bitmapStates(top) : [], targetCompat: o.compat, skipBroken: opts.skipBrokenBitmaps ?? false,
      }), first.label);
    }
    await host.assertNewImageFiles(imagePath, o);
    await this.publishViaTemp(imagePath, o, async (tmp, pairs) => {
      const bitmapArgs = opts.bitmaps ? ['--bitmaps', ...(opts.skipBrokenBitmaps ? ['--skip-broken-bitmaps'] : [])] : [];
      const args = ['convert', '-q', ...(opts.compressed ? ['-c'] : []), ...bitmapArgs, ...sparseArgs(opts), '-O', 'qcow2', '-o', optList(pairs), ...snapshotArgs(source.snapshot),
        ...chains.map((c) => c.spec), 'img.qcow2'];
      await this.run('write', args, { arg: first.spec, file: first.label }, tmp);
    }, opts.durable ?? true);
    opts.progress?.(Number(size), Number(size));
  }

  /** Whether `file` is one of the sources' files (a copy sent to the image's host is none of them). */
  private async sameAsAny(file: string, chains: readonly SourceChain[]): Promise<boolean> {
    const host = await this.hostP;
    for (const c of chains) if (!c.copied && (await host.sameFile(file, c.path))) return true;
    return false;
  }

  /**
   * Several sources (or convert -n's): files of this machine (URLs downloaded, compressed ones
   * decompressed) for an image of this machine, each read as its chain of explicit file nodes;
   * `run` with them, then the local files released.
   */
  private async withLocalChains(imagePath: string, sources: readonly ImportSource[], opts: ImportOptions, run: (chains: SourceChain[]) => Promise<void>): Promise<void> {
    const host = await this.hostP;
    if (host.label !== '' || sources.some((s) => s.host !== undefined && s.host !== 'local')) {
      throw new Qcow2Error('UNSUPPORTED', `convert from several sources works on images and sources of this machine: '${imagePath}'`, { file: imagePath });
    }
    await withPreparedSources(sources, opts, async (prepared) => {
      const chains: SourceChain[] = [];
      for (const { local } of prepared) {
        await this.mustExist(local.path);
        const c = await this.guestChain(local.path, local.format, { path: host.resolve(local.path), label: local.label, references: local.references, downloaded: local.downloaded });
        chains.push({ spec: c.spec, size: c.size, path: local.path, format: local.format, label: local.label });
      }
      await run(chains);
    });
  }

  /**
   * A guest view for qemu-img to read: the image and every backing layer as explicit file nodes
   * (names read with qemu-img info -U from each header, resolved as QEMU resolves them), so no
   * name inside an image can make qemu-img open anything but a plain file, and each name is
   * judged by the source's reference policy (provider/rules) before it is followed.
   */
  private async guestChain(file: string, format: string, source?: ChainSource): Promise<{ spec: string; size: bigint; layers: ChainLayer[] }> {
    const layers: Array<{ path: string; format: 'raw' | 'qcow2'; dataFile?: string }> = [];
    const judge = (kind: 'backing file' | 'data file', name: string, resolved: string | undefined, from: string) => {
      if (source === undefined) return;
      const local = resolved === undefined || hasProtocolPrefix(name) || (source.downloaded && !name.startsWith('/')) ? undefined : path.resolve(resolved);
      const r = validateSourceReference({ kind, name, ...(local !== undefined ? { resolved: local } : {}), from: from === source.path ? source.label : from }, source.references, source.label);
      throwIfRefused(r, source.label);
    };
    let size = 0n;
    const host = await this.hostP;
    let at: string | undefined = host.resolve(file);
    let fmt: string | undefined = format;
    while (at !== undefined) {
      if (layers.length >= 64) throw new Qcow2Error('INVALID_IMAGE', `Backing chain of '${file}' is deeper than 64 images (a loop?)`, { file });
      if (fmt !== 'raw' && fmt !== 'qcow2') {
        throw new Qcow2Error('UNSUPPORTED', `Unknown driver '${String(fmt)}': this engine reads qcow2 and raw images only`, { file: at });
      }
      const st = await host.stat(at);
      if (st === undefined) throw notFound(at);
      if (fmt === 'raw') {
        if (layers.length === 0) size = BigInt(st.size);
        layers.push({ path: at, format: 'raw' });
        break;
      }
      const facts = await this.readInfo(at, true);
      if (layers.length === 0) size = facts.virtualSize;
      const layer: { path: string; format: 'qcow2'; dataFile?: string } = { path: at, format: 'qcow2' };
      if (facts.hasDataFile) {
        if (facts.dataFile === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file: at });
        judge('data file', facts.dataFile, host.resolve(facts.dataFile), at);
        layer.dataFile = host.resolve(facts.dataFile);
      }
      layers.push(layer);
      const from = at;
      at = facts.backingFile === undefined || facts.backingFile === '' ? undefined : path.posix.resolve(path.posix.dirname(at), facts.detail?.fullBackingFile ?? facts.backingFile);
      if (at !== undefined) judge('backing file', facts.backingFile!, at, from);
      fmt = facts.backingFormat ?? (at !== undefined && (await host.peek(at)) !== undefined ? 'qcow2' : 'raw');
    }
    return { spec: chainSpec(layers), size, layers };
  }

  /** Build a new image (and a new data file) in a private temp folder, then link them into place. */
  private async publishViaTemp(imagePath: string, o: ResolvedCreateOptions, produce: (tmp: string, pairs: Array<[string, string]>) => Promise<void>, durable = true): Promise<void> {
    const host = await this.hostP;
    const absImage = host.resolve(imagePath);
    const imageDir = path.dirname(absImage);
    const newData = o.dataFile !== undefined && !o.adoptDataFile;
    const absData = o.dataFile !== undefined ? host.resolve(o.dataFile) : undefined;
    const pub = host.publication();
    try {
      const tmp = await pub.folderBeside(absImage);
      const tmpImage = path.join(tmp, 'img.qcow2');
      // The throw-away data file: beside the temp image, or (a new data file in another folder)
      // in a temp folder there, so that link(2) can publish it.
      let tmpData: string | undefined;
      let dataArg: string | undefined;
      if (absData !== undefined) {
        if (newData && path.dirname(absData) !== imageDir) {
          tmpData = path.join(await pub.folderBeside(absData), 'data.raw');
          dataArg = tmpData;
        } else {
          tmpData = path.join(tmp, 'data.raw');
          dataArg = 'data.raw';
        }
      }
      // An adopted file keeps its contents: the throw-away one needs no zeros written.
      const prealloc = o.adoptDataFile && (o.preallocation === 'falloc' || o.preallocation === 'full') ? 'metadata' : o.preallocation;
      const pairs: Array<[string, string]> = [
        opt('compat', o.compat),
        opt('clusterSize', String(o.clusterSize)),
        opt('refcountBits', String(o.refcountBits)),
        opt('lazyRefcounts', onOff(o.lazyRefcounts)),
        opt('extendedL2', onOff(o.extendedL2)),
        opt('compressionType', o.compressionType),
        opt('preallocation', prealloc),
      ];
      if (dataArg !== undefined) pairs.push(opt('dataFile', dataArg), opt('dataFileRaw', onOff(o.dataFileRaw)));
      await produce(tmp, pairs);

      if (o.dataFile !== undefined) {
        // Store the caller's name; amend writes it without opening it.
        const spec = imageSpec(tmpImage, { kind: 'null' }, { kind: 'none' });
        await this.run('write', ['amend', '-q', '-o', optList([opt('dataFile', o.dataFile)]), spec], { arg: spec, file: imagePath });
      }
      // link(2) publishes the data file (a new one) and then the image, never replacing a file.
      if (newData) pub.stage(tmpData!, absData!, 'data file');
      pub.stage(tmpImage, absImage, 'image');
      await pub.publish({ durable });
    } catch (e) {
      await pub.abort();
      throw e;
    }
  }

  async amend(file: string, asked: AmendRequest): Promise<void> {
    const request = asked.size === undefined ? asked : { ...asked, size: sizeArg(asked.size) };
    await this.binary();
    const state = await this.stateForChange(file);
    if (request.compat === '0.10' && state.compat === '1.1' && state.compressionType === 'zstd') {
      state.hasCompressedClusters = await this.hasCompressedClusters(file);
    }
    // The snapshots' disk sizes came with the state (readInfo): the rules decide before qemu-img
    // would resize and then refuse; and qemu-img would zero a cluster a snapshot reads as data.
    const host = await this.hostP;
    const down = request.compat === '0.10' && state.compat === '1.1' && host.downgradeFacts !== undefined ? await host.downgradeFacts(host.resolve(file)) : undefined;
    const r = validateAmend(state, request, true) ?? (down ? validateDowngradeZeroClusters(down.sharedZeroCluster) : undefined);
    if (r) throw refused(r, file);

    const pairs: Array<[string, string]> = [];
    if (request.compat !== undefined && request.compat !== state.compat) pairs.push(opt('compat', request.compat));
    if (request.lazyRefcounts !== undefined && request.lazyRefcounts !== state.lazyRefcounts) pairs.push(opt('lazyRefcounts', onOff(request.lazyRefcounts)));
    if (request.refcountBits !== undefined && request.refcountBits !== state.refcountBits) pairs.push(opt('refcountBits', String(request.refcountBits)));
    const sizeChanges = request.size !== undefined && request.size !== state.virtualSize;
    if (sizeChanges) pairs.push(opt('size', String(request.size)));
    if (request.dataFile !== undefined && request.dataFile !== state.dataFile) pairs.push(opt('dataFile', request.dataFile));
    if (request.dataFileRaw !== undefined && request.dataFileRaw !== state.dataFileRaw) pairs.push(opt('dataFileRaw', onOff(request.dataFileRaw)));
    if (pairs.length === 0) return;
    const moves = sizeChanges || state.dirty || (request.compat === '0.10' && state.compat === '1.1') ||
      (request.refcountBits !== undefined && request.refcountBits !== state.refcountBits);
    const widensRefcountsOnly = request.refcountBits !== undefined && request.refcountBits > state.refcountBits && !state.dirty &&
      !sizeChanges && !(request.compat === '0.10' && state.compat === '1.1');
    if (moves) throwIfRefused(validateConsistent(await this.consistency(file, state.dirty), { widensRefcountsOnly }), file);
    await this.change(file, state, sizeChanges, (spec) => ['amend', '-q', '-o', optList(pairs), spec], request.size);
  }

  async resize(file: string, asked: bigint | { relative: bigint }, options: ResizeOptions = {}): Promise<void> {
    const newSize = typeof asked === 'object' && asked !== null ? { relative: sizeArg(asked.relative, 'size', true) } : sizeArg(asked);
    await this.binary();
    const allowShrink = options.allowShrink ?? false;
    const state = await this.stateForChange(file);
    const size = typeof newSize === 'bigint' ? newSize : state.virtualSize + newSize.relative;
    const prealloc = options.preallocation ?? 'off';
    const r = validateResizeRequest(state, size, allowShrink, prealloc);
    if (r) throw refused(r, file);
    if (size === state.virtualSize) return;
    if (prealloc !== 'off' && state.backingFile !== undefined && state.virtualSize % BigInt(state.clusterSize) !== 0n) {
      // preallocate_co copies the head of the old end's cluster from the backing file when the
      // image lacks it: the stand-in backing file would put zeros there.
      throw new Qcow2Error('REFUSED',
        `Preallocating the growth of this image from ${state.virtualSize} bytes: its current end is inside a cluster of ${state.clusterSize} bytes, ` +
        'whose start QEMU copies from the backing file, which the qemu-img engine never opens. Use the native engine, or run qemu-img resize on the image directly',
        { property: 'preallocation', file });
    }
    throwIfRefused(validateConsistent(await this.consistency(file, state.dirty)), file);
    const shrink = size < state.virtualSize ? ['--shrink'] : [];
    const pre = prealloc !== 'off' ? [`--preallocation=${prealloc}`] : [];
    await this.change(file, state, true, (spec) => ['resize', '-q', ...shrink, ...pre, spec, String(size)], size);
  }

  async rebase(file: string, backingFile: string, backingFormat?: string, options: RebaseOptions = {}): Promise<void> {
    await this.binary();
    const state = await this.stateForChange(file);
    const r = validateRebase(state, backingFile, backingFormat);
    if (r) throw refused(r, file);
    if (options.safe) {
      // qemu-img rebase without -u opens the old and the new backing chain by their stored names.
      throw new Qcow2Error('UNSUPPORTED', 'The qemu-img engine rewrites the backing reference only (rebase -u): it never lets qemu-img ' +
        'open backing files by the names stored in an image. Use the native engine for a rebase that copies data', { property: 'backing_file', file });
    }
    const fmt = backingFile !== '' && backingFormat !== undefined ? ['-F', backingFormat] : [];
    const abs = (await this.hostP).resolve(file);
    const spec = imageSpec(abs, state.hasDataFile ? { kind: 'null' } : { kind: 'none' }, { kind: 'none' });
    await this.run('write', ['rebase', '-q', '-u', '-b', backingFile, ...fmt, spec], { arg: spec, file });
  }

  async info(file: string, options: ReadOptions = {}): Promise<ImageFacts> {
    await this.binary();
    await this.mustExist(file);
    const format = await this.formatOf(file, options.format);
    if (format === 'raw') {
      // A raw file as an explicit file node: no name is ever parsed as a protocol.
      const spec = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'file', filename: (await this.hostP).resolve(file) } })}`;
      const r = await this.run('read', ['info', '--output=json', ...(options.forceShare ? ['-U'] : []), spec], { arg: spec, file });
      return parseInfo(r.stdout, file, 'raw');
    }
    return this.readInfo(file, options.forceShare ?? false);
  }

  /** `qemu-img map --output=json` over the image's chain, every layer an explicit file node. */
  async map(file: string, options: ReadOptions = {}): Promise<MapEntry[]> {
    await this.binary();
    await this.mustExist(file);
    if (!options.forceShare) await (await this.hostP).probeLock(file, 'read');
    const src = await this.guestChain(file, (await this.formatOf(file, options.format)) ?? 'qcow2');
    const r = await this.run('read', ['map', '--output=json', '-U', src.spec], { arg: src.spec, file });
    return parseMap(r.stdout, file);
  }

  async check(file: string, options: ReadOptions = {}): Promise<CheckResult> {
    await this.binary();
    await this.mustExist(file);
    const state = await this.readInfo(file, true);
    if (state.hasDataFile) {
      // As the native engine: the data file must exist, but it is not opened.
      const name = state.dataFile;
      if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file });
      if ((await (await this.hostP).stat(name)) === undefined) {
        throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name, property: 'data_file' });
      }
    }
    return this.runCheck(file, options.forceShare ?? false);
  }

  private async runCheck(file: string, forceShare: boolean): Promise<CheckResult> {
    const spec = await this.readSpec((await this.hostP).resolve(file));
    const r = await this.spawn('read', ['check', '--output=json', ...(forceShare ? ['-U'] : []), spec]);
    const result = r.signal === null && !r.timedOut && r.status !== null && r.status <= 3 ? parseCheck(r.stdout, r.stderr) : undefined;
    if (result === undefined) throw qemuImgError(r, { command: 'check', arg: spec, file, limits: this.limits.read });
    return result;
  }

  /**
   * Check's verdict on the image's tables, for a change that builds on them: the native checker
   * where the host reads files here; on a remote host qemu-img check there, where an image left
   * dirty (lazy refcounts) counts only what a refcount repair cannot fix, as the native verdict.
   */
  private async consistency(file: string, dirty: boolean): Promise<ConsistencyFacts> {
    const host = await this.hostP;
    if (host.consistency !== undefined) return host.consistency(file);
    const r = await this.runCheck(file, true);
    const errors = r.messages.filter((m) => m.startsWith('ERROR'));
    const counted = dirty ? errors.filter((m) => !/refcount=-?\d+ reference=\d+/.test(m)) : errors;
    const out: ConsistencyFacts = { corruptions: dirty ? counted.length : r.corruptions, checkErrors: r.checkErrors };
    const overflows = counted.filter((m) => m.startsWith('ERROR: overflow cluster')).length;
    if (overflows > 0) out.overflows = overflows;
    if (counted[0] !== undefined && out.corruptions + out.checkErrors > 0) out.first = counted[0].replace(/^ERROR:? /, '');
    return out;
  }

  /** Any compressed cluster in the active L1 (qemu-img check's compressed-clusters). */
  private async hasCompressedClusters(file: string): Promise<boolean> {
    return (await this.runCheck(file, true)).compressedClusters > 0;
  }

  /** The bitmaps of an image's facts as the rules see them (in-use = inconsistent: we probed no writer holds it). */
  private static bitmapStates(state: ImageFacts): BitmapState[] {
    return (state.detail?.bitmaps ?? []).map((b) => ({
      name: b.name, granularity: b.granularity, enabled: b.flags.includes('auto'), inconsistent: b.flags.includes('in-use'),
    }));
  }

  /** `qemu-img bitmap`, after the same validation as the native engine (so it refuses alike, before qemu-img runs). */
  async bitmap(file: string, name: string, actions: readonly BitmapAction[], options: BitmapOptions = {}): Promise<BitmapResult> {
    await this.binary();
    const host = await this.hostP;
    const state = await this.stateForChange(file);
    let source: { bitmaps: BitmapState[]; virtualSize: bigint } | undefined;
    if (options.sourceFile !== undefined) {
      await this.mustExist(options.sourceFile);
      if ((await this.formatOf(options.sourceFile, options.sourceFormat === 'raw' || options.sourceFormat === 'qcow2' ? options.sourceFormat : 'probe')) === 'raw') {
        source = { bitmaps: [], virtualSize: BigInt((await host.stat(options.sourceFile))?.size ?? 0) };
      } else {
        const s = await this.readInfo(options.sourceFile, false);
        source = { bitmaps: QemuImgEngine.bitmapStates(s), virtualSize: s.virtualSize };
      }
    }
    const r = validateBitmapActions({
      compat: state.compat, virtualSize: state.virtualSize, clusterSize: state.clusterSize, bitmaps: QemuImgEngine.bitmapStates(state), node: file,
    }, name, actions, source);
    if (r) throw refused(r, file);
    const args: string[] = [];
    const granularities = new Set(actions.flatMap((a) => (a.op === 'add' && a.granularity !== undefined ? [a.granularity] : [])));
    if (granularities.size > 1) {
      throw new Qcow2Error('UNSUPPORTED', 'qemu-img bitmap takes one granularity per run: add bitmaps of different granularities in separate runs', { property: 'bitmaps', file });
    }
    for (const a of actions) args.push(...(a.op === 'merge' ? ['--merge', a.source] : [`--${a.op}`]));
    if (granularities.size === 1) args.push('-g', String([...granularities][0]));
    if (options.sourceFile !== undefined) {
      args.push('-b', host.resolve(options.sourceFile));
      if (options.sourceFormat !== undefined) args.push('-F', options.sourceFormat);
    }
    const abs = host.resolve(file);
    const spec = imageSpec(abs, state.hasDataFile ? { kind: 'null' } : { kind: 'none' }, { kind: 'none' });
    const done = await this.run('write', ['bitmap', ...args, spec, name], { arg: spec, file });
    // qemu-img's warnings (a stale bitmaps extension it dropped), without its prefix.
    const warnings = done.stderr.split(/qemu-img: warning: /).slice(1).map((w) => w.trim());
    return { warnings };
  }

  /** Dirty extents through QEMU: qemu-nbd exports the bitmap, qemu-img map reads it. */
  async dumpBitmap(file: string, name: string, options: ReadOptions = {}): Promise<BitmapDump> {
    await this.binary();
    const host = await this.hostP;
    if (host.label !== '') {
      throw new Qcow2Error('UNSUPPORTED', `Reading a bitmap's dirty extents with the qemu-img engine needs qemu-nbd on this machine; '${file}' is on ${host.label}. ` +
        'Use the native engine, which reads them over SFTP', { file, property: 'bitmaps' });
    }
    await this.mustExist(file);
    const state = await this.readInfo(file, options.forceShare ?? false);
    const b = state.detail?.bitmaps.find((x) => x.name === name);
    if (b === undefined) throw new Qcow2Error('NOT_FOUND', `Dirty bitmap '${name}' not found`, { file, property: 'bitmaps' });
    if (b.flags.includes('in-use')) throw new Qcow2Error('REFUSED', inconsistentMessage(name), { file, property: 'bitmaps' });
    const abs = host.resolve(file);
    const spec = imageSpec(abs, state.hasDataFile ? { kind: 'null' } : { kind: 'none' }, { kind: 'none' });
    const bin = await this.binary();
    const extents = await dirtyExtentsViaNbd(qemuNbdBeside(bin.path), spec, name, (args) => this.spawn('read', args), file);
    return { name, granularity: b.granularity, enabled: b.flags.includes('auto'), extents };
  }

  async remove(file: string, options: RemoveOptions = {}): Promise<void> {
    // Deleting needs no qemu-img: the same lock discipline and file rules as the native engine.
    await (await this.hostP).remove(file, options);
  }

  /** As check: the data file must exist, but is never opened. */
  private async requireDataFile(file: string, state: ImageFacts): Promise<void> {
    if (!state.hasDataFile) return;
    const name = state.dataFile;
    if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image", { file });
    if ((await (await this.hostP).stat(name)) === undefined) {
      throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name, property: 'data_file' });
    }
  }

  /**
   * `qemu-img check -r MODE --output=json SPEC`. Its stderr holds the repair's lines and those
   * of the second check together: they all come back as `messages`.
   */
  async repair(file: string, mode: RepairMode): Promise<RepairReport> {
    await this.binary();
    await this.mustExist(file);
    await this.probeWriteLock(file);
    const state = await this.readInfo(file, true);
    await this.requireDataFile(file, state);
    const spec = await this.readSpec((await this.hostP).resolve(file));
    const r = await this.spawn('write', ['check', '-r', mode, '--output=json', spec]);
    const messages = r.stderr.replace(/\r/g, '').split('\n').filter((l) => l !== '' && !l.startsWith('qemu-img: '));
    const result = r.signal === null && !r.timedOut && r.status !== null && r.status <= 3 ? parseCheck(r.stdout, '') : undefined;
    if (result === undefined) {
      if (r.status === 1 && /Check failed/.test(r.stderr)) {
        const none: CheckResult = { messages: [], corruptions: 0, leaks: 0, checkErrors: 1, imageEndOffset: 0, totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0 };
        return { messages, leaksFixed: 0, corruptionsFixed: 0, result: none, rechecked: false, failed: true };
      }
      throw qemuImgError(r, { command: 'check', arg: spec, file, limits: this.limits.write });
    }
    const j = JSON.parse(r.stdout) as { 'leaks-fixed'?: number; 'corruptions-fixed'?: number };
    const leaksFixed = j['leaks-fixed'] ?? 0, corruptionsFixed = j['corruptions-fixed'] ?? 0;
    return { messages, leaksFixed, corruptionsFixed, result, rechecked: leaksFixed + corruptionsFixed > 0, failed: false };
  }

  async repairDirty(file: string): Promise<string[]> {
    await this.binary();
    const state = await this.stateForChange(file);
    if (!state.dirty) return [];
    const r = await this.repair(file, 'all');
    if (r.failed || r.result.checkErrors) throw new Qcow2Error('INVALID_IMAGE', 'Could not repair dirty image: Input/output error', { file });
    return r.messages;
  }

  /**
   * `qemu-img snapshot -l/-c/-d/-a` on the image alone (no backing file, data file never
   * opened). A snapshot qemu-img creates takes the wall clock: `request.time` is not used.
   */
  async snapshot(file: string, request: SnapshotRequest, options: ReadOptions = {}): Promise<SnapshotFacts[] | undefined> {
    await this.binary();
    await this.mustExist(file);
    if (request.action === 'list') {
      const facts = await this.readInfo(file, options.forceShare ?? false);
      return facts.hasDataFile ? [] : facts.detail?.snapshots ?? [];
    }
    const state = await this.stateForChange(file);
    const list = state.detail?.snapshots ?? [];
    const found = request.action === 'apply'
      ? list.some((s) => s.id === request.name) || list.some((s) => s.name === request.name)
      : list.some((s) => s.name === request.name);
    throwIfRefused(validateSnapshot(state, request, found), file);
    const flag = request.action === 'create' ? '-c' : request.action === 'delete' ? '-d' : '-a';
    const spec = await this.readSpec((await this.hostP).resolve(file));
    await this.run('write', ['snapshot', '-q', flag, request.name, spec], { arg: spec, file });
    return undefined;
  }

  /** `qemu-img convert -O raw` of the sources' chains into a temporary name beside the target, published when complete (local images). */
  private async importRaw(imagePath: string, options: CreateOptions, chains: SourceChain[], source: ImportSource, opts: ImportOptions): Promise<void> {
    const host = await this.hostP;
    const size = chainsSize(chains);
    throwIfRefused(validateImport({
      ...sourceFacts(chains, size), targetFormat: 'raw', options, sameFile: await this.sameAsAny(imagePath, chains),
      ...(source.maxSize !== undefined ? { maxSize: source.maxSize } : {}), ...(opts.bitmaps ? { bitmaps: true } : {}),
      ...(opts.compressed ? { compress: true } : {}), ...(opts.overBacking ? { overBacking: true } : {}),
    }), imagePath);
    await host.assertNewImageFiles(imagePath, { adoptDataFile: false });
    const abs = host.resolve(imagePath);
    const pub = host.publication();
    try {
      const tmp = await pub.folderBeside(abs);
      await this.run('write', ['convert', '-q', ...sparseArgs(opts), '-O', 'raw', ...snapshotArgs(source.snapshot), ...chains.map((c) => c.spec), 'img.raw'],
        { arg: chains[0]!.spec, file: chains[0]!.label }, tmp);
      pub.stage(path.join(tmp, 'img.raw'), abs, 'image');
      await pub.publish({ durable: opts.durable ?? true });
    } catch (e) {
      await pub.abort();
      throw e;
    }
    opts.progress?.(Number(size), Number(size));
  }

  /** `qemu-img convert -n`: the sources' chains as explicit file nodes, over the existing image (local images). */
  async convertInto(file: string, source: ImportSource, opts: ImportOptions = {}): Promise<void> {
    await this.binary();
    const host = await this.hostP;
    if (host.label !== '') throw new Qcow2Error('UNSUPPORTED', `convert -n works on local images only: '${file}' is on ${host.label}`, { file });
    await this.withLocalChains(file, [source, ...(opts.moreSources ?? [])], opts, async (chains) => {
      const size = chainsSize(chains);
      throwIfRefused(validateImport({
        ...sourceFacts(chains, size), options: {}, sameFile: await this.sameAsAny(file, chains), existingTarget: true, ...(opts.overBacking ? { overBacking: true } : {}),
      }), file);
      const state = await this.stateForChange(file);
      throwIfRefused(validateConvertInto(size, state.virtualSize), file);
      const spec = await this.readSpec(host.resolve(file));
      // -n -B: only the sources' top layers are copied; qemu-img does not open the name with -n.
      const backing = opts.overBacking ? ['-B', spec] : [];
      await this.run('write', ['convert', '-q', '-n', ...backing, ...sparseArgs(opts), ...snapshotArgs(source.snapshot), '-O', 'qcow2', ...chains.map((c) => c.spec), spec], { arg: spec, file });
      opts.progress?.(Number(size), Number(size));
    });
  }

  /** `qemu-img compare` over both chains, every layer an explicit file node. */
  async compare(a: ImageRef, b: ImageRef, options: CompareOptions = {}): Promise<CompareResult> {
    await this.binary();
    const ca = await this.guestChain(a.path, a.format ?? (await this.formatOf(a.path, 'probe'))!);
    const cb = await this.guestChain(b.path, b.format ?? (await this.formatOf(b.path, 'probe'))!);
    const args = ['compare', ...(options.strict ? ['-s'] : []), ...(options.forceShare ? ['-U'] : []), ca.spec, cb.spec];
    const r = await this.spawn('read', args);
    if (r.status !== 0 && r.status !== 1) throw qemuImgError(r, { command: 'compare', arg: ca.spec, file: a.path, limits: this.limits.read });
    options.progress?.(1, 1);
    return { status: r.status, lines: r.stdout.split('\n').filter((l) => l !== '') };
  }

  /** `qemu-img commit [-d] [-b BASE]` over the chain as explicit file nodes. */
  async commit(file: string, request: CommitRequest, options: CommitOptions = {}): Promise<void> {
    await this.binary();
    const host = await this.hostP;
    if (host.label !== '') {
      // Commit finds its base by real path, which a remote host's files do not give here.
      throw new Qcow2Error('UNSUPPORTED', `commit works on local images only: '${file}' is on ${host.label}`, { file });
    }
    await this.stateForChange(file);
    const c = await this.guestChain(file, 'qcow2');
    const real = (p: string) => { try { return fs.realpathSync(p); } catch { return undefined; } };
    let base = c.layers.length > 1 ? 1 : -1;
    if (request.base !== undefined && c.layers.length > 1) {
      base = -1;
      for (let i = 0; i + 1 < c.layers.length; i++) {
        const want = real(resolveBackingName(c.layers[i]!.path, request.base));
        if (want !== undefined && want === real(c.layers[i + 1]!.path)) { base = i + 1; break; }
      }
    }
    const regular = (p: string) => { try { return fs.statSync(p).isFile(); } catch { return false; } };
    const facts: CommitFacts = { file, hasBacking: c.layers.length > 1, baseFound: base > 0 };
    if (base > 0 && !regular(c.layers[base]!.path)) facts.notRegular = c.layers[base]!.path;
    throwIfRefused(validateCommit(request, facts), file);
    const args = ['commit', '-q', ...(request.keep || request.base !== undefined ? ['-d'] : [])];
    if (base > 1) args.push('-b', c.layers[base]!.path);
    args.push(c.spec);
    await this.run('write', args, { arg: c.spec, file });
    options.progress?.(1, 1);
  }

  async stat(file: string): Promise<FileStat | undefined> {
    const st = await (await this.hostP).stat(file);
    return st === undefined ? undefined : { kind: st.kind, size: st.size, id: st.id };
  }

  /** Header reads by this package's code, as for the native engine (qemu-img is not run). */
  async chain(file: string, seen: string): Promise<ImageChain> {
    return (await this.hostP).chain(file, seen);
  }

  async dependents(file: string, candidates: readonly string[]): Promise<Dependents> {
    return (await this.hostP).dependents(file, candidates);
  }
}


/** convert -l as qemu-img takes it: an id or name, or snapshot.id/snapshot.name (commas doubled). */
/** A source of convert as qemu-img reads it: its chain's node spec and size, the local file, its format and name. */
interface SourceChain { spec: string; size: bigint; path: string; format: string; label: string; copied?: boolean }

/** The sources one after another, each taking whole sectors (qemu-img's total_sectors). */
function chainsSize(chains: readonly SourceChain[]): bigint {
  return chains.reduce((t, c) => t + roundToSector(c.size), 0n);
}

/** What the rules need of the sources: the first format import does not read (else the first's), their size and count. */
function sourceFacts(chains: readonly SourceChain[], size: bigint): { sourceFormat: string; sourceSize: bigint; sources: number } {
  const odd = chains.find((c) => c.format !== 'raw' && c.format !== 'qcow2');
  return { sourceFormat: (odd ?? chains[0]!).format, sourceSize: size, sources: chains.length };
}

/** convert -S, as given. */
function sparseArgs(opts: ImportOptions): string[] {
  return opts.sparse !== undefined ? ['-S', String(opts.sparse)] : [];
}

function snapshotArgs(sel: ImportSource['snapshot']): string[] {
  if (sel === undefined) return [];
  if ('idOrName' in sel) return ['-l', sel.idOrName];
  const esc = (v: string) => v.replace(/,/g, ',,');
  const parts = [...(sel.id !== undefined ? [`snapshot.id=${esc(sel.id)}`] : []), ...(sel.name !== undefined ? [`snapshot.name=${esc(sel.name)}`] : [])];
  return ['-l', parts.join(',')];
}
