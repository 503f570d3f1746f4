// Backing chains: what an image may do when a file below it is not the one it was built on, or
// when the Image it is built on is being replaced; and whether an image that others use as their
// backing file may be deleted. A base that changes under an overlay changes what the overlay's
// guest reads, silently; these rules make every such change a refusal with its ways forward,
// unless the change was made in place by this provider (which keeps the guest view) or the
// user accepts it.

import { chainDigest, firstDifference, type ChainLayer, type ChainView } from '../model/chain';
import type { ImageFacts } from '../model/facts';
import type { Change, DesiredSpec, Refusal } from './types';

/** Which file of the chain, in words: the image's own backing file, or one further down. */
function whichLayer(i: number, layers: readonly ChainLayer[], name: string): string {
  return i === 0 ? `its backing file ${name}` : `${name} (the backing file of ${layers[i - 1]!.path}, level ${i + 1} of its chain)`;
}

function describeLayer(l: ChainLayer): string {
  return `inode ${l.ino} on device ${l.dev}, ${String(l.size)} bytes, header ${l.header.slice(0, 12)}`;
}

/** What changed at layer i, with when the recorded file was last seen. */
function driftText(recorded: readonly ChainLayer[], current: ChainView, i: number): string {
  const was = recorded[i];
  const now = current.layers[i];
  if (!was) {
    return now
      ? `its backing chain gained a layer, ${now.path}, that it was not built on`
      : `its backing chain names ${current.missing ?? 'a file'}, which is not there`;
  }
  const seen = `last seen ${was.seen} as ${describeLayer(was)}`;
  if (!now) {
    const missing = current.missing !== undefined && i === current.layers.length;
    return missing
      ? `${whichLayer(i, recorded, was.path)} is not there any more (${seen})`
      : `${whichLayer(i, recorded, was.path)} is no longer in its backing chain (${seen})`;
  }
  if (now.path !== was.path) {
    return `${whichLayer(i, recorded, was.path)} is now ${now.path} (${seen})`;
  }
  const how = now.dev !== was.dev || now.ino !== was.ino
    ? 'was replaced by another file'
    : 'was rewritten in place';
  return `${whichLayer(i, recorded, was.path)} ${how} (${seen}; now ${describeLayer(now)})`;
}

const recreate = 'set allowReplace: true to recreate this image on the base as it is now (the image is deleted and created anew: its own data is lost)';

/**
 * Decide what the backing chain means for an existing image. `chain` holds the chain recorded
 * in the state and the chain on disk now (absent when the image has no backing file, or its
 * state predates recorded chains). Returns at most one decision, on property backingFile:
 * none, amend ('record': the state records the chain anew), replace, or refuse.
 */
export function classifyChain(current: ImageFacts, desired: DesiredSpec, chain: { recorded: ChainLayer[]; current: ChainView } | undefined): Change[] {
  const base = current.backingFile ?? '';
  const hint = desired.backingIdentity;
  const replacing = (why: string): Change => desired.allowReplace
    ? { property: 'backingFile', action: 'replace', from: base, to: desired.backingFile, reason: `${why}; allowReplace is set, so this image is deleted and created anew on the new base, and its own data is lost` }
    : {
      property: 'backingFile', action: 'refuse', from: base, to: desired.backingFile,
      reason: `${why}. Its guest would read the new image instead of the data it was built on. Ways forward: keep the base ` +
        '(undo the change that replaces it); or set allowReplace: true on this image in an update of its own first (Pulumi ' +
        'plans the base\'s replacement with the inputs already in its state), then replace the base: this image is then ' +
        'deleted before the base and created anew on it, and its own data is lost',
    };

  const wired = hint !== undefined;
  const pending = hint === 'unknown';
  const moving = desired.backingFile !== undefined && desired.backingFile !== base;
  // Built on an Image that is not the one it was built on (a new Image, or one being created anew elsewhere).
  if (wired && moving && (pending || hint.from === '' || desired.backingFileUnknown)) {
    return [replacing(`The base of this image is being replaced by a new image at ${desired.backingFile} (it was ${base})`)];
  }
  // The Image this one is built on is being replaced: its path or resource id is not known yet.
  if (desired.backingFileUnknown) {
    return [replacing(`The base of this image, ${base || 'its backing file'}, is being replaced`)];
  }
  if (!chain) return [];
  const { recorded, current: now } = chain;
  let at = firstDifference(recorded, now.layers);
  if (now.missing !== undefined && at < 0) at = now.layers.length;
  if (at < 0) {
    return pending
      ? [{ property: 'backingFile', action: 'amend', operation: 'record', from: base, to: base, reason: 'the Image this image is built on changes in place; its new identity is recorded after that change' }]
      : [];
  }
  const nowDigest = now.missing === undefined ? chainDigest(now.layers) : undefined;
  if (nowDigest !== undefined && desired.acceptBacking === nowDigest) {
    return [{ property: 'backingFile', action: 'amend', operation: 'record', from: base, to: base, reason: `the backing chain as it is now (${nowDigest}) is accepted as holding the data this image was built on (acceptBacking); it is recorded, nothing is written` }];
  }
  if (hint !== undefined && hint !== 'unknown' && hint.from !== '' && nowDigest !== undefined &&
      hint.from === chainDigest(recorded) && hint.identity === nowDigest) {
    return [{ property: 'backingFile', action: 'amend', operation: 'record', from: base, to: base, reason: 'the Image this image is built on was changed in place by this provider (its guest data kept); its new identity is recorded' }];
  }
  const d = driftText(recorded, now, at);
  const why = `The backing chain of this image changed outside the program: ${d}`;
  if (desired.allowReplace) {
    return [{ property: 'backingFile', action: 'replace', from: base, to: desired.backingFile ?? base, reason: `${why}; allowReplace is set, so this image is deleted and created anew on the chain as it is now, and its own data is lost` }];
  }
  const ways = [`restore the file it was built on at ${recorded[Math.min(at, recorded.length - 1)]?.path ?? base} (move it back: a copy is another file)`];
  if (nowDigest !== undefined) {
    ways.push(`if the chain as it is now holds the same guest data, set acceptBacking: "${nowDigest}" on this image to record it (nothing is written: a safe rebase onto the same name would copy nothing)`);
  }
  ways.push(recreate);
  return [{
    property: 'backingFile', action: 'refuse', from: base, to: desired.backingFile ?? base,
    reason: `${why}. Its guest would read different data. Nothing was changed. Ways forward: ${ways.join('; or ')}`,
  }];
}

/**
 * Whether an image may be deleted while other images name it as their backing file: never,
 * because their guests read from it. `truncated` says the folder scan stopped at its bound.
 */
export function deleteRefusal(imagePath: string, dependents: readonly string[]): Refusal | undefined {
  if (dependents.length === 0) return undefined;
  const shown = dependents.slice(0, 5).join(', ') + (dependents.length > 5 ? ` and ${dependents.length - 5} more` : '');
  return {
    property: 'path',
    message: `${imagePath} is the backing file of ${shown}: deleting it would leave their guests reading nothing where ` +
      'they read its data. Nothing was deleted. Delete those images first (or give them backingFile: <the Image> so that ' +
      'Pulumi deletes them before it), or make them standalone (qemu-img convert) and manage the copies instead',
  };
}

/**
 * Whether a plan for an existing image keeps its guest view, so that images built on it may take
 * over its new identity without asking: amends of metadata, growth, and recording a chain do;
 * a shrink (data beyond the end is gone), a rebase onto another file and a data file renamed to
 * another file do not.
 */
export function keepsGuestView(changes: readonly Change[]): boolean {
  return changes.every((c) => {
    if (c.action === 'none') return true;
    if (c.action !== 'amend' && c.action !== 'live') return false;
    if (c.operation === 'rebase') return false;
    if (c.property === 'dataFile') return false;
    if (c.property === 'size') return typeof c.from === 'bigint' && typeof c.to === 'bigint' && c.to >= c.from;
    return true;
  });
}
