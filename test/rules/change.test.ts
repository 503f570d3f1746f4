// classifyChange: for every property, unchanged -> none, an allowed change -> amend (amend, resize
// or rebase), a forbidden change -> refuse with a way forward, create-only properties -> refuse or
// (allowReplace) replace; plus the world facts of a data file rename, the data-file-raw and backing
// rules, cross-property rules, and what amendRequestOf / overallAction / refusalMessage make of it.

import { describe, expect, it } from 'vitest';

import { amendRequestOf, classifyChange, overallAction, refusalMessage } from '../../provider/rules/change';
import { validateCreate } from '../../provider/rules/create';
import type { Action, AmendRequest, Change, DesiredSpec, ImageFacts, Operation, WorldFacts } from '../../provider/rules/types';
import { INPUT_NAME, MiB, WAY_FORWARD, dataFileState, overlayState, plainState, rawState, show, snapshotsOf, v2State } from './support';

interface ChangeCase {
  name: string;
  current: ImageFacts;
  desired: DesiredSpec;
  facts?: WorldFacts;
  /** The entry checked (omit for plans checked only as a whole). */
  property?: keyof DesiredSpec;
  action?: Action;
  operation?: Operation;
  /** What that entry's reason must say. */
  reason?: RegExp | RegExp[];
  /** overallAction of the plan; defaults to `action`. */
  overall?: Action;
  /** amendRequestOf of the plan, when it matters (undefined: no in-place change). */
  request?: AmendRequest | 'none';
}

const two = 2n * MiB;
const half = MiB / 2n;

const CREATE_ONLY_CASES: ChangeCase[] = (
  [
    ['clusterSize', plainState(), 65536, 4096],
    ['extendedL2', plainState(), false, true],
    ['extendedL2', plainState({ extendedL2: true }), true, false],
    ['compressionType', plainState(), 'zlib', 'zstd'],
    ['compressionType', plainState({ compressionType: 'zstd' }), 'zstd', 'zlib'],
    ['preallocation', plainState(), 'off', 'metadata'],
    ['preallocation', plainState({ preallocation: 'full' }), 'full', 'off'],
  ] as Array<[keyof DesiredSpec, ImageFacts, unknown, unknown]>
).flatMap(([property, current, from, to]): ChangeCase[] => [
  { name: `${property} unchanged (${String(from)}) is nothing to do`, current, desired: { [property]: from }, property, action: 'none', request: 'none' },
  {
    name: `${property} ${String(from)} -> ${String(to)} is refused without allowReplace`,
    current, desired: { [property]: to }, property, action: 'refuse',
    reason: [/only be chosen when an image is created/, /Set allowReplace: true/], request: 'none',
  },
  {
    name: `${property} ${String(from)} -> ${String(to)} replaces the image with allowReplace`,
    current, desired: { [property]: to, allowReplace: true }, property, action: 'replace', reason: /data is lost/, request: 'none',
  },
]);

const CASES: ChangeCase[] = [
  // ---- size
  { name: 'size unchanged is nothing to do', current: plainState(), desired: { size: MiB }, property: 'size', action: 'none', request: 'none' },
  { name: 'size grows in place (resize)', current: plainState(), desired: { size: two }, property: 'size', action: 'amend', operation: 'resize', request: { size: two } },
  { name: 'size grows a raw image in place, extending the data file', current: rawState(), desired: { size: two }, property: 'size', action: 'amend', operation: 'resize', reason: /data file extended/, request: { size: two } },
  { name: 'size shrink is refused without allowShrink', current: plainState(), desired: { size: half }, property: 'size', action: 'refuse', reason: [/^Shrinking the image from 1048576 bytes \(1 MiB\) to 524288 bytes \(512 KiB\) deletes all data beyond the new end/, /Set size to the image's current size \(1048576\), or set allowShrink: true/] },
  { name: 'size shrink is done in place with allowShrink', current: plainState(), desired: { size: half, allowShrink: true }, property: 'size', action: 'amend', operation: 'resize', reason: /deleted/, request: { size: half } },
  { name: 'size growth with persistent bitmaps is an amend (the bitmaps grow too)', current: plainState({ bitmaps: ['b0'] }), desired: { size: two }, property: 'size', action: 'amend', operation: 'resize', reason: /grows in place/ },
  { name: 'size as create rounds it (1000 -> 1024) is unchanged on the image create made', current: plainState({ virtualSize: 1024n }), desired: { size: 1000n }, property: 'size', action: 'none', request: 'none' },
  { name: 'size not a multiple of 512 grows to the rounded size, as create would', current: plainState({ virtualSize: 512n }), desired: { size: 1000n }, property: 'size', action: 'amend', operation: 'resize', request: { size: 1024n } },
  // ---- compat
  { name: 'compat unchanged is nothing to do', current: plainState(), desired: { compat: '1.1' }, property: 'compat', action: 'none', request: 'none' },
  { name: 'compat 0.10 -> 1.1 upgrades in place', current: v2State(), desired: { compat: '1.1' }, property: 'compat', action: 'amend', operation: 'amend', request: { compat: '1.1' } },
  { name: 'compat 1.1 -> 0.10 downgrades a plain image in place', current: plainState(), desired: { compat: '0.10' }, property: 'compat', action: 'amend', operation: 'amend', request: { compat: '0.10' } },
  { name: 'compat 1.1 -> 0.10 with a data file is refused', current: dataFileState(), desired: { compat: '0.10' }, property: 'compat', action: 'refuse', reason: /data file/ },
  { name: 'compat 1.1 -> 0.10 with refcount_bits 8 is refused', current: plainState({ refcountBits: 8 }), desired: { compat: '0.10' }, property: 'compat', action: 'refuse', reason: /refcount_bits=16/ },
  { name: 'compat 1.1 -> 0.10 with extended L2 is refused', current: plainState({ extendedL2: true }), desired: { compat: '0.10' }, property: 'compat', action: 'refuse', reason: /0x10/ },
  { name: 'compat 1.1 -> 0.10 with zstd compressed clusters is refused', current: plainState({ compressionType: 'zstd', hasCompressedClusters: true }), desired: { compat: '0.10' }, property: 'compat', action: 'refuse', reason: /zstd/ },
  { name: 'compat 1.1 -> 0.10 with zstd and no compressed clusters is allowed', current: plainState({ compressionType: 'zstd', hasCompressedClusters: false }), desired: { compat: '0.10' }, property: 'compat', action: 'amend', operation: 'amend' },
  { name: 'compat 1.1 -> 0.10 with internal snapshots of the image\'s size is downgraded in place', current: plainState({ snapshots: 1, detail: snapshotsOf([MiB]) }), desired: { compat: '0.10' }, property: 'compat', action: 'amend', operation: 'amend', request: { compat: '0.10' } },
  { name: 'compat 1.1 -> 0.10 with a snapshot of another size is refused, in qemu-img\'s words and the way forward', current: plainState({ snapshots: 1, detail: snapshotsOf([2n * MiB]) }), desired: { compat: '0.10' }, property: 'compat', action: 'refuse', reason: [/^Internal snapshots prevent downgrade of image/, /Delete the internal snapshots first/] },
  // ---- lazyRefcounts
  { name: 'lazyRefcounts unchanged is nothing to do', current: plainState(), desired: { lazyRefcounts: false }, property: 'lazyRefcounts', action: 'none', request: 'none' },
  { name: 'lazyRefcounts on, on v3, is set in place', current: plainState(), desired: { lazyRefcounts: true }, property: 'lazyRefcounts', action: 'amend', operation: 'amend', request: { lazyRefcounts: true } },
  { name: 'lazyRefcounts off is cleared in place', current: plainState({ lazyRefcounts: true }), desired: { lazyRefcounts: false }, property: 'lazyRefcounts', action: 'amend', operation: 'amend', request: { lazyRefcounts: false } },
  { name: 'lazyRefcounts on, on v2, is refused', current: v2State(), desired: { lazyRefcounts: true }, property: 'lazyRefcounts', action: 'refuse', reason: /compat=1\.1/ },
  { name: 'lazyRefcounts on, on v2, with compat 1.1 in the same plan is allowed', current: v2State(), desired: { lazyRefcounts: true, compat: '1.1' }, property: 'lazyRefcounts', action: 'amend', operation: 'amend', request: { compat: '1.1', lazyRefcounts: true } },
  // ---- refcountBits
  { name: 'refcountBits unchanged is nothing to do', current: plainState(), desired: { refcountBits: 16 }, property: 'refcountBits', action: 'none', request: 'none' },
  { name: 'refcountBits 16 -> 8 rebuilds in place', current: plainState(), desired: { refcountBits: 8 }, property: 'refcountBits', action: 'amend', operation: 'amend', request: { refcountBits: 8 } },
  { name: 'refcountBits 8 on v2 is refused', current: v2State(), desired: { refcountBits: 8 }, property: 'refcountBits', action: 'refuse', reason: /compat=1\.1/ },
  { name: 'refcountBits 8 on v2 with compat 1.1 in the same plan is allowed', current: v2State(), desired: { refcountBits: 8, compat: '1.1' }, property: 'refcountBits', action: 'amend', operation: 'amend', request: { compat: '1.1', refcountBits: 8 } },
  { name: 'refcountBits 3 is refused', current: plainState(), desired: { refcountBits: 3 }, property: 'refcountBits', action: 'refuse', reason: /power of two/ },
  { name: 'refcountBits 128 is refused', current: plainState(), desired: { refcountBits: 128 }, property: 'refcountBits', action: 'refuse', reason: /64 bits/ },
  // ---- create-only properties
  ...CREATE_ONLY_CASES,
  { name: 'preallocation not recorded in the image is left alone', current: plainState({ preallocation: undefined }), desired: { preallocation: 'full' }, property: 'preallocation', action: 'none', request: 'none' },
  { name: 'a replace together with a resize is a replace', current: plainState(), desired: { clusterSize: 4096, size: two, allowReplace: true }, property: 'clusterSize', action: 'replace', overall: 'replace' },
  { name: 'a refused create-only change beats an allowed resize', current: plainState(), desired: { clusterSize: 4096, size: two }, property: 'clusterSize', action: 'refuse', overall: 'refuse' },
  // ---- dataFile
  { name: 'dataFile unchanged is nothing to do', current: dataFileState(), desired: { dataFile: 'img.raw' }, property: 'dataFile', action: 'none', request: 'none' },
  { name: 'dataFile renamed to an existing, large enough file is amended', current: dataFileState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: true, size: two } }, property: 'dataFile', action: 'amend', operation: 'amend', request: { dataFile: 'moved.raw' } },
  { name: 'dataFile renamed to an existing file of exactly the size is amended', current: dataFileState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: true, size: MiB } }, property: 'dataFile', action: 'amend', operation: 'amend' },
  { name: 'dataFile renamed on a raw image is amended', current: rawState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: true, size: MiB } }, property: 'dataFile', action: 'amend', operation: 'amend', request: { dataFile: 'moved.raw' } },
  { name: 'dataFile renamed to a missing file is refused', current: dataFileState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: false } }, property: 'dataFile', action: 'refuse', reason: [/'moved\.raw' does not exist/, /Move or copy/] },
  { name: 'dataFile renamed to a file too small is refused', current: dataFileState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: true, size: half } }, property: 'dataFile', action: 'refuse', reason: [/524288 bytes, smaller than the image's 1048576/, /Point dataFile/] },
  { name: 'dataFile renamed without facts is amended (checked before the change)', current: dataFileState(), desired: { dataFile: 'moved.raw' }, property: 'dataFile', action: 'amend', operation: 'amend', reason: /checked before the change/ },
  { name: 'dataFile renamed to an existing file of unknown size is amended', current: dataFileState(), desired: { dataFile: 'moved.raw' }, facts: { desiredDataFile: { exists: true } }, property: 'dataFile', action: 'amend', operation: 'amend' },
  { name: 'dataFile removed (empty name) is refused', current: dataFileState(), desired: { dataFile: '' }, property: 'dataFile', action: 'refuse' },
  { name: 'dataFile added to an image without one is refused without allowReplace', current: plainState(), desired: { dataFile: 'img.raw' }, property: 'dataFile', action: 'refuse', reason: /allowReplace/ },
  { name: 'dataFile added to an image without one replaces it with allowReplace', current: plainState(), desired: { dataFile: 'img.raw', allowReplace: true }, property: 'dataFile', action: 'replace' },
  // ---- dataFileRaw
  { name: 'dataFileRaw on, unchanged, is nothing to do', current: rawState(), desired: { dataFileRaw: true }, property: 'dataFileRaw', action: 'none', request: 'none' },
  { name: 'dataFileRaw off, unchanged, is nothing to do', current: dataFileState(), desired: { dataFileRaw: false }, property: 'dataFileRaw', action: 'none', request: 'none' },
  { name: 'dataFileRaw cleared in place', current: rawState(), desired: { dataFileRaw: false }, property: 'dataFileRaw', action: 'amend', operation: 'amend', request: { dataFileRaw: false } },
  {
    name: 'dataFileRaw enabled on an existing image is refused, with both ways forward',
    current: dataFileState(), desired: { dataFileRaw: true }, property: 'dataFileRaw', action: 'refuse',
    reason: [/^data-file-raw cannot be set on existing images/, /Set dataFileRaw: false to keep this image/, /create a new image with dataFileRaw: true/, /wrap the raw data file in a new image with adopt: true/],
  },
  { name: 'dataFileRaw enabled without any data file is refused: it needs one', current: plainState(), desired: { dataFileRaw: true }, property: 'dataFileRaw', action: 'refuse', reason: /^data-file-raw requires data-file/ },
  { name: 'dataFileRaw enabled with a data file added in the same plan is refused', current: plainState(), desired: { dataFileRaw: true, dataFile: 'img.raw', allowReplace: true }, property: 'dataFileRaw', action: 'refuse', overall: 'refuse' },
  // ---- backingFile
  { name: 'backingFile unchanged is nothing to do', current: overlayState(), desired: { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, property: 'backingFile', action: 'none', request: 'none' },
  { name: 'backingFile added to a plain image is a rebase', current: plainState(), desired: { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, property: 'backingFile', action: 'amend', operation: 'rebase' },
  { name: 'backingFile changed on an overlay is a rebase', current: overlayState(), desired: { backingFile: 'other.qcow2' }, property: 'backingFile', action: 'amend', operation: 'rebase' },
  { name: 'backingFormat changed on an overlay is a rebase', current: overlayState(), desired: { backingFormat: 'raw' }, property: 'backingFile', action: 'amend', operation: 'rebase' },
  { name: 'backingFile added to a non-raw data file image is a rebase', current: dataFileState(), desired: { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, property: 'backingFile', action: 'amend', operation: 'rebase' },
  { name: 'backingFile removed is refused', current: overlayState(), desired: { backingFile: '' }, property: 'backingFile', action: 'refuse', reason: [/Keep backingFile at base\.qcow2/, /convert the image/] },
  {
    name: 'backingFile added to a raw image is refused',
    current: rawState(), desired: { backingFile: 'base.qcow2', backingFormat: 'qcow2' }, property: 'backingFile', action: 'refuse',
    reason: [/^Backing file and data-file-raw cannot be used at the same time/, /create an overlay/],
  },
  {
    name: 'backingFile added to a raw image is refused even when the plan clears dataFileRaw: two steps',
    current: rawState(), desired: { backingFile: 'base.qcow2', backingFormat: 'qcow2', dataFileRaw: false }, property: 'backingFile', action: 'refuse',
    reason: /clear dataFileRaw in a step of its own first/, overall: 'refuse',
  },
  { name: 'backingFile added together with enabling dataFileRaw is refused', current: dataFileState(), desired: { backingFile: 'base.qcow2', dataFileRaw: true }, property: 'backingFile', action: 'refuse', overall: 'refuse' },
  { name: 'backingFormat without any backing file is refused', current: plainState(), desired: { backingFormat: 'qcow2' }, property: 'backingFile', action: 'refuse' },
  { name: 'backingFile "" on an image without backing is nothing to do', current: plainState(), desired: { backingFile: '' }, property: 'backingFile', action: 'none', request: 'none' },
  { name: 'a rebase and a resize go together', current: overlayState(), desired: { backingFile: 'other.qcow2', size: two }, property: 'backingFile', action: 'amend', operation: 'rebase', overall: 'amend' },
  // ---- cross-property
  { name: 'compat 0.10 with lazyRefcounts on is refused', current: plainState(), desired: { compat: '0.10', lazyRefcounts: true }, property: 'lazyRefcounts', action: 'refuse', overall: 'refuse' },
  { name: 'compat 0.10 with lazyRefcounts on is refused when lazy refcounts are already on', current: plainState({ lazyRefcounts: true }), desired: { compat: '0.10', lazyRefcounts: true }, overall: 'refuse' },
  { name: 'compat 0.10 with compressionType zstd kept is refused (the downgrade makes it zlib)', current: plainState({ compressionType: 'zstd' }), desired: { compat: '0.10', compressionType: 'zstd' }, overall: 'refuse' },
  { name: 'compat 0.10 with refcountBits 8 kept is refused', current: plainState({ refcountBits: 8 }), desired: { compat: '0.10', refcountBits: 8 }, overall: 'refuse' },
  { name: 'compat 0.10 with refcountBits back to 16 is allowed', current: plainState({ refcountBits: 8 }), desired: { compat: '0.10', refcountBits: 16 }, property: 'compat', action: 'amend', operation: 'amend', request: { compat: '0.10', refcountBits: 16 } },
  { name: 'compat 0.10 with the data file kept is refused', current: dataFileState(), desired: { compat: '0.10', dataFile: 'img.raw' }, property: 'compat', action: 'refuse' },
  { name: 'nothing managed is nothing to do', current: rawState(), desired: {}, overall: 'none', request: 'none' },
];

function classify(c: ChangeCase): Change[] {
  return classifyChange(c.current, c.desired, c.facts);
}

describe('classifyChange', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const changes = classify(c);
    const ctx = show(changes);
    if (c.property !== undefined) {
      const entries = changes.filter((x) => x.property === c.property);
      expect(entries, `one entry for ${c.property}: ${ctx}`).toHaveLength(1);
      const e = entries[0]!;
      if (c.action !== undefined) expect(e.action, ctx).toBe(c.action);
      if (c.action === 'amend') expect(e.operation, ctx).toBe(c.operation);
      for (const re of c.reason === undefined ? [] : Array.isArray(c.reason) ? c.reason : [c.reason]) expect(e.reason).toMatch(re);
    }
    const overall = c.overall ?? c.action;
    expect(overallAction(changes), ctx).toBe(overall);
    // refusalMessage lists every refused property with its reason, and nothing when none is refused.
    const refused = changes.filter((x) => x.action === 'refuse');
    const msg = refusalMessage(changes);
    if (refused.length === 0) expect(msg).toBeUndefined();
    else for (const r of refused) expect(msg).toContain(`${r.property}: ${r.reason}`);
    if (c.request === 'none') expect(amendRequestOf(changes), ctx).toBeUndefined();
    else if (c.request !== undefined) expect(amendRequestOf(changes), ctx).toEqual(c.request);
  });
});

describe('amendRequestOf / overallAction / refusalMessage', () => {
  const grow: Change = { property: 'size', action: 'amend', operation: 'resize', reason: 'grows', from: MiB, to: two };
  const rebase: Change = { property: 'backingFile', action: 'amend', operation: 'rebase', reason: 'rebase', from: undefined, to: 'b.qcow2' };
  const none: Change = { property: 'compat', action: 'none', reason: 'unchanged' };
  const repl: Change = { property: 'clusterSize', action: 'replace', reason: 'new image' };
  const ref1: Change = { property: 'dataFileRaw', action: 'refuse', reason: 'no. Create a new image' };
  const ref2: Change = { property: 'backingFile', action: 'refuse', reason: 'no. Clear dataFileRaw first' };

  it.each([
    ['nothing', [], 'none'],
    ['only unchanged', [none], 'none'],
    ['an amend', [none, grow], 'amend'],
    ['a replace beats an amend', [grow, repl], 'replace'],
    ['a refusal beats a replace and an amend', [grow, repl, ref1], 'refuse'],
  ] as Array<[string, Change[], Action]>)('overallAction: %s -> %s', (_n, changes, want) => {
    expect(overallAction(changes)).toBe(want);
  });

  it('refusalMessage lists each refusal on its own line, property first', () => {
    expect(refusalMessage([grow, ref1, none, ref2])).toBe('dataFileRaw: no. Create a new image\nbackingFile: no. Clear dataFileRaw first');
    expect(refusalMessage([grow, repl, none])).toBeUndefined();
  });

  it('amendRequestOf gathers only in-place changes', () => {
    expect(amendRequestOf([none, repl, ref1])).toBeUndefined();
    expect(amendRequestOf([grow, none, { property: 'compat', action: 'amend', operation: 'amend', reason: '', to: '1.1' }])).toEqual({ size: two, compat: '1.1' });
  });

  it('a rebase is carried by the change (operation rebase), never as an amend of the backing file', () => {
    const req = amendRequestOf([rebase]);
    expect(req?.backingFile).toBeUndefined();
    expect(req?.backingFormat).toBeUndefined();
  });
});

// ------------------------------------------------------------------------------------------------
// Generic: every refusal a person can see says what to do instead
// ------------------------------------------------------------------------------------------------

const ALL_REFUSALS: Array<[string, Change]> = CASES.flatMap((c) => {
  let changes: Change[] = [];
  try {
    changes = classify(c);
  } catch {
    // a throw is reported by the table above
  }
  return changes.filter((x) => x.action === 'refuse').map((x): [string, Change] => [`${c.name} -> ${x.property}`, x]);
});

describe('every refusal produced by the tables names the way forward', () => {
  it('the tables produce refusals to check', () => {
    expect(ALL_REFUSALS.length).toBeGreaterThan(30);
  });

  it.each(ALL_REFUSALS)('%s', (_n, change) => {
    expect(change.reason.trim(), 'reason is empty').not.toBe('');
    expect(change.reason, 'no way forward (an imperative such as Create/Set/Clear/Move/use)').toMatch(WAY_FORWARD);
    // One way forward is always a change to the program itself: it names an Image input.
    expect(change.reason, 'no way forward in the program (an Image input named)').toMatch(INPUT_NAME);
  });
});

// ------------------------------------------------------------------------------------------------
// The image changed outside the program since it was recorded: the plan and refusals say so
// ------------------------------------------------------------------------------------------------

describe('changes made outside the program since the image was recorded', () => {
  const recorded = rawState({ virtualSize: MiB, dataFile: '/vm/d.raw' });

  it('a hand-grown image: keeping the recorded size is a shrink, refused with both the program and allowShrink as ways forward', () => {
    const [c] = classifyChange(rawState({ virtualSize: two, dataFile: '/vm/d.raw' }), { size: MiB }, { recorded });
    expect(c).toMatchObject({ property: 'size', action: 'refuse' });
    expect(c!.reason).toBe(
      'The image was resized outside the program: it is 2097152 bytes (2 MiB) now, 1048576 bytes (1 MiB) when last recorded. ' +
        'Shrinking the image from 2097152 bytes (2 MiB) to 1048576 bytes (1 MiB) deletes all data beyond the new end. ' +
        "Set size to the image's current size (2097152), or set allowShrink: true to shrink it",
    );
  });

  it('a hand-shrunk image grows back in place, and the plan says why', () => {
    const [c] = classifyChange(rawState({ virtualSize: half, dataFile: '/vm/d.raw' }), { size: MiB }, { recorded });
    expect(c).toMatchObject({ property: 'size', action: 'amend', operation: 'resize', from: half, to: MiB });
    expect(c!.reason).toMatch(/^The image was resized outside the program: it is 524288 bytes \(512 KiB\) now, 1048576 bytes \(1 MiB\) when last recorded; the image grows in place/);
  });

  it('data-file-raw cleared by hand cannot be set again: the refusal says it was cleared and offers dataFileRaw: false', () => {
    const [c] = classifyChange(rawState({ virtualSize: MiB, dataFile: '/vm/d.raw', dataFileRaw: false }), { dataFileRaw: true }, { recorded });
    expect(c).toMatchObject({ property: 'dataFileRaw', action: 'refuse' });
    expect(c!.reason).toMatch(/^data-file-raw was changed outside the program: it is off now, on when last recorded\. data-file-raw cannot be set on existing images/);
    expect(c!.reason).toMatch(/Set dataFileRaw: false to keep this image as it is/);
  });

  it('a data file renamed by hand: going back to a name that is gone is refused, offering the new name', () => {
    const [c] = classifyChange(rawState({ virtualSize: MiB, dataFile: '/vm/e.raw' }), { dataFile: '/vm/d.raw' }, { recorded, desiredDataFile: { exists: false } });
    expect(c).toMatchObject({ property: 'dataFile', action: 'refuse' });
    expect(c!.reason).toMatch(/^The image's data file name was changed outside the program: it is '\/vm\/e\.raw' now, '\/vm\/d\.raw' when last recorded\. The new data file '\/vm\/d\.raw' does not exist/);
    expect(c!.reason).toMatch(/keep dataFile at \/vm\/e\.raw/);
  });

  it('a program that already matches the changed image plans nothing', () => {
    expect(overallAction(classifyChange(rawState({ virtualSize: two, dataFile: '/vm/d.raw' }), { size: two }, { recorded }))).toBe('none');
  });

  it('an image removed outside the program is refused, saying how to recreate it', () => {
    const changes = classifyChange({ ...recorded, path: '/vm/d.qcow2' }, { size: MiB }, { recorded, imageMissing: true });
    expect(changes).toHaveLength(1);
    expect(changes[0]).toMatchObject({ property: 'path', action: 'refuse' });
    expect(changes[0]!.reason).toMatch(/^The image \/vm\/d\.qcow2 is not there any more: it was removed outside the program/);
    expect(changes[0]!.reason).toMatch(/Restore the file, or run a refresh \(pulumi refresh\)/);
  });
});

describe('a created image is not changed by the spec that created it', () => {
  it.each([
    ['size 1000', { size: 1000n }],
    ['size 1 MiB + 1', { size: MiB + 1n }],
    ['data file raw', { size: MiB, dataFile: 'img.raw', dataFileRaw: true }],
    ['compat 0.10', { size: MiB, compat: '0.10' }],
  ] as Array<[string, DesiredSpec]>)('%s', (_n, spec) => {
    const r = validateCreate(spec);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const o = r.options;
    const current: ImageFacts = plainState({
      virtualSize: o.size, compat: o.compat, clusterSize: o.clusterSize, refcountBits: o.refcountBits, lazyRefcounts: o.lazyRefcounts,
      extendedL2: o.extendedL2, compressionType: o.compressionType, hasDataFile: o.dataFile !== undefined,
      ...(o.dataFile !== undefined ? { dataFile: o.dataFile } : {}), dataFileRaw: o.dataFileRaw, preallocation: o.preallocation,
    });
    const changes = classifyChange(current, spec);
    expect(overallAction(changes), show(changes)).toBe('none');
  });
});
