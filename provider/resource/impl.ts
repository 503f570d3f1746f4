// What the Image resource does on each call of the Pulumi engine: check (schema), diff
// (provider/rules decides: none, amend, replace or refuse), create / update / read / delete
// through an Engine. The provider object Pulumi serializes is a thin shim that requires this
// module at run time (image.ts), so the state never carries a copy of this code.

import * as path from 'path';
import { getEngine } from '../engines';
import type { Engine, EngineName } from '../engines/engine';
import { Qcow2Error } from '../model/errors';
import type { ImageFacts } from '../model/facts';
import { propertyOf } from '../model/names';
import type { CreateOptions, Preallocation } from '../model/options';
import { parseSize } from '../model/size';
import { amendRequestOf, classifyChange, refusalMessage } from '../rules/change';
import { validateCreate, withCreateWayForward } from '../rules/create';
import type { Change, DesiredSpec, WorldFacts } from '../rules/types';
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
}

const isUnknown = (v: unknown) => v === UNKNOWN;

/** A user-facing error that names the property and the way forward. */
function failure(property: string, message: string): Error {
  return new Qcow2Error('REFUSED', `${property}: ${message}`, { property });
}

function absolute(p: string): string {
  return path.resolve(process.cwd(), p);
}

function sizeOf(v: number | string | undefined, property = 'size'): bigint | undefined {
  if (v === undefined || isUnknown(v)) return undefined;
  if (typeof v === 'number') return BigInt(v);
  try {
    return parseSize(v);
  } catch (e) {
    throw failure(property, `${JSON.stringify(v)} is not a size: ${(e as Error).message.split('\n')[0]}. Use bytes or a number with k, M, G, T, P or E`);
  }
}

/** The source as the state records it: a URL as given, a file as an absolute path. */
function sourceOf(v: string): string {
  return isHttpUrl(v) ? v : absolute(v);
}

/** A checksum as the state records it (`sha256:<lower-case hex>`); throws a failure naming sourceChecksum. */
function checksumOf(v: string): string {
  return formatChecksum(parseChecksum(v));
}

/** What the state recorded about the source ('' for none, or for a state from before it was recorded). */
function recordedSource(o: Partial<ImageOutputs>): { source: string; sourceChecksum: string } {
  return { source: o.source ?? '', sourceChecksum: o.sourceChecksum ?? '' };
}

function engineOf(name: EngineName | undefined): Engine {
  return getEngine(name ?? 'native');
}

/** Inputs as rules' desired spec; values unknown during preview are left out (not judged). */
function desiredOf(i: ImageInputs): DesiredSpec {
  const d: DesiredSpec = {};
  const set = <K extends keyof DesiredSpec>(k: K, v: DesiredSpec[K] | string | undefined) => {
    if (v !== undefined && !isUnknown(v)) d[k] = v as DesiredSpec[K];
  };
  if (i.path !== undefined && !isUnknown(i.path)) d.path = absolute(i.path);
  const size = sizeOf(i.size);
  if (size !== undefined) d.size = size;
  set('compat', i.compat);
  set('clusterSize', i.clusterSize);
  set('refcountBits', i.refcountBits);
  set('lazyRefcounts', i.lazyRefcounts);
  set('extendedL2', i.extendedL2);
  set('compressionType', i.compressionType);
  set('preallocation', i.preallocation);
  if (i.backingFile !== undefined && !isUnknown(i.backingFile)) d.backingFile = absolute(i.backingFile);
  set('backingFormat', i.backingFormat);
  if (i.dataFile !== undefined && !isUnknown(i.dataFile)) d.dataFile = absolute(i.dataFile);
  set('dataFileRaw', i.dataFileRaw);
  set('allowShrink', i.allowShrink);
  set('allowReplace', i.allowReplace);
  if (i.source !== undefined && !isUnknown(i.source)) d.source = sourceOf(i.source);
  if (i.sourceChecksum !== undefined && !isUnknown(i.sourceChecksum)) d.sourceChecksum = checksumOf(i.sourceChecksum);
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
  if (i.backingFile !== undefined) o.backingFile = absolute(i.backingFile);
  if (i.backingFormat !== undefined) o.backingFormat = i.backingFormat;
  if (i.dataFile !== undefined) o.dataFile = absolute(i.dataFile);
  if (i.dataFileRaw !== undefined) o.dataFileRaw = i.dataFileRaw;
  return o;
}

function outputsOf(i: ImageInputs, facts: ImageFacts, extra: { createdDataFile: boolean; adopted: boolean; source?: { source: string; sourceChecksum: string } }): ImageOutputs {
  return {
    path: absolute(i.path),
    engine: i.engine ?? 'native',
    ...factOutputs(facts),
    source: extra.source?.source ?? '',
    sourceChecksum: extra.source?.sourceChecksum ?? '',
    preallocation: i.preallocation ?? (extra.adopted ? '' : i.dataFileRaw ? 'metadata' : 'off'),
    createdDataFile: extra.createdDataFile,
    adopted: extra.adopted,
    dataFileOnDelete: i.dataFileOnDelete ?? 'auto',
    deleteAdopted: i.deleteAdopted ?? false,
    providerVersion: PROVIDER_VERSION,
  };
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
    // Create-time legality of the whole combination, once every value is known.
    if (failures.length === 0 && !hasUnknown(news)) {
      const opts = createOptionsOf(i);
      if (i.adopt || i.source) delete opts.size;
      if (opts.size === undefined && !i.adopt && !i.source && opts.backingFile === undefined) {
        failures.push({ property: 'size', reason: 'size is required unless the image is adopted, imported from source, or sized by its backingFile. Set size (bytes, or a size such as "20G"), or one of adopt, source or backingFile' });
      } else {
        const r = validateCreate({ ...opts, ...(i.adopt && opts.dataFile ? { adoptDataFile: true } : {}) });
        if (!r.ok) failures.push({ property: propertyOf(r.refusal.property), reason: withCreateWayForward(r.refusal) });
      }
    }
  }
  return { inputs: news, failures };
}

function hasUnknown(v: unknown): boolean {
  if (isUnknown(v)) return true;
  if (Array.isArray(v)) return v.some(hasUnknown);
  if (v && typeof v === 'object') return Object.entries(v).some(([k, x]) => !k.startsWith('__') && hasUnknown(x));
  return false;
}

/** Anything at `file`, on the engine's files. */
async function exists(engine: Engine, file: string): Promise<boolean> {
  return (await engine.stat(file)) !== undefined;
}

/** Facts only the disk knows, gathered here (through the engine) so rules stay pure. */
async function factsFor(engine: Engine, current: ImageFacts, d: DesiredSpec): Promise<WorldFacts> {
  const facts: WorldFacts = {};
  if (d.dataFile !== undefined && d.dataFile !== (current.dataFile ?? '')) {
    const st = await engine.stat(d.dataFile);
    facts.desiredDataFile = st === undefined ? { exists: false } : { exists: true, size: BigInt(st.size) };
  }
  return facts;
}

/** The image as its header says now; path and preallocation from the state (the file does not record them). */
function factsOnDisk(info: ImageFacts, olds: ImageOutputs): ImageFacts {
  const { detail: _detail, dataFile, backingFile, backingFormat, ...facts } = info;
  const f: ImageFacts = { ...facts, path: olds.path };
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
async function plan(olds: ImageOutputs, news: ImageInputs): Promise<{ changes: Change[]; desired: DesiredSpec; current: ImageFacts }> {
  const desired = desiredOf(news);
  const recorded = factsOfState(olds);
  // The engine the program asks for; during a preview it may not be known yet: then the one that wrote the image.
  const engine = engineOf(isUnknown(news.engine) ? olds.engine : news.engine);
  if (!(await exists(engine, olds.path))) {
    return { changes: classifyChange(recorded, desired, { imageMissing: true, recordedSource: recordedSource(olds) }), desired, current: recorded };
  }
  const current = factsOnDisk(await engine.info(olds.path, { forceShare: true }), olds);
  const facts = { ...(await factsFor(engine, current, desired)), recorded, recordedSource: recordedSource(olds) };
  return { changes: classifyChange(current, desired, facts), desired, current };
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

  const { changes: result } = await plan(olds, news);
  throwIfRefused(result);
  for (const c of result) {
    if (c.action === 'replace') replaces.push(c.property);
    if (c.action === 'amend' || c.action === 'state') changes = true;
  }
  // Values not known yet can only be judged at update time; report a change so it happens.
  for (const [k, v] of Object.entries(news)) if (!k.startsWith('__') && hasUnknown(v)) changes = true;
  const samePath = !replaces.includes('path');
  return { changes: changes || replaces.length > 0, replaces, deleteBeforeReplace: replaces.length > 0 && samePath };
}

export async function create(inputs: ImageInputs): Promise<{ id: string; outs: ImageOutputs }> {
  const engine = engineOf(inputs.engine);
  const file = absolute(inputs.path);
  const opts = createOptionsOf(inputs);
  if (inputs.adopt) {
    if (await exists(engine, file)) return adoptImage(engine, file, inputs);
    if (opts.dataFile === undefined || !(await exists(engine, opts.dataFile))) {
      throw failure('adopt', `there is nothing to adopt: no image at ${file}${opts.dataFile ? ` and no data file at ${opts.dataFile}` : ''}. Remove adopt to create a new image`);
    }
    await engine.create(file, { ...opts, adoptDataFile: true });
    return { id: file, outs: outputsOf(inputs, await engine.info(file, { forceShare: true }), { createdDataFile: false, adopted: false }) };
  }
  if (await exists(engine, file)) {
    throw failure('path', `an image already exists at ${file}; it is never overwritten. Set adopt: true to take it over as it is, or choose another path`);
  }
  let source: { source: string; sourceChecksum: string } | undefined;
  if (inputs.source !== undefined) {
    // Through the chosen engine: qemu-img convert for engine "qemu-img", the native import
    // otherwise; a URL is downloaded through the cache first, on this machine.
    source = { source: sourceOf(inputs.source), sourceChecksum: inputs.sourceChecksum !== undefined ? checksumOf(inputs.sourceChecksum) : '' };
    const maxSize = sizeOf(inputs.sourceMaxSize, 'sourceMaxSize') ?? sizeOf(inputs.size);
    await engine.import(file, opts, {
      path: source.source,
      ...(inputs.sourceFormat ? { format: inputs.sourceFormat } : {}),
      ...(source.sourceChecksum !== '' ? { checksum: source.sourceChecksum } : {}),
      ...(maxSize !== undefined ? { maxSize } : {}),
      references: (inputs.sourceReferences ?? []).map(absolute),
    }, importProgress(source.source));
  } else {
    await engine.create(file, opts);
  }
  const info = await engine.info(file, { forceShare: true });
  return { id: file, outs: outputsOf(inputs, info, { createdDataFile: opts.dataFile !== undefined, adopted: false, ...(source ? { source } : {}) }) };
}

/** Take over an existing image: verify it matches the inputs, change nothing. */
async function adoptImage(engine: Engine, file: string, inputs: ImageInputs): Promise<{ id: string; outs: ImageOutputs }> {
  const info = await engine.info(file, { forceShare: true });
  const outs = outputsOf(inputs, info, { createdDataFile: false, adopted: true });
  const desired = desiredOf(inputs);
  delete desired.allowReplace;
  delete desired.allowShrink;
  const mismatches = classifyChange(factsOfState(outs), desired).filter((c) => c.action !== 'none');
  if (mismatches.length) {
    throw failure('adopt', `the existing image at ${file} does not match the inputs (${mismatches.map((c) => `${c.property}: image has ${String(c.from)}, inputs say ${String(c.to)}`).join('; ')}). Adopting never changes an image: make the inputs match it, then change them in a later update`);
  }
  return { id: file, outs };
}

export async function update(_id: string, olds: ImageOutputs, news: ImageInputs): Promise<{ outs: ImageOutputs }> {
  const engine = engineOf(news.engine);
  const file = olds.path;
  const { changes: result, desired, current } = await plan(olds, news);
  throwIfRefused(result);
  const rebase = result.find((c) => c.action === 'amend' && c.operation === 'rebase');
  if (rebase) await engine.rebase(file, desired.backingFile ?? current.backingFile!, desired.backingFormat ?? current.backingFormat);
  // One amend for everything else, so the change lands all or nothing (rules allowed a shrink
  // only if allowShrink is set).
  const req = amendRequestOf(result);
  if (req) await engine.amend(file, req);
  const info = await engine.info(file, { forceShare: true });
  // The source is recorded anew only where the rules said so (state); otherwise the old record stays.
  const source = recordedSource(olds);
  for (const c of result) if (c.action === 'state' && (c.property === 'source' || c.property === 'sourceChecksum')) source[c.property] = c.to as string;
  return { outs: outputsOf({ ...news, preallocation: news.preallocation ?? (olds.preallocation as Preallocation | undefined) }, info, { createdDataFile: olds.createdDataFile, adopted: olds.adopted, source }) };
}

export async function read(id: string, props: ImageOutputs): Promise<{ id: string; props?: ImageOutputs; inputs?: Record<string, unknown> }> {
  const file = props?.path ?? id;
  const engine = engineOf(props?.engine);
  if (!(await exists(engine, file))) return { id: '' };
  const info = await engine.info(file, { forceShare: true });
  const base: ImageInputs = { path: file, engine: props?.engine ?? 'native' };
  if (props?.preallocation) base.preallocation = props.preallocation as Preallocation;
  const outs = outputsOf(base, info, { createdDataFile: props?.createdDataFile ?? false, adopted: props?.adopted ?? false, source: recordedSource(props ?? {}) });
  outs.dataFileOnDelete = props?.dataFileOnDelete ?? 'auto';
  outs.deleteAdopted = props?.deleteAdopted ?? false;
  // Drift (a hand-run qemu-img amend or resize) shows in the inputs too, so the next update
  // puts the image back where the program says it should be.
  const inputs: Record<string, unknown> = {
    path: file, size: outs.virtualSize, compat: outs.compat, lazyRefcounts: outs.lazyRefcounts, refcountBits: outs.refcountBits,
    dataFileRaw: outs.dataFileRaw, engine: outs.engine,
  };
  if (outs.dataFile) inputs.dataFile = outs.dataFile;
  if (outs.backingFile) inputs.backingFile = outs.backingFile;
  if (outs.backingFormat) inputs.backingFormat = outs.backingFormat;
  return { id: file, props: outs, inputs };
}

export async function remove(_id: string, props: ImageOutputs): Promise<void> {
  if (props.adopted && !props.deleteAdopted) return; // adopted images are the user's: kept
  const engine = engineOf(props.engine);
  if (!(await exists(engine, props.path))) return;
  const policy = props.dataFileOnDelete ?? 'auto';
  const dataFile = policy === 'delete' || (policy === 'auto' && props.createdDataFile);
  await engine.remove(props.path, { dataFile });
}
