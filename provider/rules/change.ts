// The change classifier: from an existing image (as info reads it) and a desired spec, decide
// per property: nothing, amend in place, replace, or refuse, each with a reason a person can act
// on. The preview, both engines and the CLI ask this; nothing else decides what is legal.

import type { ImageFacts } from '../model/facts';
import { roundToSector } from '../model/facts';
import { CREATE_ONLY_PROPERTIES, propertyOf } from '../model/names';
import { formatSize } from '../model/size';
import { validateAmend, validateRebase, validateResize } from './amend';
import { liveOrRefuse, planBitmaps } from './bitmaps';
import { classifyChain } from './chain';
import { firstV2Refusal } from './compat';
import type { AmendRequest, Change, DesiredSpec, WorldFacts } from './types';

const RAW_AND_BACKING =
  'Backing file and data-file-raw cannot be used at the same time: a data-file-raw image keeps its data file a ' +
  'complete standalone raw image, and a backing file would make the image read clusters from elsewhere';

function replaceOrRefuse(property: keyof DesiredSpec, from: unknown, to: unknown, allowReplace: boolean | undefined): Change {
  const what = `${property} can only be chosen when an image is created (changing it from ${String(from)} to ${String(to)} means a new image)`;
  return allowReplace
    ? { property, action: 'replace', reason: `${what}; allowReplace is set, so the image is deleted and created anew, and its data is lost`, from, to }
    : { property, action: 'refuse', reason: `${what}, which deletes the current image and its data. Set allowReplace: true to accept that, or keep ${property} at ${String(from)}`, from, to };
}

/**
 * Classify the change from `current` to `desired`. Properties left undefined in `desired` are
 * not managed and produce no entry. The result holds one entry per managed property, seed rules
 * (data-file-raw, backing file) first.
 */
export function classifyChange(current: ImageFacts, desiredSpec: DesiredSpec, facts: WorldFacts = {}): Change[] {
  if (facts.imageMissing) {
    return [{
      property: 'path', action: 'refuse', from: current.path,
      reason: `The image ${current.path ?? ''} is not there any more: it was removed outside the program since it was last recorded. ` +
        'Restore the file, or run a refresh (pulumi refresh) to drop the image from the state; the next update then creates it anew, empty',
    }];
  }
  const out = classify(current, desiredSpec, facts);
  if (facts.recorded) noteChangesOutsideTheProgram(out, current, facts.recorded);
  return out;
}

function classify(current: ImageFacts, desiredSpec: DesiredSpec, facts: WorldFacts): Change[] {
  let desired = desiredSpec;
  const out: Change[] = [];
  // The backing chain first: a base that is not the one the image was built on refuses every change.
  const chain = classifyChain(current, desired, facts.chain);
  if (chain.some((c) => c.action === 'refuse' || c.action === 'replace')) {
    // A replace under a running QEMU is refused like any other (the holder named).
    if (facts.holder !== undefined) liveOrRefuse(chain, facts.holder, desired.qmpSocket);
    return chain;
  }
  out.push(...chain);

  // data-file-raw: can be cleared, never enabled on an existing image.
  if (desired.dataFileRaw !== undefined) {
    if (desired.dataFileRaw === current.dataFileRaw) {
      out.push({ property: 'dataFileRaw', action: 'none', reason: 'unchanged', from: current.dataFileRaw, to: desired.dataFileRaw });
    } else if (!desired.dataFileRaw) {
      out.push({ property: 'dataFileRaw', action: 'amend', operation: 'amend', reason: 'data-file-raw is cleared in place (autoclear bit 1); the data file stays as it is', from: true, to: false });
    } else if (!current.hasDataFile && desired.dataFile === undefined) {
      out.push({ property: 'dataFileRaw', action: 'refuse', reason: 'data-file-raw requires data-file, and this image has none. Remove dataFileRaw (or set it to false), or create a new image with dataFile and dataFileRaw: true', from: false, to: true });
    } else {
      out.push({
        property: 'dataFileRaw', action: 'refuse', from: false, to: true,
        reason: 'data-file-raw cannot be set on existing images: until now writes did not keep the data file a valid raw ' +
          'image, so the flag would promise what is not true. Set dataFileRaw: false to keep this image as it is; or ' +
          'create a new image with dataFileRaw: true, or wrap the raw data file in a new image with adopt: true',
      });
    }
  }

  // Backing file: never together with data-file-raw; otherwise a header-only rebase.
  if (desired.backingFile !== undefined || desired.backingFormat !== undefined) {
    const file = desired.backingFile === '' ? undefined : desired.backingFile ?? current.backingFile;
    const fmt = desired.backingFormat ?? current.backingFormat;
    const changed = file !== current.backingFile || (file !== undefined && fmt !== current.backingFormat);
    if (file === undefined && desired.backingFormat !== undefined && current.backingFile === undefined) {
      out.push({ property: 'backingFile', action: 'refuse', from: current.backingFile, to: undefined, reason: 'Backing format cannot be used without backing file. Set backingFile too, or remove backingFormat' });
    } else if (!changed) {
      out.push({ property: 'backingFile', action: 'none', reason: 'unchanged', from: current.backingFile, to: file });
    } else if (file !== undefined && file !== '' && (current.dataFileRaw || desired.dataFileRaw === true)) {
      out.push({
        property: 'backingFile', action: 'refuse', from: current.backingFile, to: file,
        reason: `${RAW_AND_BACKING}. To layer images, create an overlay on a plain qcow2 base, or clear dataFileRaw in a step of its own first`,
      });
    } else if ((file === undefined || file === '') && current.backingFile !== undefined) {
      out.push({
        property: 'backingFile', action: 'refuse', from: current.backingFile, to: undefined,
        reason: `Removing the backing file would drop every cluster the image still reads from it. Keep backingFile at ${current.backingFile}; ` +
          'or convert the image to a standalone one (qemu-img convert) and manage the result instead',
      });
    } else {
      const r = validateRebase(current, file, fmt);
      out.push(r
        ? { property: 'backingFile', action: 'refuse', reason: r.message, from: current.backingFile, to: file }
        : { property: 'backingFile', action: 'amend', operation: 'rebase', reason: `the backing file is changed in place (rebase) from ${current.backingFile ?? 'none'} to ${file}${fmt ? ` (${fmt})` : ''}`, from: current.backingFile, to: file });
    }
  }

  // External data file: chosen at creation; afterwards only renamed, never moved.
  if (desired.dataFile !== undefined) {
    if (!current.hasDataFile) {
      out.push(replaceOrRefuse('dataFile', 'none', desired.dataFile, desired.allowReplace));
    } else if (desired.dataFile === current.dataFile) {
      out.push({ property: 'dataFile', action: 'none', reason: 'unchanged', from: current.dataFile, to: desired.dataFile });
    } else if (desired.dataFile === '') {
      out.push({ property: 'dataFile', action: 'refuse', from: current.dataFile, to: '', reason: `Removing the data file name would leave an image that cannot be opened without naming its data file each time. Keep dataFile at ${current.dataFile}, or set it to the file's new location` });
    } else {
      const f = facts.desiredDataFile;
      const need = current.virtualSize;
      if (f && !f.exists) {
        out.push({ property: 'dataFile', action: 'refuse', from: current.dataFile, to: desired.dataFile, reason: `The new data file '${desired.dataFile}' does not exist. Changing dataFile only renames the reference; it never moves data. Move or copy the data file there first, or keep dataFile at ${current.dataFile}` });
      } else if (f && f.size !== undefined && f.size < need) {
        out.push({ property: 'dataFile', action: 'refuse', from: current.dataFile, to: desired.dataFile, reason: `The new data file '${desired.dataFile}' is ${f.size} bytes, smaller than the image's ${need} bytes, so it cannot be the same disk. Point dataFile at a complete copy of the data file, or keep dataFile at ${current.dataFile}` });
      } else {
        out.push({ property: 'dataFile', action: 'amend', operation: 'amend', from: current.dataFile, to: desired.dataFile, reason: f ? 'the data file reference is renamed in place; the new file exists and is large enough' : 'the data file reference is renamed in place; the new file is checked before the change' });
      }
    }
  }

  // Size: grow in place; shrink only when allowed.
  if (desired.size !== undefined) {
    // Sizes are rounded up to 512 bytes, as create rounds them.
    const size = roundToSector(desired.size);
    desired = { ...desired, size };
    if (size === current.virtualSize) {
      out.push({ property: 'size', action: 'none', reason: 'unchanged', from: current.virtualSize, to: desired.size });
    } else {
      const r = validateResize(current, size, desired.allowShrink ?? false);
      if (r && size < current.virtualSize && !desired.allowShrink) {
        out.push({
          property: 'size', action: 'refuse', from: current.virtualSize, to: desired.size,
          reason: `Shrinking the image from ${bytes(current.virtualSize)} to ${bytes(size)} deletes all data beyond the new end. ` +
            `Set size to the image's current size (${current.virtualSize}), or set allowShrink: true to shrink it`,
        });
      } else if (r) {
        out.push({ property: 'size', action: 'refuse', reason: `${withWayForward(r.message).replace(/\.$/, '')}; or keep size at the image's current size (${current.virtualSize})`, from: current.virtualSize, to: desired.size });
      } else {
        out.push({ property: 'size', action: 'amend', operation: 'resize', reason: size > current.virtualSize ? `the image grows in place from ${current.virtualSize} to ${desired.size} bytes${current.dataFileRaw ? ', its metadata preallocated and the data file extended' : ''}` : `the image shrinks in place from ${current.virtualSize} to ${desired.size} bytes; data beyond the new end is deleted (allowShrink is set)`, from: current.virtualSize, to: desired.size });
      }
    }
  }

  const simple = (property: 'compat' | 'lazyRefcounts' | 'refcountBits', from: unknown, to: unknown, how: string) => {
    if (to === undefined) return;
    out.push(to === from
      ? { property, action: 'none', reason: 'unchanged', from, to }
      : { property, action: 'amend', operation: 'amend', reason: how, from, to });
  };
  simple('compat', current.compat, desired.compat, desired.compat === '0.10' ? 'downgraded in place to compat 0.10 (zero clusters expanded)' : 'upgraded in place to compat 1.1');
  simple('lazyRefcounts', current.lazyRefcounts, desired.lazyRefcounts, 'the lazy-refcounts feature bit is changed in place');
  simple('refcountBits', current.refcountBits, desired.refcountBits, 'the refcount structures are rebuilt in place with the new width');

  // Persistent bitmaps: judged on the image as the same plan's amend leaves it.
  if (desired.bitmaps !== undefined) {
    out.push(planBitmaps(current, desired.bitmaps, desired.manageAllBitmaps ?? false, {
      compat: desired.compat ?? current.compat, virtualSize: desired.size ?? current.virtualSize,
    }));
  }

  // The path: a new image at the new place, then the old one deleted.
  if (desired.path !== undefined && current.path !== undefined) {
    if (desired.path === current.path) {
      out.push({ property: 'path', action: 'none', reason: 'unchanged', from: current.path, to: desired.path });
    } else {
      const what = `moving the image from ${current.path} to ${desired.path} means creating a new image and deleting the old one with its data`;
      out.push(desired.allowReplace
        ? { property: 'path', action: 'replace', reason: `${what}; allowReplace is set`, from: current.path, to: desired.path }
        : { property: 'path', action: 'refuse', reason: `${what}. Set allowReplace: true to accept that, or keep the path`, from: current.path, to: desired.path });
    }
  }

  // The host: an image on another machine is a new image, as one at another path is. Only the
  // host name decides: a new port, user or credential reaches the same machine.
  if (desired.host !== undefined && current.host !== undefined) {
    const from = current.host.toLowerCase(), to = desired.host.toLowerCase();
    const where = (h: string) => (h === '' ? 'this machine' : h);
    if (from === to) {
      out.push({ property: 'host', action: 'none', reason: 'unchanged', from: current.host, to: desired.host });
    } else {
      const what = `moving the image from ${where(current.host)} to ${where(desired.host)} (connection.host) means creating a new image there and deleting the old one with its data`;
      out.push(desired.allowReplace
        ? { property: 'host', action: 'replace', reason: `${what}; allowReplace is set`, from: current.host, to: desired.host }
        : { property: 'host', action: 'refuse', reason: `${what}. Set allowReplace: true to accept that, or keep connection.host`, from: current.host, to: desired.host });
    }
  }
  out.push(...classifySource(facts.recordedSource, desired));

  // Create-only properties (qemu-img: "only supported for image creation"; model/names.ts).
  for (const property of CREATE_ONLY_PROPERTIES) {
    // (The table's create-only properties are exactly these; the test narrows the type.)
    if (property !== 'clusterSize' && property !== 'extendedL2' && property !== 'compressionType' && property !== 'preallocation') continue;
    const to = desired[property];
    if (to === undefined) continue;
    const from = property === 'preallocation' ? current.preallocation : current[property as 'clusterSize' | 'extendedL2' | 'compressionType'];
    if (from === undefined || from === to) {
      out.push({ property, action: 'none', reason: from === undefined ? 'not recorded in the image; left as it is' : 'unchanged', from, to });
    } else {
      out.push(replaceOrRefuse(property, from, to, desired.allowReplace));
    }
  }

  // Cross-property legality of the whole result: a downgrade must leave an image that compat
  // 0.10 can describe (no lazy refcounts, 16-bit refcounts, no data file, no extended L2).
  if (!out.some((c) => c.action === 'refuse')) {
    const downgrade = desired.compat === '0.10' && current.compat !== '0.10';
    // Asked on the settings after the change; the refusal names the property to change.
    const r = downgrade ? firstV2Refusal(['lazy_refcounts', 'refcount_bits', 'data_file', 'extended_l2', 'compression_type'], 'plan', {
      lazyRefcounts: desired.lazyRefcounts ?? current.lazyRefcounts,
      refcountBits: desired.refcountBits ?? current.refcountBits,
      hasDataFile: current.hasDataFile,
      extendedL2: desired.extendedL2 ?? current.extendedL2,
      // Only a zstd asked for here refuses; an image that is zstd now is the amend's to judge.
      compressionType: desired.compressionType === 'zstd' ? 'zstd' : 'zlib',
    }) : undefined;
    if (r) {
      // On the property turned on in the same change, if it was; else on compat.
      const p = r.property as keyof DesiredSpec;
      const turnedOn = p !== 'dataFile' && desired[p] !== undefined && desired[p] !== (current as unknown as Record<string, unknown>)[p];
      mergeRefusal(out, turnedOn ? p : 'compat', r.message);
    } else {
      // And the in-place part as one amend, in qemu-img's order and words.
      const amend = amendRequestOf(out);
      const refusal = amend && validateAmend(current, amend, desired.allowShrink ?? false);
      if (refusal) mergeRefusal(out, propertyOf(refusal.property) as keyof DesiredSpec, withWayForward(refusal.message));
    }
  }
  // An image a running QEMU holds: live through QMP, or refused with the holder named.
  if (facts.holder !== undefined) liveOrRefuse(out, facts.holder, desired.qmpSocket);
  return out;
}

const bytes = (n: bigint) => `${n} bytes (${formatSize(n)})`;

/** An image property in a person's words, for messages about changes made outside the program. */
const DRIFT: Partial<Record<keyof DesiredSpec, { what: string; of: (s: ImageFacts) => unknown; show: (v: unknown) => string }>> = {
  size: { what: 'The image was resized', of: (s) => s.virtualSize, show: (v) => bytes(v as bigint) },
  dataFileRaw: { what: 'data-file-raw was changed', of: (s) => s.dataFileRaw, show: (v) => (v ? 'on' : 'off') },
  dataFile: { what: "The image's data file name was changed", of: (s) => s.dataFile ?? '', show: (v) => (v === '' ? 'none' : `'${String(v)}'`) },
  backingFile: { what: "The image's backing file was changed", of: (s) => s.backingFile ?? '', show: (v) => (v === '' ? 'none' : `'${String(v)}'`) },
  compat: { what: 'The image\'s compat level was changed', of: (s) => s.compat, show: String },
  lazyRefcounts: { what: 'lazy_refcounts was changed', of: (s) => s.lazyRefcounts, show: (v) => (v ? 'on' : 'off') },
  refcountBits: { what: 'The refcount width was changed', of: (s) => s.refcountBits, show: (v) => `${String(v)} bits` },
};

/** What the program's input must say to accept the image as it is now. */
function inputFor(property: keyof DesiredSpec, s: ImageFacts): string {
  switch (property) {
    case 'size': return `size to ${s.virtualSize}`;
    case 'dataFileRaw': return `dataFileRaw: ${s.dataFileRaw}`;
    case 'dataFile': return s.dataFile ? `dataFile to ${s.dataFile}` : 'no dataFile';
    case 'backingFile': return s.backingFile ? `backingFile to ${s.backingFile}` : 'no backingFile';
    case 'compat': return `compat: "${s.compat}"`;
    case 'lazyRefcounts': return `lazyRefcounts: ${s.lazyRefcounts}`;
    default: return `refcountBits: ${s.refcountBits}`;
  }
}

/**
 * Where the image on disk differs from what was last recorded, someone changed it outside the
 * program: each decision about such a property says so, and a refusal offers to accept it.
 */
function noteChangesOutsideTheProgram(out: Change[], current: ImageFacts, recorded: ImageFacts): void {
  for (const c of out) {
    const d = DRIFT[c.property];
    if (!d || c.action === 'none') continue;
    const now = d.of(current);
    const then = d.of(recorded);
    if (now === then) continue;
    const note = `${d.what} outside the program: it is ${d.show(now)} now, ${d.show(then)} when last recorded`;
    if (c.action !== 'refuse') {
      c.reason = `${note}; ${c.reason}`;
      continue;
    }
    const accept = `Set ${inputFor(c.property, current)} in the program to accept the image as it is now`;
    // Refusals that already offer the image's current value as a way forward need no second offer.
    const value = c.property === 'size' ? String(current.virtualSize) : c.property === 'dataFile' ? current.dataFile
      : c.property === 'backingFile' ? current.backingFile : inputFor(c.property, current);
    const named = value !== undefined && value !== '' && c.reason.includes(value);
    c.reason = `${note}. ${c.reason}${named ? '' : `. ${accept}`}`;
  }
}

/**
 * `source` and `sourceChecksum` after creation. The image holds what was imported; a new URL for
 * the same bytes (a mirror moved) is recorded in the state and nothing else. A new checksum
 * means other guest data: that plans nothing, unless allowReplace lets the image be deleted and
 * imported anew, so a disk is never re-imaged silently. Nothing recorded (an image created
 * without a source, or before these were recorded): the new values are recorded. Checksums are
 * compared as the caller normalized them (`sha256:<lower-case hex>`).
 */
export function classifySource(recorded: { source: string; sourceChecksum: string } | undefined, desired: DesiredSpec): Change[] {
  const out: Change[] = [];
  const was = recorded ?? { source: '', sourceChecksum: '' };
  const sum = desired.sourceChecksum;
  const newSum = sum !== undefined && was.sourceChecksum !== '' && sum !== was.sourceChecksum;
  if (newSum) {
    const what = `the image was imported from data with checksum ${was.sourceChecksum}; ${sum} is other data, and importing it means deleting the image and its data`;
    out.push(desired.allowReplace
      ? { property: 'sourceChecksum', action: 'replace', reason: `${what}; allowReplace is set, so the image is imported anew`, from: was.sourceChecksum, to: sum }
      : { property: 'sourceChecksum', action: 'none', reason: `${what}, so nothing is planned and the image keeps its data. Set allowReplace: true to re-import it`, from: was.sourceChecksum, to: sum });
  } else if (sum !== undefined) {
    out.push(sum === was.sourceChecksum
      ? { property: 'sourceChecksum', action: 'none', reason: 'unchanged', from: was.sourceChecksum, to: sum }
      : { property: 'sourceChecksum', action: 'amend', operation: 'record', reason: 'recorded in the state; nothing on disk changes', from: was.sourceChecksum, to: sum });
  }
  if (desired.source !== undefined) {
    if (desired.source === was.source) {
      out.push({ property: 'source', action: 'none', reason: 'unchanged', from: was.source, to: desired.source });
    } else if (newSum) {
      out.push({ property: 'source', action: desired.allowReplace ? 'replace' : 'none', reason: 'changes with sourceChecksum', from: was.source, to: desired.source });
    } else {
      out.push({ property: 'source', action: 'amend', operation: 'record', reason: 'the source is read only when the image is created; the new one is recorded in the state and nothing on disk changes', from: was.source, to: desired.source });
    }
  }
  return out;
}

function mergeRefusal(out: Change[], property: keyof DesiredSpec, reason: string): void {
  const i = out.findIndex((c) => c.property === property);
  const refusal: Change = { property, action: 'refuse', reason };
  if (i >= 0) {
    const { operation: _op, ...rest } = out[i]!;
    out[i] = { ...rest, ...refusal };
  } else {
    out.push(refusal);
  }
}

/** qemu-img's words for an amend refusal, followed by what to do instead. */
export function withWayForward(message: string): string {
  const ways: Array<[RegExp, string]> = [
    [/^compat=0\.10 requires refcount_bits=16/, 'Set refcountBits: 16 in the same change, or keep compat 1.1'],
    [/^Cannot downgrade an image with a data file/, 'Keep compat 1.1: images with an external data file need it'],
    [/^Cannot downgrade an image with incompatible features/, 'Keep compat 1.1, or create a new image without the feature'],
    [/^Cannot downgrade an image with zstd compression type/, 'Keep compat 1.1, or convert the data into a new zlib image (qemu-img convert -o compression_type=zlib)'],
    [/^Internal snapshots prevent downgrade/, 'Delete the internal snapshots first (qemu-img snapshot -d), or keep compat 1.1'],
    [/^Refcount width must be a power of two/, 'Set refcountBits to 1, 2, 4, 8, 16, 32 or 64'],
    [/^The new size must be a multiple of 512/, 'Set size to a multiple of 512 bytes'],
    [/^Refcount widths other than 16 bits require/, 'Set compat: 1.1 in the same change, or keep refcountBits: 16'],
    [/^Lazy refcounts only supported with compatibility level 1\.1/, 'Set compat: 1.1 in the same change, or keep lazyRefcounts: false'],
    [/^data-file can only be set for images that use an external data file/, 'Create a new image with dataFile instead'],
  ];
  for (const [re, way] of ways) if (re.test(message) && !message.includes(way)) return `${message.replace(/\.$/, '')}. ${way}`;
  return message;
}

/** The amend request the in-place changes add up to (size included, rebase not), or undefined. */
export function amendRequestOf(changes: Change[]): AmendRequest | undefined {
  const req: AmendRequest = {};
  let any = false;
  for (const c of changes) {
    if (c.action !== 'amend' || c.operation === 'rebase' || c.operation === 'record') continue;
    any = true;
    switch (c.property) {
      case 'compat': req.compat = c.to as AmendRequest['compat']; break;
      case 'lazyRefcounts': req.lazyRefcounts = c.to as boolean; break;
      case 'refcountBits': req.refcountBits = c.to as number; break;
      case 'size': req.size = c.to as bigint; break;
      case 'dataFile': req.dataFile = c.to as string; break;
      case 'dataFileRaw': req.dataFileRaw = c.to as boolean; break;
      default: break;
    }
  }
  return any ? req : undefined;
}

/** The overall verdict of a classification: refuse beats replace beats amend beats live beats none. */
export function overallAction(changes: Change[]): Change['action'] {
  for (const a of ['refuse', 'replace', 'amend', 'live'] as const) if (changes.some((c) => c.action === a)) return a;
  return 'none';
}

/** A refusal message for a whole plan: every refused property with its reason. */
export function refusalMessage(changes: Change[]): string | undefined {
  const refused = changes.filter((c) => c.action === 'refuse');
  if (!refused.length) return undefined;
  return refused.map((c) => `${c.property}: ${c.reason}`).join('\n');
}
