// What the Image resource does on each call of the Pulumi engine: check (schema), diff
// (provider/rules decides: none, amend, replace or refuse), create / update / read / delete
// through an Engine. The provider object Pulumi serializes is a thin shim that requires this
// module at run time (image.ts), so the state never carries a copy of this code.

import * as path from 'path';
import { fileURLToPath } from 'url';
import { getEngine } from '../engines';
import type { Engine, EngineName, ImageChain, ImportSource } from '../engines/engine';
import { Qcow2Error } from '../model/errors';
import type { ImageFacts } from '../model/facts';
import { chainDigest, type BackingIdentity, type ChainLayer } from '../model/chain';
import { propertyOf } from '../model/names';
import type { CreateOptions, Preallocation } from '../model/options';
import { parseSize } from '../model/size';
import { planBitmaps } from '../rules/bitmaps';
import { amendRequestOf, classifyChange, refusalMessage } from '../rules/change';
import { classifyChain, deleteRefusal, keepsGuestView } from '../rules/chain';
import { validateCreate, withCreateWayForward } from '../rules/create';
import { type References, resolvedReferences, validateDeclaredReferences, validateRecordedReferences } from '../rules/references';
import { validateSizeValue } from '../rules/size';
import type { BitmapSpec, BitmapStep, Change, DesiredSpec, WorldFacts } from '../rules/types';
import type { ConnectionArgs } from '../transport/ssh/connection';
import { describeHolder, imageHolders } from '../transport/qmp';
import { applyLive, liveView, LivePlan, LiveView } from '../engines/live';
import { findPackageFile, readPackageFile } from './package-files';
import { UNKNOWN, validateInputs } from './schema';
import { formatChecksum, parseChecksum } from '../transport/http/checksum';
import { isHttpUrl, redactUrl } from '../transport/http/url';
import { importProgress } from './progress';
import { ImageOutputs, factOutputs, factsOfState } from './state';

export type { ImageOutputs };

/**
 * The version of the code that last wrote an image's state (an output, for the record). It never
 * causes a change by itself: every call runs the installed code, so an upgrade plans nothing.
 */
export const PROVIDER_VERSION: string = (() => {
  const ours = (p: string) => {
    const pkg = JSON.parse(readPackageFile(p)) as { name?: string; version?: string };
    return pkg.name === 'pulumi-qcow2' && pkg.version !== undefined;
  };
  const file = findPackageFile('package.json', ours);
  return file === undefined ? '0.0.0' : (JSON.parse(readPackageFile(file)) as { version: string }).version;
})();

/** Inputs as Pulumi hands them to the provider (after check): the create options, and ours. */
export interface ImageInputs extends Omit<CreateOptions, 'size' | 'adoptDataFile'> {
  path: string;
  /** Bytes, or qemu-img size text ("20G"). */
  size?: number | string;
  adopt?: boolean;
  /** A file or an http(s) URL. */
  source?: string;
  /** `sha256:<hex>` / `sha512:<hex>`: required for a URL. */
  sourceChecksum?: string;
  /** Bytes, or qemu-img size text; default `size`. */
  sourceMaxSize?: number | string;
  /** Files a qcow2 source may name (backing files, data files). */
  sourceReferences?: string[];
  sourceFormat?: 'raw' | 'qcow2';
  allowShrink?: boolean;
  allowReplace?: boolean;
  engine?: EngineName;
  dataFileOnDelete?: 'auto' | 'keep' | 'delete';
  deleteAdopted?: boolean;
  /** The remote host the image is on (its paths are paths there); absent: this machine. */
  connection?: ConnectionArgs;
  /** Set by the Image class when backingFile is an Image (or its outputs): that image's identity. */
  backingIdentity?: BackingIdentity;
  /** ...and its resource id, which a preview does not know when it creates or replaces that image. */
  backingImageId?: string;
  /** The backing chain digest the user accepts as holding the data this image was built on. */
  acceptBacking?: string;
  /** The persistent dirty bitmaps the image should have. */
  bitmaps?: BitmapSpec[];
  /** Remove bitmaps the image has and `bitmaps` does not list. */
  manageAllBitmaps?: boolean;
  /** The QMP socket of the QEMU process that holds the image (a running VM): grows and bitmap changes go through it. */
  qmpSocket?: string;
}

const isUnknown = (v: unknown) => v === UNKNOWN;

/** A user-facing error that names the property and the way forward. */
function failure(property: string, message: string): Error {
  return new Qcow2Error('REFUSED', `${property}: ${message}`, { property });
}

/** Paths on a remote host are absolute (check refuses others); local ones resolve against the program's folder. */
function absolute(p: string, remote = false): string {
  return remote ? path.posix.normalize(p) : path.resolve(process.cwd(), p);
}

const isRemote = (i: { connection?: unknown }) => i.connection !== undefined && i.connection !== null;

/** `file:` names a file on this machine (uploaded to a remote host as it is imported). */
const LOCAL_SOURCE = /^file:/;

/**
 * The source as the state records it: a URL as given; a file as an absolute path on the image's
 * host, or, for an image on a remote host, `file:` and the absolute path of a file on this machine.
 */
function sourceOf(v: string, remote = false): string {
  if (isHttpUrl(v)) return v;
  if (!remote) return absolute(v);
  if (!LOCAL_SOURCE.test(v)) return absolute(v, true);
  return `file:${v.startsWith('file://') ? fileURLToPath(v) : absolute(v.slice('file:'.length))}`;
}

/** Where a recorded source is read: on the image's host, or (file:, remote images) on this machine. */
function sourceLocation(recorded: string, remote: boolean): Pick<ImportSource, 'path' | 'host'> {
  return remote && LOCAL_SOURCE.test(recorded) ? { path: recorded.slice('file:'.length), host: 'local' } : { path: recorded };
}

/** The host name an image is on: connection.host, '' for this machine. */
function hostOf(i: { connection?: ConnectionArgs }): string {
  return isRemote(i) && typeof i.connection!.host === 'string' ? i.connection!.host : '';
}

/**
 * A data file as created: "dev:ino:path". Delete removes that path only while it is still that
 * file, whatever the header names by then (a refresh records the header's name in dataFile).
 */
async function identityOf(engine: Engine, file: string): Promise<string | undefined> {
  const st = await engine.stat(file);
  return st === undefined ? undefined : `${st.id}:${file}`;
}

function recordedDataFileOf(identity: string): { path: string; identity: string } | undefined {
  const m = /^(\d+:\d+):(.+)$/.exec(identity);
  return m ? { path: m[2]!, identity: m[1]! } : undefined;
}

/** The references an image's header holds, resolved as QEMU opens them. */
function referencesOf(file: string, facts: ImageFacts): References {
  return resolvedReferences(file, { ...(facts.dataFile ? { dataFile: facts.dataFile } : {}), ...(facts.backingFile ? { backingFile: facts.backingFile } : {}) });
}

function sizeOf(v: number | string | undefined, property = 'size'): bigint | undefined {
  if (v === undefined || isUnknown(v)) return undefined;
  if (typeof v !== 'string') {
    const bad = validateSizeValue(v, property);
    if (bad) throw new Qcow2Error('REFUSED', bad.message, { property });
    return BigInt(v);
  }
  try {
    return parseSize(v);
  } catch (e) {
    throw failure(property, `${JSON.stringify(v)} is not a size: ${(e as Error).message.split('\n')[0]}. Use bytes or a number with k, M, G, T, P or E`);
  }
}

function engineOf(name: EngineName | undefined, connection?: ConnectionArgs): Engine {
  return getEngine(name ?? 'native', connection !== undefined && connection !== null ? { connection } : {});
}

/** Whether anything is at `file` on the engine's host. */
async function exists(engine: Engine, file: string): Promise<boolean> {
  return (await engine.stat(file)) !== undefined;
}

/** A checksum as the state records it (`sha256:<lower-case hex>`); throws a failure naming sourceChecksum. */
function checksumOf(v: string): string {
  return formatChecksum(parseChecksum(v));
}

/** What the state recorded about the source ('' for none, or for a state from before it was recorded). */
function recordedSource(o: Partial<ImageOutputs>): { source: string; sourceChecksum: string } {
  return { source: o.source ?? '', sourceChecksum: o.sourceChecksum ?? '' };
}

/** Inputs as rules' desired spec; values unknown during preview are left out (not judged). */
function desiredOf(i: ImageInputs): DesiredSpec {
  const d: DesiredSpec = {};
  const set = <K extends keyof DesiredSpec>(k: K, v: DesiredSpec[K] | string | undefined) => {
    if (v !== undefined && !isUnknown(v)) d[k] = v as DesiredSpec[K];
  };
  const remote = isRemote(i);
  if (i.path !== undefined && !isUnknown(i.path)) d.path = absolute(i.path, remote);
  if (!isUnknown(i.connection) && !(remote && isUnknown(i.connection!.host))) d.host = hostOf(i);
  const size = sizeOf(i.size);
  if (size !== undefined) d.size = size;
  set('compat', i.compat);
  set('clusterSize', i.clusterSize);
  set('refcountBits', i.refcountBits);
  set('lazyRefcounts', i.lazyRefcounts);
  set('extendedL2', i.extendedL2);
  set('compressionType', i.compressionType);
  set('preallocation', i.preallocation);
  if (i.backingFile !== undefined && !isUnknown(i.backingFile)) d.backingFile = absolute(i.backingFile, remote);
  if (isUnknown(i.backingFile) || isUnknown(i.backingImageId)) d.backingFileUnknown = true;
  if (i.backingIdentity !== undefined) {
    // Not known yet (a preview that changes the base) unless its identity is there.
    const b = i.backingIdentity;
    d.backingIdentity = hasUnknown(b) || typeof b !== 'object' || typeof b.identity !== 'string' || b.identity === '' ? 'unknown' : { identity: b.identity, from: typeof b.from === 'string' ? b.from : '' };
  }
  set('acceptBacking', i.acceptBacking);
  set('backingFormat', i.backingFormat);
  if (i.dataFile !== undefined && !isUnknown(i.dataFile)) d.dataFile = absolute(i.dataFile, remote);
  set('dataFileRaw', i.dataFileRaw);
  set('allowShrink', i.allowShrink);
  set('allowReplace', i.allowReplace);
  if (i.source !== undefined && !isUnknown(i.source)) d.source = sourceOf(i.source, remote);
  if (i.sourceChecksum !== undefined && !isUnknown(i.sourceChecksum)) d.sourceChecksum = checksumOf(i.sourceChecksum);
  if (i.bitmaps !== undefined && !hasUnknown(i.bitmaps)) d.bitmaps = i.bitmaps.map((b) => ({ ...b }));
  set('manageAllBitmaps', i.manageAllBitmaps);
  if (i.qmpSocket !== undefined && !isUnknown(i.qmpSocket)) d.qmpSocket = absolute(i.qmpSocket);
  return d;
}

function createOptionsOf(i: ImageInputs): CreateOptions {
  const o: CreateOptions = {};
  const size = sizeOf(i.size);
  if (size !== undefined) o.size = size;
  if (i.compat !== undefined) o.compat = i.compat;
  if (i.clusterSize !== undefined) o.clusterSize = i.clusterSize;
  if (i.refcountBits !== undefined) o.refcountBits = i.refcountBits;
  if (i.lazyRefcounts !== undefined) o.lazyRefcounts = i.lazyRefcounts;
  if (i.extendedL2 !== undefined) o.extendedL2 = i.extendedL2;
  if (i.compressionType !== undefined) o.compressionType = i.compressionType;
  if (i.preallocation !== undefined) o.preallocation = i.preallocation;
  if (i.backingFile !== undefined) o.backingFile = absolute(i.backingFile, isRemote(i));
  if (i.backingFormat !== undefined) o.backingFormat = i.backingFormat;
  if (i.dataFile !== undefined) o.dataFile = absolute(i.dataFile, isRemote(i));
  if (i.dataFileRaw !== undefined) o.dataFileRaw = i.dataFileRaw;
  return o;
}

/** What the state records about the chain: the chain as on disk now, and this image's identity with it. */
type ChainRecord = Pick<ImageOutputs, 'backingChain' | 'backingDrift' | 'identity' | 'identityFrom'>;

/** Record the chain below `file` as it is now (create, update): `from` is the identity vouched as the one before. */
async function recordChain(engine: Engine, file: string, from: string): Promise<ChainRecord> {
  return chainRecord(file, await engine.chain(file, new Date().toISOString()), from);
}

/** The record of a chain as read now. */
function chainRecord(file: string, { self, view }: ImageChain, from: string): ChainRecord {
  remember(file, view.layers);
  return { backingChain: view.layers, backingDrift: '', identity: self ? chainDigest([self, ...view.layers]) : '', identityFrom: from };
}

/** The identity of an image's own layer with a chain as recorded (undefined when the image is not there). */
function identityWith(self: ChainLayer | undefined, chain: readonly ChainLayer[]): string | undefined {
  return self && chainDigest([self, ...chain]);
}

/** The identity of `file` with a chain as recorded (undefined when the file is not there). */
async function chainIdentityOf(engine: Engine, file: string, chain: readonly ChainLayer[]): Promise<string | undefined> {
  return identityWith((await engine.chain(file, '')).self, chain);
}

/** The chain as recorded and as on disk, for the rules; undefined for states written before chains were recorded. */
function chainFacts(engine: Engine, olds: ImageOutputs): Promise<WorldFacts['chain']> | undefined {
  if (!Array.isArray(olds.backingChain)) return undefined;
  remember(olds.path, olds.backingChain);
  if (olds.backingChain.length === 0 && !olds.backingFile) return undefined;
  const recorded = olds.backingChain;
  return engine.chain(olds.path, '').then((c) => ({ recorded, current: c.view }));
}

/**
 * Images this provider has seen in this run, with the files of their recorded chains: a delete
 * asks whether any of them still uses the image (they need not be in the image's folder).
 */
const knownChains = new Map<string, string[]>();
function remember(file: string, chain: readonly ChainLayer[]): void {
  knownChains.set(file, chain.map((l) => l.path));
}

function outputsOf(i: ImageInputs, facts: ImageFacts, extra: { createdDataFile: boolean; adopted: boolean; dataFileIdentity?: string; chain: ChainRecord; source?: { source: string; sourceChecksum: string } }): ImageOutputs {
  return {
    ...extra.chain,
    path: absolute(i.path, isRemote(i)),
    host: hostOf(i),
    // Kept for refresh and destroy, which run with the state alone; a secret in the state
    // (the resource registers it with additionalSecretOutputs).
    ...(isRemote(i) ? { connection: i.connection! } : {}),
    engine: i.engine ?? 'native',
    ...factOutputs(facts),
    source: extra.source?.source ?? '',
    sourceChecksum: extra.source?.sourceChecksum ?? '',
    preallocation: i.preallocation ?? (extra.adopted ? '' : i.dataFileRaw ? 'metadata' : 'off'),
    createdDataFile: extra.createdDataFile,
    dataFileIdentity: extra.dataFileIdentity ?? '',
    adopted: extra.adopted,
    dataFileOnDelete: i.dataFileOnDelete ?? 'auto',
    deleteAdopted: i.deleteAdopted ?? false,
    qmpSocket: i.qmpSocket !== undefined ? absolute(i.qmpSocket) : '',
    providerVersion: PROVIDER_VERSION,
  };
}

/** The facts with what the QEMU holding the image reports instead of the file (its size, its bitmaps). */
function withLive(facts: ImageFacts, view: LiveView): ImageFacts {
  return {
    ...facts, virtualSize: view.virtualSize, bitmaps: view.bitmaps.map((b) => b.name),
    detail: { snapshots: facts.detail?.snapshots ?? [], bitmaps: view.bitmaps, ...(facts.detail?.fullBackingFile !== undefined ? { fullBackingFile: facts.detail.fullBackingFile } : {}) },
  };
}

/** The running process that holds `file` for writing, named; undefined when none does. */
function writerOf(file: string): string | undefined {
  const h = imageHolders(file).find((x) => x.uses.includes('write'));
  return h && describeHolder(h);
}

/**
 * The image's facts as read from the file, or, when qmpSocket is given and a process holds the
 * image (`holder`: writerOf(file), looked up once by the caller), as the QEMU holding it reports them.
 */
async function withHolder(info: ImageFacts, file: string, qmpSocket: string | undefined, holder: string | undefined): Promise<ImageFacts> {
  if (qmpSocket === undefined || qmpSocket === '' || holder === undefined) return info;
  return withLive(info, await liveView(qmpSocket, file));
}

/** Carry out the bitmap steps offline, in order, through the engine. */
async function applyBitmapSteps(engine: Engine, file: string, steps: readonly BitmapStep[]): Promise<void> {
  for (const step of steps) await engine.bitmap(file, step.name, step.actions);
}

// ---------------------------------------------------------------------------------------------

export async function check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures: Array<{ property: string; reason: string }> }> {
  const failures = validateInputs(news);
  if (failures.length === 0) {
    const i = news as unknown as ImageInputs;
    for (const [property, check] of [
      ['size', () => sizeOf(i.size)],
      ['sourceMaxSize', () => sizeOf(i.sourceMaxSize, 'sourceMaxSize')],
      ['sourceChecksum', () => i.sourceChecksum !== undefined && !isUnknown(i.sourceChecksum) && checksumOf(i.sourceChecksum)],
    ] as const) {
      try {
        check();
      } catch (e) {
        failures.push({ property, reason: (e as Error).message });
      }
    }
    if (typeof i.source === 'string' && !isUnknown(i.source) && isHttpUrl(i.source) && i.sourceChecksum === undefined) {
      failures.push({ property: 'sourceChecksum', reason: `sourceChecksum is required for a URL source: give the 'sha256:<hex>' or 'sha512:<hex>' the publisher lists for ${redactUrl(i.source)}` });
    }
    for (const k of ['sourceChecksum', 'sourceMaxSize', 'sourceReferences', 'sourceFormat'] as const) {
      if (i[k] !== undefined && i.source === undefined) failures.push({ property: k, reason: `${k} applies to an imported image only: set source too, or remove ${k}` });
    }
    await checkPlacement(i, failures);
    // Create-time legality of the whole combination, once every value is known.
    // (The base's identity plays no part in creating: unknown in every preview that creates or changes the base.)
    if (failures.length === 0 && !hasUnknown({ ...news, backingIdentity: undefined, backingImageId: undefined })) {
      const opts = createOptionsOf(i);
      if (i.adopt || i.source) delete opts.size;
      if (opts.size === undefined && !i.adopt && !i.source && opts.backingFile === undefined) {
        failures.push({ property: 'size', reason: 'size is required unless the image is adopted, imported from source, or sized by its backingFile. Set size (bytes, or a size such as "20G"), or one of adopt, source or backingFile' });
      } else {
        const r = validateCreate({ ...opts, ...(i.adopt && opts.dataFile ? { adoptDataFile: true } : {}) });
        if (!r.ok) failures.push({ property: propertyOf(r.refusal.property), reason: withCreateWayForward(r.refusal) });
        else if (i.bitmaps !== undefined) {
          // The bitmaps of a new image: every one added, judged as qemu-img bitmap would judge it.
          const fresh = planBitmaps({ bitmaps: [], detail: { snapshots: [], bitmaps: [] }, clusterSize: opts.clusterSize ?? 65536, path: absolute(i.path, isRemote(i)) },
            i.bitmaps, false, { compat: opts.compat ?? '1.1', virtualSize: opts.size ?? 0n });
          if (fresh.action === 'refuse') failures.push({ property: 'bitmaps', reason: fresh.reason });
        }
      }
    }
  }
  return { inputs: news, failures };
}

/**
 * Where the files are: with a connection, its settings must be valid (checked without
 * connecting) and every path absolute on that host; a `file:` source names a file here.
 */
async function checkPlacement(i: ImageInputs, failures: Array<{ property: string; reason: string }>): Promise<void> {
  if (!isRemote(i) || isUnknown(i.connection)) return;
  if (!hasUnknown(i.connection)) {
    const { resolveConnection } = await import('../transport/ssh/connection');
    try {
      resolveConnection(i.connection!);
    } catch (e) {
      failures.push({ property: (Qcow2Error.isInstance(e) && e.property) || 'connection', reason: (e as Error).message });
    }
  }
  const host = hostOf(i) || 'the host';
  if (typeof i.qmpSocket === 'string' && !isUnknown(i.qmpSocket)) {
    failures.push({
      property: 'qmpSocket',
      reason: `qmpSocket names a QEMU on this machine, and the image is on ${host}: live changes through a remote QEMU are not supported. ` +
        'Remove qmpSocket (a change to an image a QEMU there holds is refused by its lock), or stop the VM for the change',
    });
  }
  for (const k of ['path', 'dataFile', 'backingFile', 'source'] as const) {
    const v = i[k];
    if (typeof v !== 'string' || isUnknown(v) || path.posix.isAbsolute(v) || (k === 'source' && (LOCAL_SOURCE.test(v) || isHttpUrl(v)))) continue;
    failures.push({
      property: k,
      reason: `${k} '${v}' must be an absolute path on ${host}: with a connection, paths name files there${k === 'source' ? ' (a file on this machine is given as a file: URL, e.g. file:./disk.raw)' : ''}`,
    });
  }
}

function hasUnknown(v: unknown): boolean {
  if (isUnknown(v)) return true;
  if (Array.isArray(v)) return v.some(hasUnknown);
  if (v && typeof v === 'object') return Object.entries(v).some(([k, x]) => !k.startsWith('__') && hasUnknown(x));
  return false;
}

/** Facts only the disk knows, gathered here (through the engine, on the image's host) so rules stay pure. */
async function factsFor(engine: Engine, current: ImageFacts, d: DesiredSpec, holder: string | undefined): Promise<WorldFacts> {
  const facts: WorldFacts = {};
  // A running process that holds the image for writing (a VM): only live changes through its QEMU.
  if (holder !== undefined) facts.holder = holder;
  if (d.dataFile !== undefined && d.dataFile !== (current.dataFile ?? '')) {
    const st = await engine.stat(d.dataFile);
    facts.desiredDataFile = st === undefined ? { exists: false } : { exists: true, size: BigInt(st.size) };
  }
  return facts;
}

/** The image as the state records it, on the host it is on ('' for this machine). */
function recordedFacts(olds: ImageOutputs): ImageFacts {
  return { ...factsOfState(olds), host: olds.host ?? '' };
}

/** The connection without its host: what a change of credentials (state only) compares. */
function credentials(c: ConnectionArgs | undefined): string {
  if (c === undefined || c === null) return '';
  const { host: _host, ...rest } = c;
  return JSON.stringify(rest, Object.keys(rest).sort());
}

/**
 * How to reach the image a state records: the program's connection when it names the same host
 * (its credentials may be new), else the recorded one (a new host is a replacement: the old image
 * is still where the state says).
 */
function connectionFor(olds: ImageOutputs, news: ImageInputs): ConnectionArgs | undefined {
  const c = news.connection;
  if (c === undefined || c === null || hasUnknown(c)) return olds.connection;
  return hostOf(news).toLowerCase() === (olds.host ?? '').toLowerCase() ? c : olds.connection;
}

/**
 * The image as its header says now (or, while a QEMU holds it, as that QEMU reports it); path,
 * host and preallocation from the state (the file does not record them). Of the detail, the
 * bitmaps and snapshots are kept: the rules judge each bitmap's granularity, recording and
 * consistency, and each snapshot's sizes for a downgrade.
 */
function factsOnDisk(info: ImageFacts, olds: ImageOutputs): ImageFacts {
  const { detail, dataFile, backingFile, backingFormat, ...facts } = info;
  const f: ImageFacts = { ...facts, path: olds.path, host: olds.host ?? '' };
  // The snapshots too: whether a downgrade is possible depends on each one's disk and VM state size.
  if (detail) f.detail = { snapshots: detail.snapshots, bitmaps: detail.bitmaps };
  if (dataFile) f.dataFile = dataFile;
  if (backingFile) f.backingFile = backingFile;
  if (backingFormat) f.backingFormat = backingFormat;
  if (olds.preallocation) f.preallocation = olds.preallocation as Preallocation;
  return f;
}

/**
 * What the inputs mean for the image as it is on disk now (one header read), with the state's
 * record of it, so that changes made outside the program show in the plan and in refusals.
 */
async function plan(olds: ImageOutputs, news: ImageInputs): Promise<{ changes: Change[]; desired: DesiredSpec; current: ImageFacts; engine: Engine }> {
  const desired = desiredOf(news);
  const recorded = recordedFacts(olds);
  // The engine the program asks for; during a preview it may not be known yet: then the one that wrote the image.
  const engine = engineOf(isUnknown(news.engine) ? olds.engine : news.engine, connectionFor(olds, news));
  // One header read: a missing image is NOT_FOUND (on a remote host every look is a round trip);
  // the chain's identities, when there is a chain, are read at the same time.
  const chainRead = chainFacts(engine, olds);
  chainRead?.catch(() => undefined);
  const info = await engine.info(olds.path, { forceShare: true }).catch((e: unknown) => {
    if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') return undefined;
    throw e;
  });
  if (info === undefined) {
    return { changes: classifyChange(recorded, desired, { imageMissing: true, recordedSource: recordedSource(olds) }), desired, current: recorded, engine };
  }
  // The QEMU to ask is the one the program names now; during a preview it may not be known yet: then the recorded one.
  const socket = isUnknown(news.qmpSocket) ? olds.qmpSocket : desired.qmpSocket;
  const holder = isRemote(olds) ? undefined : writerOf(olds.path);
  const current = factsOnDisk(await withHolder(info, olds.path, socket, holder), olds);
  const chain = await chainRead;
  const facts: WorldFacts = { ...(await factsFor(engine, current, desired, holder)), recorded, recordedSource: recordedSource(olds), ...(chain ? { chain } : {}) };
  return { changes: classifyChange(current, desired, facts), desired, current, engine };
}

function throwIfRefused(changes: Change[]): void {
  const refusal = refusalMessage(changes);
  if (refusal) throw new Qcow2Error('REFUSED', refusal, { property: changes.find((c) => c.action === 'refuse')!.property });
}

export async function diff(_id: string, olds: ImageOutputs, news: ImageInputs): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
  const replaces: string[] = [];
  let changes = false;
  if (isUnknown(news.path)) changes = true;
  const engine = news.engine ?? 'native';
  if (isUnknown(engine) || engine !== olds.engine) changes = true;
  for (const k of ['dataFileOnDelete', 'deleteAdopted'] as const) {
    const now = news[k] ?? (k === 'dataFileOnDelete' ? 'auto' : false);
    if (now !== olds[k]) changes = true;
  }
  if (isUnknown(news.qmpSocket) || (news.qmpSocket !== undefined ? absolute(news.qmpSocket) : '') !== (olds.qmpSocket ?? '')) changes = true;

  // New credentials for the same host change the state only.
  if (!isUnknown(news.connection) && credentials(news.connection) !== credentials(olds.connection)) changes = true;

  const { changes: result } = await plan(olds, news);
  throwIfRefused(result);
  for (const c of result) {
    if (c.action === 'replace') replaces.push(c.property === 'host' ? 'connection' : c.property);
    if (c.action === 'amend' || c.action === 'live') changes = true;
  }
  // Values not known yet can only be judged at update time; report a change so it happens.
  for (const [k, v] of Object.entries(news)) if (!k.startsWith('__') && hasUnknown(v)) changes = true;
  // The new image takes the old one's place only on the same path of the same host: delete first then.
  const samePlace = !replaces.includes('path') && !replaces.includes('connection');
  return { changes: changes || replaces.length > 0, replaces, deleteBeforeReplace: replaces.length > 0 && samePlace };
}

export async function create(inputs: ImageInputs): Promise<{ id: string; outs: ImageOutputs }> {
  const engine = engineOf(inputs.engine, inputs.connection);
  const file = absolute(inputs.path, isRemote(inputs));
  const opts = createOptionsOf(inputs);
  if (inputs.adopt) {
    if (await exists(engine, file)) return adoptImage(engine, file, inputs);
    if (opts.dataFile === undefined || !(await exists(engine, opts.dataFile))) {
      throw failure('adopt', `there is nothing to adopt: no image at ${file}${opts.dataFile ? ` and no data file at ${opts.dataFile}` : ''}. Remove adopt to create a new image`);
    }
    await engine.create(file, { ...opts, adoptDataFile: true });
    // The raw data file is the user's: only the new image goes if its bitmaps cannot be added.
    const info = await addDeclaredBitmaps(engine, file, inputs, false);
    return { id: file, outs: outputsOf(inputs, info, { createdDataFile: false, adopted: false, chain: await recordChain(engine, file, '') }) };
  }
  if (await exists(engine, file)) {
    throw failure('path', `an image already exists at ${file}; it is never overwritten. Set adopt: true to take it over as it is, or choose another path`);
  }
  let source: { source: string; sourceChecksum: string } | undefined;
  if (inputs.source !== undefined) {
    // Through the chosen engine: qemu-img convert for engine "qemu-img", the native import
    // otherwise; a URL is downloaded through the cache first, on this machine, and only the
    // converted image travels to a remote host.
    const remote = isRemote(inputs);
    source = { source: sourceOf(inputs.source, remote), sourceChecksum: inputs.sourceChecksum !== undefined ? checksumOf(inputs.sourceChecksum) : '' };
    const maxSize = sizeOf(inputs.sourceMaxSize, 'sourceMaxSize') ?? sizeOf(inputs.size);
    await engine.import(file, opts, {
      ...sourceLocation(source.source, remote),
      ...(inputs.sourceFormat ? { format: inputs.sourceFormat } : {}),
      ...(source.sourceChecksum !== '' ? { checksum: source.sourceChecksum } : {}),
      ...(maxSize !== undefined ? { maxSize } : {}),
      references: (inputs.sourceReferences ?? []).map((r) => absolute(r, remote)),
    }, importProgress(source.source));
  } else {
    await engine.create(file, opts);
  }
  const created = opts.dataFile !== undefined;
  const info = await addDeclaredBitmaps(engine, file, inputs, created);
  const dataFileIdentity = created ? await identityOf(engine, opts.dataFile!) : undefined;
  return { id: file, outs: outputsOf(inputs, info, { createdDataFile: created, adopted: false, ...(dataFileIdentity ? { dataFileIdentity } : {}), chain: await recordChain(engine, file, ''), ...(source ? { source } : {}) }) };
}

/**
 * Add the declared bitmaps to an image created just now, and read its facts. When they cannot
 * be added the new image is removed again (with its data file only if that was made too), so
 * no image short of its inputs is left behind.
 */
async function addDeclaredBitmaps(engine: Engine, file: string, inputs: ImageInputs, removeDataFile: boolean): Promise<ImageFacts> {
  const info = await engine.info(file, { forceShare: true });
  if (inputs.bitmaps === undefined || inputs.bitmaps.length === 0) return info;
  const plan = planBitmaps({ ...info, path: file }, inputs.bitmaps, false, { compat: info.compat, virtualSize: info.virtualSize });
  try {
    if (plan.action === 'refuse') throw failure('bitmaps', plan.reason);
    if (plan.action === 'amend') await applyBitmapSteps(engine, file, plan.to as BitmapStep[]);
  } catch (e) {
    await engine.remove(file, { dataFile: removeDataFile });
    throw e;
  }
  return engine.info(file, { forceShare: true });
}

/** Take over an existing image: verify it matches the inputs, change nothing. */
async function adoptImage(engine: Engine, file: string, inputs: ImageInputs): Promise<{ id: string; outs: ImageOutputs }> {
  const info = await engine.info(file, { forceShare: true });
  const declared: References = {};
  if (inputs.dataFile !== undefined) declared.dataFile = absolute(inputs.dataFile, isRemote(inputs));
  if (inputs.backingFile !== undefined) declared.backingFile = resolvedReferences(file, { backingFile: inputs.backingFile }).backingFile!;
  const undeclared = validateDeclaredReferences(file, referencesOf(file, info), declared);
  if (undeclared) throw failure(undeclared.property, undeclared.message);
  const outs = outputsOf(inputs, info, { createdDataFile: false, adopted: true, chain: await recordChain(engine, file, '') });
  const desired = desiredOf(inputs);
  delete desired.allowReplace;
  delete desired.allowShrink;
  const mismatches = classifyChange(recordedFacts(outs), desired).filter((c) => c.action !== 'none');
  if (mismatches.length) {
    throw failure('adopt', `the existing image at ${file} does not match the inputs (${mismatches.map((c) => `${c.property}: image has ${String(c.from)}, inputs say ${String(c.to)}`).join('; ')}). Adopting never changes an image: make the inputs match it, then change them in a later update`);
  }
  return { id: file, outs };
}

export async function update(_id: string, olds: ImageOutputs, news: ImageInputs): Promise<{ outs: ImageOutputs }> {
  const file = olds.path;
  const { changes: result, desired, current, engine } = await plan(olds, news);
  throwIfRefused(result);
  // The header must still name what was recorded: a name changed behind our back is never followed.
  const recorded = resolvedReferences(file, { ...(olds.dataFile ? { dataFile: olds.dataFile } : {}), ...(olds.backingFile ? { backingFile: olds.backingFile } : {}) });
  const drift = validateRecordedReferences(file, referencesOf(file, current), recorded);
  if (drift) throw failure(drift.property, drift.message);
  // The identity before the change, vouched for overlays only if the plan keeps the guest view.
  const before = keepsGuestView(result) ? (await chainIdentityOf(engine, file, Array.isArray(olds.backingChain) ? olds.backingChain : [])) ?? '' : '';
  const live = result.filter((c) => c.action === 'live');
  let info: ImageFacts;
  if (live.length > 0) {
    // A running QEMU holds the image (rules refused everything else): that QEMU makes the change.
    const plan: LivePlan = {};
    for (const c of live) {
      if (c.property === 'size') plan.size = c.to as bigint;
      if (c.property === 'bitmaps') plan.bitmaps = c.to as BitmapStep[];
    }
    const view = await applyLive(desired.qmpSocket!, file, plan);
    info = withLive(await engine.info(file, { forceShare: true }), view);
  } else {
    const rebase = result.find((c) => c.action === 'amend' && c.operation === 'rebase');
    if (rebase) await engine.rebase(file, desired.backingFile ?? current.backingFile!, desired.backingFormat ?? current.backingFormat);
    // One amend for everything else, so the change lands all or nothing (rules allowed a shrink
    // only if allowShrink is set); then the bitmaps, judged on the image the amend leaves.
    const req = amendRequestOf(result);
    if (req) await engine.amend(file, req);
    const bitmaps = result.find((c): c is Change & { to: BitmapStep[] } => c.property === 'bitmaps' && c.action === 'amend');
    if (bitmaps) await applyBitmapSteps(engine, file, bitmaps.to);
    info = await engine.info(file, { forceShare: true });
  }
  // The source is recorded anew only where the rules said so (record); otherwise the old record stays.
  const source = recordedSource(olds);
  for (const c of result) if (c.operation === 'record' && (c.property === 'source' || c.property === 'sourceChecksum')) source[c.property] = c.to as string;
  const chain = await recordChain(engine, file, before);
  // Nothing changed on disk or in the chain: what was vouched before still stands.
  if (chain.identity === olds.identity && before !== '') chain.identityFrom = olds.identityFrom ?? '';
  return { outs: outputsOf({ ...news, preallocation: news.preallocation ?? (olds.preallocation as Preallocation | undefined) }, info, { createdDataFile: olds.createdDataFile, adopted: olds.adopted, dataFileIdentity: olds.dataFileIdentity ?? '', chain, source }) };
}

export async function read(id: string, props: ImageOutputs): Promise<{ id: string; props?: ImageOutputs; inputs?: Record<string, unknown> }> {
  const file = props?.path ?? id;
  const engine = engineOf(props?.engine, props?.connection);
  // The header and the chain's identities are read at once (on a remote host, in the same round
  // trip); no look before: gone is NOT_FOUND.
  const recording = !props || !Array.isArray(props.backingChain);
  const chainRead = engine.chain(file, recording ? new Date().toISOString() : '');
  chainRead.catch(() => undefined);
  let file0: ImageFacts;
  try {
    file0 = await engine.info(file, { forceShare: true });
  } catch (e) {
    if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') return { id: '' };
    throw e;
  }
  const info = await withHolder(file0, file, props?.qmpSocket, props?.qmpSocket && !isRemote(props) ? writerOf(file) : undefined);
  const base: ImageInputs = { path: file, engine: props?.engine ?? 'native', ...(props?.qmpSocket ? { qmpSocket: props.qmpSocket } : {}) };
  if (props?.connection) base.connection = props.connection;
  if (props?.preallocation) base.preallocation = props.preallocation as Preallocation;
  const outs = outputsOf(base, info, { createdDataFile: props?.createdDataFile ?? false, adopted: props?.adopted ?? false, dataFileIdentity: props?.dataFileIdentity ?? '', chain: refreshedChain(file, props, info, await chainRead), source: recordedSource(props ?? {}) });
  outs.dataFileOnDelete = props?.dataFileOnDelete ?? 'auto';
  outs.deleteAdopted = props?.deleteAdopted ?? false;
  // Drift (a hand-run qemu-img amend or resize) shows in the inputs too, so the next update
  // puts the image back where the program says it should be. (Never the connection: Pulumi keeps
  // inputs a provider returns as they are, and the connection is a secret.)
  const inputs: Record<string, unknown> = {
    path: file, size: outs.virtualSize, compat: outs.compat, lazyRefcounts: outs.lazyRefcounts, refcountBits: outs.refcountBits,
    dataFileRaw: outs.dataFileRaw, engine: outs.engine,
  };
  if (outs.dataFile) inputs.dataFile = outs.dataFile;
  if (outs.backingFile) inputs.backingFile = outs.backingFile;
  if (outs.backingFormat) inputs.backingFormat = outs.backingFormat;
  return { id: file, props: outs, inputs };
}

/**
 * A refresh keeps the recorded chain (a base that changed stays a difference until the user deals
 * with it) and says what changed; the identity is this file's now, vouching nothing new.
 */
function refreshedChain(file: string, props: ImageOutputs | undefined, info: ImageFacts, read: ImageChain): ChainRecord {
  if (!props || !Array.isArray(props.backingChain)) return chainRecord(file, read, '');
  const recorded = props.backingChain;
  remember(file, recorded);
  const facts = factsOfState({ ...factOutputs(info), path: file });
  const drift = info.backingFile || recorded.length ? classifyChain(facts, {}, { recorded, current: read.view }).find((c) => c.action === 'refuse') : undefined;
  const identity = identityWith(read.self, recorded) ?? '';
  return { backingChain: recorded, backingDrift: drift?.reason ?? '', identity, identityFrom: identity === props.identity ? props.identityFrom ?? '' : '' };
}

export async function remove(_id: string, props: ImageOutputs): Promise<void> {
  if (props.adopted && !props.deleteAdopted) return; // adopted images are the user's: kept
  const engine = engineOf(props.engine, props.connection);
  if (!(await exists(engine, props.path))) return;
  // Never delete a file other images read from: those this provider knows of, and those beside it.
  const users = [...knownChains].filter(([f, chain]) => f !== props.path && chain.includes(props.path)).map(([f]) => f);
  const refusal = deleteRefusal(props.path, (await engine.dependents(props.path, users)).dependents);
  if (refusal) throw new Qcow2Error('REFUSED', refusal.message, { property: refusal.property, file: props.path });
  const policy = props.dataFileOnDelete ?? 'auto';
  const dataFile = policy === 'delete' || (policy === 'auto' && props.createdDataFile);
  // Only the data file this resource recorded, and only while it is still that file: the name in
  // the header is not followed (it may have been pointed at another file).
  // (A state written before identities were recorded: the recorded name, while the header still names it.)
  const recorded = recordedDataFileOf(props.dataFileIdentity ?? '') ?? (props.dataFile ? { path: props.dataFile } : undefined);
  await engine.remove(props.path, { dataFile, ...(dataFile && recorded ? { recordedDataFile: recorded } : {}) });
}
