// Names stored inside an image are untrusted. The provider acts only on the files it recorded,
// or that the program declares: a header naming another data file or backing file is drift (a
// hand-run `amend -o data_file=...`, or a hostile image), refused before anything is written,
// and an adopted image's references must be declared. Pure: the resource layer reads the
// header and knows what was recorded.

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
