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
  /** qemu-img convert --bitmaps. */
  bitmaps?: boolean;
  /**
   * qemu-img convert -B (or -o backing_file=): the new image is an overlay of the named backing
   * file and gets only what the source holds above its own backing file.
   */
  overBacking?: boolean;
  /** The largest virtual size the user allows for the source (`sourceMaxSize`). */
  maxSize?: bigint;
  /** How many source files are read, one after another (qemu-img convert SRC1 SRC2 ... DST); default 1. */
  sources?: number;
  /** convert -n: the target exists, with its own options and backing file (-B then only says the source's top layer is copied). */
  existingTarget?: boolean;
}

export function validateImport(req: ImportRequest): Refusal | undefined {
  if (req.sourceFormat !== 'raw' && req.sourceFormat !== 'qcow2') {
    return { property: 'source.format', message: `Unknown source format '${req.sourceFormat}': import reads raw and qcow2 images only` };
  }
  if (req.targetFormat !== undefined && req.targetFormat !== 'qcow2' && req.targetFormat !== 'raw') {
    return { property: 'format', message: `Unknown output format '${req.targetFormat}': this tool writes qcow2 and raw images (-O qcow2, -O raw)` };
  }
  if (req.targetFormat === 'raw' && req.bitmaps) {
    return { property: 'bitmaps', message: "Format driver 'raw' does not support bitmaps" };
  }
  // qemu-img's words, in its order (the backing file at creation, compression when writing).
  if (req.targetFormat === 'raw' && req.overBacking) {
    return { property: 'backing_file', message: "Backing file not supported for file format 'raw'" };
  }
  if (req.targetFormat === 'raw' && Object.keys(req.options).length > 0) {
    return { property: 'format', message: 'A raw image has no create options, compression or backing file: convert -O raw without -o, -c and -B' };
  }
  if (req.targetFormat === 'raw' && req.compress) {
    return { property: 'compress', message: 'Compression not supported for this file format' };
  }
  if (req.sameFile) {
    return { property: 'source', message: 'The source and the destination are the same file; import never overwrites its source' };
  }
  if (req.compress && req.options.dataFile !== undefined) {
    // qemu-img fails at the first compressed write (qcow2 has no compressed clusters in a data file).
    return { property: 'compress', message: 'Compressed output (-c) cannot be written to an image with an external data file (data_file): convert without -c, or without data_file' };
  }
  // qemu-img's words for what several sources cannot have: a backing file, bitmaps.
  const several = (req.sources ?? 1) > 1;
  if (several && req.overBacking) {
    return { property: 'backing_file', message: 'Having a backing file for the target makes no sense when concatenating multiple input images' };
  }
  if (several && req.bitmaps) {
    return { property: 'bitmaps', message: 'Copying bitmaps only possible with single source' };
  }
  if (req.maxSize !== undefined && req.sourceSize > req.maxSize) {
    return {
      property: 'sourceMaxSize',
      message: `The source's virtual size is ${req.sourceSize} bytes, over the ${req.maxSize} bytes allowed (sourceMaxSize, ` +
        'by default the image\'s size); nothing was created. Raise sourceMaxSize if the image is expected to be this large',
    };
  }
  const o = req.options;
  if (req.overBacking && !req.existingTarget) {
    if (o.backingFile === undefined) return { property: 'backing_file', message: 'convert -B needs the name of the backing file' };
    if (o.backingFormat === undefined) return { property: 'backing_fmt', message: 'Use of backing file requires explicit backing format' };
  } else if (o.backingFile !== undefined || o.backingFormat !== undefined) {
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

/** `convert -n`: the existing target must hold the whole source. */
export function validateConvertInto(sourceSize: bigint, targetSize: bigint): Refusal | undefined {
  if (targetSize >= sourceSize) return undefined;
  return {
    property: 'size',
    message: `The target image is smaller (${targetSize} bytes) than the source (${sourceSize} bytes); convert -n writes the whole source. Resize the target first, or convert to a new image`,
  };
}

/** `rebase` without -u: the image is written (clusters copied) and its backing changed. */
export function validateSafeRebase(state: ImageFacts, backingFile: string, backingFormat: string | undefined): Refusal | undefined {
  return validateRebase(state, backingFile, backingFormat) ?? validateWrite(state);
}
