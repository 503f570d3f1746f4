// What the Image resource does on each call of the Pulumi engine: check (schema), diff
// (provider/rules decides: none, amend, replace or refuse), create / update / read / delete
// through an Engine. The provider object Pulumi serializes is a thin shim that requires this
// module at run time (image.ts), so the state never carries a copy of this code.

import * as fs from 'fs';
import * as path from 'path';
import { fileURLToPath } from 'url';
import { getEngine } from '../engines';
import type { Engine, EngineName, ImportSource } from '../engines/engine';
import { Qcow2Error } from '../model/errors';
import type { ImageFacts } from '../model/facts';
import { propertyOf } from '../model/names';
import type { CreateOptions, Preallocation } from '../model/options';
import { parseSize } from '../model/size';
import { amendRequestOf, classifyChange, refusalMessage } from '../rules/change';
import { validateCreate } from '../rules/create';
import type { DesiredSpec, WorldFacts } from '../rules/types';
import type { ConnectionArgs } from '../transport/ssh/connection';
import { UNKNOWN, validateInputs } from './schema';
import { ImageOutputs, factOutputs, factsOfState } from './state';

export type { ImageOutputs };

/** The version of this provider's code; a change makes diff report an update, refreshing state. */
export const PROVIDER_VERSION: string = (() => {
  for (let dir = __dirname, i = 0; i < 5; i++, dir = path.dirname(dir)) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p)) {
      const pkg = JSON.parse(fs.readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'pulumi-qcow2' && pkg.version) return pkg.version;
    }
  }
  return '0.0.0';
})();

/** Inputs as Pulumi hands them to the provider (after check): the create options, and ours. */
export interface ImageInputs extends Omit<CreateOptions, 'size' | 'adoptDataFile'> {
  path: string;
  /** Bytes, or qemu-img size text ("20G"). */
  size?: number | string;
  adopt?: boolean;
  source?: string;
  sourceFormat?: 'raw' | 'qcow2';
  allowShrink?: boolean;
  allowReplace?: boolean;
  engine?: EngineName;
  dataFileOnDelete?: 'auto' | 'keep' | 'delete';
  deleteAdopted?: boolean;
  /** The remote host the image is on (its paths are paths there); absent: this machine. */
  connection?: ConnectionArgs;
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

/** Where the source is: a path on the image's host, or (file:) a file on this machine. */
function sourceOf(i: ImageInputs): ImportSource {
  const s = i.source!;
  const format = i.sourceFormat ? { format: i.sourceFormat } : {};
  if (!LOCAL_SOURCE.test(s)) return { path: absolute(s, isRemote(i)), ...format };
  const file = s.startsWith('file://') ? fileURLToPath(s) : absolute(s.slice('file:'.length));
  return { path: file, ...format, ...(isRemote(i) ? { host: 'local' as const } : {}) };
}

/** The host name an image is on: connection.host, '' for this machine. */
function hostOf(i: { connection?: ConnectionArgs }): string {
  return isRemote(i) && typeof i.connection!.host === 'string' ? i.connection!.host : '';
}

function sizeOf(v: number | string | undefined): bigint | undefined {
  if (v === undefined || isUnknown(v)) return undefined;
  if (typeof v === 'number') return BigInt(v);
  try {
    return parseSize(v);
  } catch (e) {
    throw failure('size', `${JSON.stringify(v)} is not a size: ${(e as Error).message.split('\n')[0]}. Use bytes or a number with k, M, G, T, P or E`);
  }
}

function engineOf(name: EngineName | undefined, connection?: ConnectionArgs): Engine {
  return getEngine(name ?? 'native', connection !== undefined && connection !== null ? { connection } : {});
}

/** Whether anything is at `file` on the engine's host. */
async function exists(engine: Engine, file: string): Promise<boolean> {
  return (await engine.stat(file)) !== undefined;
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
  set('backingFormat', i.backingFormat);
  if (i.dataFile !== undefined && !isUnknown(i.dataFile)) d.dataFile = absolute(i.dataFile, remote);
  set('dataFileRaw', i.dataFileRaw);
  set('allowShrink', i.allowShrink);
  set('allowReplace', i.allowReplace);
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

function outputsOf(i: ImageInputs, facts: ImageFacts, extra: { createdDataFile: boolean; adopted: boolean }): ImageOutputs {
  return {
    path: absolute(i.path, isRemote(i)),
    host: hostOf(i),
    // Kept for refresh and destroy, which run with the state alone; a secret in the state
    // (the resource registers it with additionalSecretOutputs).
    ...(isRemote(i) ? { connection: i.connection! } : {}),
    engine: i.engine ?? 'native',
    ...factOutputs(facts),
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
    try {
      sizeOf(i.size);
    } catch (e) {
      failures.push({ property: 'size', reason: (e as Error).message });
    }
    await checkPlacement(i, failures);
    // Create-time legality of the whole combination, once every value is known.
    if (failures.length === 0 && !hasUnknown(news)) {
      const opts = createOptionsOf(i);
      if (i.adopt || i.source) delete opts.size;
      if (opts.size === undefined && !i.adopt && !i.source && opts.backingFile === undefined) {
        failures.push({ property: 'size', reason: 'size is required unless the image is adopted, imported from source, or sized by its backingFile' });
      } else {
        const r = validateCreate({ ...opts, ...(i.adopt && opts.dataFile ? { adoptDataFile: true } : {}) });
        if (!r.ok) failures.push({ property: propertyOf(r.refusal.property), reason: r.refusal.message });
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
  for (const k of ['path', 'dataFile', 'backingFile', 'source'] as const) {
    const v = i[k];
    if (typeof v !== 'string' || isUnknown(v) || path.posix.isAbsolute(v) || (k === 'source' && LOCAL_SOURCE.test(v))) continue;
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

/** Facts only the disk knows, gathered here (on the image's host) so rules stay pure. */
async function factsFor(old: ImageOutputs, d: DesiredSpec, engine: () => Engine): Promise<WorldFacts> {
  const facts: WorldFacts = {};
  if (d.dataFile !== undefined && d.dataFile !== old.dataFile) {
    const st = await engine().stat(d.dataFile).catch(() => undefined);
    facts.desiredDataFile = st !== undefined ? { exists: true, size: st.size } : { exists: false };
  }
  return facts;
}

/** The image as the state records it, on the host it is on ('' for this machine). */
function recorded(olds: ImageOutputs): ImageFacts {
  return { ...factsOfState(olds), host: olds.host ?? '' };
}

/** The connection without its host: what a change of credentials (state only) compares. */
function credentials(c: ConnectionArgs | undefined): string {
  if (c === undefined || c === null) return '';
  const { host: _host, ...rest } = c;
  return JSON.stringify(rest, Object.keys(rest).sort());
}

export async function diff(_id: string, olds: ImageOutputs, news: ImageInputs): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
  const replaces: string[] = [];
  let changes = false;
  if (olds.providerVersion !== PROVIDER_VERSION) changes = true;
  if (isUnknown(news.path)) changes = true;
  const engine = news.engine ?? 'native';
  if (isUnknown(engine) || engine !== olds.engine) changes = true;
  for (const k of ['dataFileOnDelete', 'deleteAdopted'] as const) {
    const now = news[k] ?? (k === 'dataFileOnDelete' ? 'auto' : false);
    if (now !== olds[k]) changes = true;
  }

  // New credentials for the same host change the state only.
  if (!isUnknown(news.connection) && credentials(news.connection) !== credentials(olds.connection)) changes = true;

  const desired = desiredOf(news);
  // A preview asks the image's host only when the rules need a fact from it.
  const result = classifyChange(recorded(olds), desired, await factsFor(olds, desired, () => engineOf(olds.engine, news.connection ?? olds.connection)));
  const refusal = refusalMessage(result);
  if (refusal) throw new Qcow2Error('REFUSED', refusal, { property: result.find((c) => c.action === 'refuse')!.property });
  for (const c of result) {
    if (c.action === 'replace') replaces.push(c.property === 'host' ? 'connection' : c.property);
    if (c.action === 'amend') changes = true;
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
    return { id: file, outs: outputsOf(inputs, await engine.info(file, { forceShare: true }), { createdDataFile: false, adopted: false }) };
  }
  if (await exists(engine, file)) {
    throw failure('path', `an image already exists at ${file}; it is never overwritten. Set adopt: true to take it over as it is, or choose another path`);
  }
  if (inputs.source !== undefined) {
    // Through the chosen engine: qemu-img convert for engine "qemu-img", the native import otherwise.
    await engine.import(file, opts, sourceOf(inputs));
  } else {
    await engine.create(file, opts);
  }
  const info = await engine.info(file, { forceShare: true });
  return { id: file, outs: outputsOf(inputs, info, { createdDataFile: opts.dataFile !== undefined, adopted: false }) };
}

/** Take over an existing image: verify it matches the inputs, change nothing. */
async function adoptImage(engine: Engine, file: string, inputs: ImageInputs): Promise<{ id: string; outs: ImageOutputs }> {
  const info = await engine.info(file, { forceShare: true });
  const outs = outputsOf(inputs, info, { createdDataFile: false, adopted: true });
  const desired = desiredOf(inputs);
  delete desired.allowReplace;
  delete desired.allowShrink;
  const mismatches = classifyChange(recorded(outs), desired).filter((c) => c.action !== 'none');
  if (mismatches.length) {
    throw failure('adopt', `the existing image at ${file} does not match the inputs (${mismatches.map((c) => `${c.property}: image has ${String(c.from)}, inputs say ${String(c.to)}`).join('; ')}). Adopting never changes an image: make the inputs match it, then change them in a later update`);
  }
  return { id: file, outs };
}

export async function update(_id: string, olds: ImageOutputs, news: ImageInputs): Promise<{ outs: ImageOutputs }> {
  // The program's connection: the same host (another is a replacement), perhaps new credentials.
  const engine = engineOf(news.engine, news.connection);
  const file = olds.path;
  const desired = desiredOf(news);
  const result = classifyChange(recorded(olds), desired, await factsFor(olds, desired, () => engine));
  const refusal = refusalMessage(result);
  if (refusal) throw new Qcow2Error('REFUSED', refusal);
  const rebase = result.find((c) => c.action === 'amend' && c.operation === 'rebase');
  if (rebase) await engine.rebase(file, desired.backingFile ?? olds.backingFile, desired.backingFormat ?? (olds.backingFormat || undefined));
  // One amend for everything else, so the change lands all or nothing (rules allowed a shrink
  // only if allowShrink is set).
  const req = amendRequestOf(result);
  if (req) await engine.amend(file, req);
  const info = await engine.info(file, { forceShare: true });
  return { outs: outputsOf({ ...news, preallocation: news.preallocation ?? (olds.preallocation as Preallocation | undefined) }, info, { createdDataFile: olds.createdDataFile, adopted: olds.adopted }) };
}

export async function read(id: string, props: ImageOutputs): Promise<{ id: string; props?: ImageOutputs; inputs?: Record<string, unknown> }> {
  const file = props?.path ?? id;
  const engine = engineOf(props?.engine, props?.connection);
  let info: ImageFacts;
  try {
    // No look before: on a remote host every look is a round trip. Gone is NOT_FOUND.
    info = await engine.info(file, { forceShare: true });
  } catch (e) {
    if (Qcow2Error.isInstance(e) && e.code === 'NOT_FOUND') return { id: '' };
    throw e;
  }
  const base: ImageInputs = { path: file, engine: props?.engine ?? 'native' };
  if (props?.connection) base.connection = props.connection;
  if (props?.preallocation) base.preallocation = props.preallocation as Preallocation;
  const outs = outputsOf(base, info, { createdDataFile: props?.createdDataFile ?? false, adopted: props?.adopted ?? false });
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

export async function remove(_id: string, props: ImageOutputs): Promise<void> {
  if (props.adopted && !props.deleteAdopted) return; // adopted images are the user's: kept
  const engine = engineOf(props.engine, props.connection);
  if (!(await exists(engine, props.path))) return;
  const policy = props.dataFileOnDelete ?? 'auto';
  const dataFile = policy === 'delete' || (policy === 'auto' && props.createdDataFile);
  await engine.remove(props.path, { dataFile });
}
