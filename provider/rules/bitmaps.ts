// Bitmap legality: every refusal `qemu-img bitmap` 7.2 makes (QEMU's block-dirty-bitmap-* checks
// and qcow2's can_store_new_dirty_bitmap), in its order and words, decided on a simulation of the
// actions before any of them is carried out; and what operations around bitmaps refuse (a resize
// or a copy of an inconsistent bitmap, a downgrade of an image that has bitmaps).

import {
  BitmapAction, MAX_BITMAP_DIRECTORY_SIZE, MAX_BITMAPS, bitmapConstraintError, defaultBitmapGranularity, dirEntrySize, nameBytes,
} from '../model/bitmaps';
import type { Compat } from '../model/options';
import type { ImageFacts } from '../model/facts';
import type { BitmapSpec, BitmapStep, Change, Refusal } from './types';

export type { BitmapAction };

/** A bitmap as the rules see it (from the image's directory, or from QEMU over QMP). */
export interface BitmapState {
  name: string;
  granularity: number;
  /** Recording writes (the `auto` flag). */
  enabled: boolean;
  /** `in-use` in an image nobody holds: its writer died, its contents are unknown. */
  inconsistent: boolean;
}

/** The image whose bitmaps change. */
export interface BitmapSubject {
  compat: Compat;
  virtualSize: bigint;
  clusterSize: number;
  bitmaps: BitmapState[];
  /** How messages name the image (QEMU names its node, '#block123'; we name the file). */
  node: string;
}

/** The image a merge reads from (-b FILE): its bitmaps and its size. */
export interface MergeSource {
  bitmaps: BitmapState[];
  virtualSize: bigint;
}

const INCONSISTENT_HINT = 'Try block-dirty-bitmap-remove to delete this bitmap from disk';

/** bdrv_dirty_bitmap_check's refusal of an inconsistent bitmap. */
export function inconsistentMessage(name: string): string {
  return `Bitmap '${name}' is inconsistent and cannot be used\n${INCONSISTENT_HINT}`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/** Why `name` cannot be added (block_dirty_bitmap_add, persistent), or undefined. */
function addRefusal(img: BitmapSubject, bitmaps: BitmapState[], name: string, granularity: number): string | undefined {
  if (name === '') return 'Bitmap name cannot be empty';
  if (granularity < 512 || !isPowerOfTwo(granularity)) return 'Granularity must be power of 2 and at least 512';
  if (bitmaps.some((b) => b.name === name)) return `Bitmap already exists: ${name}`;
  const persistent = (why: string) => `Can't make bitmap '${name}' persistent in '${img.node}': ${why}`;
  if (img.compat === '0.10') return persistent('Cannot store dirty bitmaps in qcow2 v2 files');
  const c = bitmapConstraintError(img.virtualSize, Math.log2(granularity), img.clusterSize, name);
  if (c) return persistent(c);
  if (bitmaps.length + 1 > MAX_BITMAPS) return persistent('Maximum number of persistent bitmaps is already reached');
  const dir = bitmaps.reduce((n, b) => n + dirEntrySize(nameBytes(b.name)), 0) + dirEntrySize(nameBytes(name));
  if (dir > MAX_BITMAP_DIRECTORY_SIZE) return persistent('Not enough space in the bitmap directory');
  return undefined;
}

/**
 * Validate `qemu-img bitmap ACTIONS FILE NAME` as a whole: the first refusal, as qemu-img words
 * it (`Operation add on bitmap b failed: ...`), or undefined when every action succeeds. The
 * actions are simulated in order, so `--add --disable` and `--remove --add` are judged as qemu-img
 * carries them out.
 */
export function validateBitmapActions(img: BitmapSubject, name: string, actions: readonly BitmapAction[], source?: MergeSource): Refusal | undefined {
  const r = simulateBitmapActions(img, name, actions, source);
  return Array.isArray(r) ? undefined : r;
}

/** The bitmaps after the actions, or the first refusal (validateBitmapActions). */
function simulateBitmapActions(img: BitmapSubject, name: string, actions: readonly BitmapAction[], source?: MergeSource): Refusal | BitmapState[] {
  const bitmaps = img.bitmaps.map((b) => ({ ...b }));
  const fail = (op: string, why: string): Refusal => ({ property: 'bitmaps', message: `Operation ${op} on bitmap ${name} failed: ${why}` });
  const lookup = (list: BitmapState[], n: string) => list.find((b) => b.name === n);
  for (const a of actions) {
    if (a.op === 'add') {
      const g = a.granularity ?? defaultBitmapGranularity(img.clusterSize);
      const why = addRefusal(img, bitmaps, name, g);
      if (why) return fail('add', why);
      bitmaps.push({ name, granularity: g, enabled: true, inconsistent: false });
      continue;
    }
    const target = lookup(bitmaps, name);
    if (target === undefined) return fail(a.op, `Dirty bitmap '${name}' not found`);
    if (a.op === 'remove') {
      bitmaps.splice(bitmaps.indexOf(target), 1);
      continue;
    }
    if (target.inconsistent) return fail(a.op, inconsistentMessage(name));
    if (a.op === 'enable' || a.op === 'disable') {
      target.enabled = a.op === 'enable';
      continue;
    }
    if (a.op === 'merge') {
      const src = lookup(a.external && source ? source.bitmaps : bitmaps, a.source);
      if (src === undefined) return fail('merge', `Dirty bitmap '${a.source}' not found`);
      if (src.inconsistent) return fail('merge', inconsistentMessage(a.source));
      const srcSize = a.external && source ? source.virtualSize : img.virtualSize;
      if (srcSize !== img.virtualSize) {
        return fail('merge', `Bitmaps are of different sizes (destination size is ${img.virtualSize}, source size is ${srcSize}) and can't be merged`);
      }
    }
  }
  return bitmaps;
}

/** qemu-img's -g: a size, cut to QEMU's 32-bit granularity (4G is 0, which is refused; 0 means the default). */
export function granularityArgument(bytes: bigint): number | undefined {
  const g = Number(bytes & 0xffffffffn);
  return g === 0 && bytes === 0n ? undefined : g;
}

/** A resize (qemu-img resize, amend -o size) resizes every bitmap: refused while one is inconsistent. */
export function validateResizeBitmaps(bitmaps: readonly BitmapState[]): Refusal | undefined {
  const bad = bitmaps.find((b) => b.inconsistent);
  return bad ? { property: 'size', message: inconsistentMessage(bad.name) } : undefined;
}

/** What convert --bitmaps copies from, and into. */
export interface CopyBitmapsRequest {
  sourceFormat: string;
  /** The source image's bitmaps (its top layer's: a backing file's are not copied). */
  bitmaps: BitmapState[];
  /** The new image's compat level. */
  targetCompat: Compat;
  /** --skip-broken-bitmaps: leave inconsistent bitmaps out instead of refusing. */
  skipBroken: boolean;
}

/**
 * The bitmaps in the order qemu-img meets them: it loads an image's bitmaps in the order of its
 * bitmap directory and puts each at the head of its list, so its checks and warnings go from the
 * directory's last bitmap to its first.
 */
function inQemuOrder(bitmaps: readonly BitmapState[]): BitmapState[] {
  return [...bitmaps].reverse();
}

/**
 * convert --bitmaps, as qemu-img judges it: convert_check_bitmaps on the source (the first
 * inconsistent bitmap it meets, unless skipped), then whether the new image can store bitmaps at
 * all (a v2 image cannot, even when there are none to copy).
 */
export function validateCopyBitmaps(req: CopyBitmapsRequest): Refusal | undefined {
  if (req.sourceFormat !== 'qcow2') return { property: 'bitmaps', message: 'Source lacks bitmap support' };
  const bad = req.skipBroken ? undefined : inQemuOrder(req.bitmaps).find((b) => b.inconsistent);
  if (bad) {
    return {
      property: 'bitmaps',
      message: `Cannot copy inconsistent bitmap '${bad.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`,
    };
  }
  if (req.targetCompat === '0.10') {
    return {
      property: 'compat',
      message: "Format driver 'qcow2' does not support bitmaps\n" +
        'A v2 (compat 0.10) image cannot store bitmaps: create the new image with compat 1.1, or leave out --bitmaps',
    };
  }
  return undefined;
}

/** The warnings of convert --bitmaps --skip-broken-bitmaps: one per inconsistent bitmap left out, in qemu-img's order. */
export function skippedBitmapWarnings(req: CopyBitmapsRequest): string[] {
  if (!req.skipBroken) return [];
  return inQemuOrder(req.bitmaps).filter((b) => b.inconsistent).map((b) => `Skipping inconsistent bitmap '${b.name}'`);
}

/** The image's bitmaps as the rules see them (from the facts' detail; names only for a state written before it was kept). */
export function bitmapStates(current: Pick<ImageFacts, 'bitmaps' | 'detail'>): BitmapState[] {
  const detail = current.detail?.bitmaps;
  if (detail === undefined) return current.bitmaps.map((name) => ({ name, granularity: 0, enabled: true, inconsistent: false }));
  return detail.map((b) => ({ name: b.name, granularity: b.granularity, enabled: b.flags.includes('auto'), inconsistent: b.inconsistent }));
}

/**
 * The resource's `bitmaps` input against the image: one step per bitmap that changes (undeclared
 * bitmaps removed first when `manageAll`, then the declared ones in their order), each judged as
 * `qemu-img bitmap` would judge it on the image as it will be (`after`: its compat and size once
 * the same plan's amend is done). Adding, removing, enabling and disabling are amends in place;
 * a granularity change or an inconsistent bitmap needs `allowReset` on that bitmap (its recorded
 * writes are lost).
 */
export function planBitmaps(
  current: Pick<ImageFacts, 'bitmaps' | 'detail' | 'clusterSize' | 'path'>, desired: readonly BitmapSpec[], manageAll: boolean,
  after: { compat: Compat; virtualSize: bigint },
): Change {
  const have = bitmapStates(current);
  const from = have.map((b) => b.name);
  const refuse = (reason: string): Change => ({ property: 'bitmaps', action: 'refuse', reason, from, to: desired.map((d) => d.name) });
  const declared = new Set<string>();
  for (const d of desired) {
    if (declared.has(d.name)) return refuse(`bitmap '${d.name}' is declared twice: list each bitmap once`);
    declared.add(d.name);
  }
  const steps: BitmapStep[] = [];
  const words: string[] = [];
  if (manageAll) {
    for (const b of have) {
      if (declared.has(b.name)) continue;
      steps.push({ name: b.name, actions: [{ op: 'remove' }] });
      words.push(`'${b.name}' removed (not declared, manageAllBitmaps is set)`);
    }
  }
  for (const d of desired) {
    const add: BitmapAction[] = [{ op: 'add', ...(d.granularity !== undefined ? { granularity: d.granularity } : {}) }, ...(d.enabled === false ? [{ op: 'disable' } as const] : [])];
    const b = have.find((x) => x.name === d.name);
    if (b === undefined) {
      steps.push({ name: d.name, actions: add });
      words.push(`'${d.name}' added${d.enabled === false ? ' (not recording)' : ''}`);
      continue;
    }
    const regranulate = d.granularity !== undefined && b.granularity !== 0 && d.granularity !== b.granularity;
    if (b.inconsistent || regranulate) {
      const why = b.inconsistent
        ? `bitmap '${d.name}' is inconsistent (in-use in an image no process holds: its writer stopped without storing it), so what it recorded is unknown`
        : `changing the granularity of bitmap '${d.name}' from ${b.granularity} to ${d.granularity} throws away the writes it recorded`;
      if (!d.allowReset) {
        return refuse(`${why}. Set allowReset: true on that bitmap to remove it and add it anew (the next backup must be a full one)${regranulate ? `, or keep granularity ${b.granularity}` : ''}`);
      }
      steps.push({ name: d.name, actions: [{ op: 'remove' }, ...add] });
      words.push(`'${d.name}' removed and added anew (allowReset)`);
      continue;
    }
    if (d.enabled !== undefined && d.enabled !== b.enabled) {
      steps.push({ name: d.name, actions: [{ op: d.enabled ? 'enable' : 'disable' }] });
      words.push(`'${d.name}' ${d.enabled ? 'enabled' : 'disabled'}`);
    }
  }
  if (steps.length === 0) return { property: 'bitmaps', action: 'none', reason: 'unchanged', from, to: from };
  let states = have;
  for (const step of steps) {
    const subject: BitmapSubject = { compat: after.compat, virtualSize: after.virtualSize, clusterSize: current.clusterSize, bitmaps: states, node: current.path ?? 'the image' };
    const r = simulateBitmapActions(subject, step.name, step.actions);
    if (!Array.isArray(r)) return refuse(r.message);
    states = r;
  }
  return { property: 'bitmaps', action: 'amend', operation: 'bitmap', reason: `bitmaps changed in place: ${words.join('; ')}`, from, to: steps };
}

/**
 * An image a process holds for writing (a running VM): a grow and bitmap changes go live through
 * `qmpSocket` (QEMU's block_resize and block-dirty-bitmap-*); every other change is refused,
 * naming the process, because writing under a running QEMU corrupts the image.
 */
export function liveOrRefuse(changes: Change[], holder: string, qmpSocket: string | undefined): void {
  for (const [i, c] of changes.entries()) {
    if (c.action !== 'amend' && c.action !== 'replace') continue;
    // Recording the backing chain anew writes nothing: a running QEMU does not stop it.
    if (c.operation === 'record') continue;
    const liveable = (c.property === 'size' && c.operation === 'resize' && (c.to as bigint) > (c.from as bigint)) || c.property === 'bitmaps';
    if (liveable && qmpSocket !== undefined) {
      changes[i] = { ...c, action: 'live', reason: `${c.reason.replace(/ in place/, '')}, live through ${qmpSocket} (${holder} holds the image)` };
      continue;
    }
    const { operation: _op, ...rest } = c;
    changes[i] = {
      ...rest, action: 'refuse',
      reason: `${c.property} cannot change while ${holder} holds the image for writing (a running VM): changing it under QEMU would corrupt the image. ` +
        `Stop the VM first${liveable ? ', or set qmpSocket to that QEMU\'s QMP socket to change it live' : ' (only a grow and bitmap changes can be made live, through qmpSocket)'}`,
    };
  }
}
