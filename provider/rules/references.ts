// Names stored inside an image are untrusted. The provider acts only on the files it recorded,
// or that the program declares: a header naming another data file or backing file is drift (a
// hand-run `amend -o data_file=...`, or a hostile image), refused before anything is written,
// and an adopted image's references must be declared; an imported source may make only the
// references the program lists (sourceReferences). Pure: the resource layer reads the header
// and knows what was recorded; the engines call validateSourceReference as they open a source.

import { resolveBackingName } from '../model/backing-name';
import type { Refusal } from './types';

/** An image's external references: the names as QEMU resolves them against the image's folder. */
export interface References {
  dataFile?: string;
  backingFile?: string;
}

const KINDS = [
  { key: 'dataFile', words: 'data file', option: 'data_file' },
  { key: 'backingFile', words: 'backing file', option: 'backing_file' },
] as const;

/** The header's names resolved as QEMU opens them (a relative name is relative to the image's folder). */
export function resolvedReferences(image: string, names: References): References {
  const out: References = {};
  if (names.dataFile) out.dataFile = resolveBackingName(image, names.dataFile);
  if (names.backingFile) out.backingFile = resolveBackingName(image, names.backingFile);
  return out;
}

/**
 * Before an update changes the image: the header must still name what this resource recorded.
 * A different name is never followed (a resize would grow, a shrink truncate, that other file).
 */
export function validateRecordedReferences(image: string, found: References, recorded: References): Refusal | undefined {
  for (const k of KINDS) {
    const f = found[k.key], r = recorded[k.key];
    if ((f ?? '') === (r ?? '')) continue;
    const now = f ? `names ${k.words} '${f}'` : `names no ${k.words}`;
    const was = r ? `'${r}'` : 'none';
    const back = r ? `qcow2 amend -o ${k.option}=${r} ${image}` : `recreate the image without one`;
    return {
      property: k.key,
      message: `The image ${image} ${now}, but this resource recorded ${was}: its header was changed outside this program. ` +
        `Nothing was changed, and a name stored in an image is never followed to another file. Put the header back (${back}), ` +
        `or, if the new ${k.words} is meant, run pulumi refresh and declare it in ${k.key}`,
    };
  }
  return undefined;
}

/**
 * Taking over an existing image: every external reference it holds must be the one the program
 * declares (a name inside an adopted image could point at any file of the machine).
 */
export function validateDeclaredReferences(image: string, found: References, declared: References): Refusal | undefined {
  for (const k of KINDS) {
    const f = found[k.key], d = declared[k.key];
    if (f === undefined || f === d) continue;
    return {
      property: k.key,
      message: d === undefined
        ? `The image ${image} names ${k.words} '${f}', which the program does not declare. A name stored inside an image is never ` +
          `followed unless the program names that file: set ${k.key}: '${f}' to adopt the image with it`
        : `The image ${image} names ${k.words} '${f}', but the program declares '${d}'. Adopting never changes an image: ` +
          `set ${k.key} to the file the image names, or point the image at the declared file first (qcow2 amend -o ${k.option}=${d} ${image})`,
    };
  }
  return undefined;
}

/** A file a source's qcow2 header names: its backing file or its external data file. */
export interface SourceReference {
  kind: 'backing file' | 'data file';
  /** The name as the header stores it. */
  name: string;
  /** The local file it names, resolved as QEMU resolves it; absent when it names no local file (a relative name inside a downloaded image). */
  resolved?: string;
  /** The image whose header holds the name. */
  from: string;
}

/**
 * Which references a source may make. 'any': follow them as qemu-img does (the command line's
 * convert of a local file). A list: only those local files (the resource's `sourceReferences`);
 * an empty list refuses every reference.
 */
export type ReferencePolicy = 'any' | readonly string[];

/**
 * An imported image must not make this program read files its author did not name: a qcow2
 * header naming another file as backing or data file would copy that file into the new image
 * (CVE-2024-44082). `source` is the source as the user named it (a path or a redacted URL).
 */
export function validateSourceReference(ref: SourceReference, policy: ReferencePolicy, source: string): Refusal | undefined {
  if (policy === 'any' && ref.resolved !== undefined) return undefined;
  if (policy !== 'any' && ref.resolved !== undefined && policy.includes(ref.resolved)) return undefined;
  const where = ref.from === source ? `The source ${source}` : `${ref.from} (in the backing chain of the source ${source})`;
  const names = `${where} names '${ref.name}' as its ${ref.kind}`;
  if (ref.resolved === undefined) {
    return {
      property: 'sourceReferences',
      message: `${names}, a relative name inside a downloaded image, which names no file here. Flatten the image where it was made ` +
        '(qemu-img convert -O qcow2 without -B) and publish the result',
    };
  }
  return {
    property: 'sourceReferences',
    message: `${names} (${ref.resolved}). An imported image is untrusted: a name in its header must not make this program read ` +
      `other files into the new image (CVE-2024-44082). If you trust the source and that file, add '${ref.resolved}' to ` +
      'sourceReferences; otherwise flatten the source first (qemu-img convert -O qcow2)',
  };
}
