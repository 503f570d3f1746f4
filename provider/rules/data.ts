// Data-path legality: which images may have guest data written (writes, import, safe rebase),
// and which convert/import requests are refused. Pure: the engine gathers the facts.

import type { CreateOptions } from '../model/options';
import { validateRebase, validateWritable } from './amend';
import type { ImageFacts } from '../model/facts';
import { roundToSector } from '../model/facts';
import type { Refusal } from './types';

/** Writing guest data (write, write-zeroes, discard, the copy of a safe rebase). */
export function validateWrite(state: ImageFacts): Refusal | undefined {
  const w = validateWritable(state);
  if (w) return w;
  if (state.dirty) {
    return {
      property: 'dirty',
      message: 'The image is marked dirty (lazy refcounts were not written back), so its refcounts cannot be trusted for ' +
        'allocation. Repair it first: qemu-img check -r all, or open and close it once with QEMU',
    };
  }
  return undefined;
}

/** What a convert/import request is, as facts. */
export interface ImportRequest {
  sourceFormat: string;
  targetFormat?: string;
  /** Create options for the target as given (before the size is taken from the source). */
  options: CreateOptions;
  /** Virtual size of the source. */
  sourceSize: bigint;
  /** Source and destination are the same file (or the destination is the source's data file). */
  sameFile: boolean;
  /** qemu-img convert -c. */
  compress?: boolean;
  /** The largest virtual size the user allows for the source (`sourceMaxSize`). */
  maxSize?: bigint;
}

export function validateImport(req: ImportRequest): Refusal | undefined {
  if (req.sourceFormat !== 'raw' && req.sourceFormat !== 'qcow2') {
    return { property: 'source.format', message: `Unknown source format '${req.sourceFormat}': import reads raw and qcow2 images only` };
  }
  if (req.targetFormat !== undefined && req.targetFormat !== 'qcow2') {
    return { property: 'format', message: `Unknown output format '${req.targetFormat}': this tool writes qcow2 images only (-O qcow2)` };
  }
  if (req.sameFile) {
    return { property: 'source', message: 'The source and the destination are the same file; import never overwrites its source' };
  }
  if (req.compress) {
    return { property: 'compress', message: 'Compressed output (-c) is not supported by the native engine; use qemu-img convert -c' };
  }
  if (req.maxSize !== undefined && req.sourceSize > req.maxSize) {
    return {
      property: 'sourceMaxSize',
      message: `The source's virtual size is ${req.sourceSize} bytes, over the ${req.maxSize} bytes allowed (sourceMaxSize, ` +
        'by default the image\'s size); nothing was created. Raise sourceMaxSize if the image is expected to be this large',
    };
  }
  const o = req.options;
  if (o.backingFile !== undefined || o.backingFormat !== undefined) {
    return {
      property: 'backing_file',
      message: 'An imported image holds the whole guest view of its source, so it cannot also have a backing file. ' +
        'Import without backing_file, or create an overlay with create -b and write into it',
    };
  }
  if (o.adoptDataFile) {
    return {
      property: 'data_file',
      message: 'Importing into an adopted data file would overwrite an existing file; name a data file that does not exist yet',
    };
  }
  if (o.size !== undefined) {
    const rounded = roundToSector(req.sourceSize);
    if (roundToSector(o.size) !== rounded) {
      return {
        property: 'size',
        message: `An imported image takes its size from the source (${rounded} bytes); size=${o.size} differs. ` +
          'Import first, then resize',
      };
    }
  }
  return undefined;
}

/** `rebase` without -u: the image is written (clusters copied) and its backing changed. */
export function validateSafeRebase(state: ImageFacts, backingFile: string, backingFormat: string | undefined): Refusal | undefined {
  return validateRebase(state, backingFile, backingFormat) ?? validateWrite(state);
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
