// Create-time legality: every check qemu-img 7.2 makes on qcow2 create options, in its order
// and with its words, plus the combinations we refuse where qemu-img would lose data.
// Pure: no I/O. The format engine, both engines and the CLI call this before touching a file.

import type { CreateOptions, Preallocation, Compat, CompressionType, RawCreateOptions, ResolvedCreateOptions } from '../model/options';
import { roundToSector } from '../model/facts';
import { v2Refusal, type V2Option } from './compat';
import { BDRV_MAX_LENGTH, MAX_L1_ENTRIES, validateSizeValue } from './size';
export type { ResolvedCreateOptions };

/** A refusal: the option it is about and qemu-img's message (or ours, where we are stricter). */
export interface CreateRefusal { property: string; message: string }

const INT64_MAX = (1n << 63n) - 1n;

/**
 * Validate create options and fill in defaults. Returns the resolved options, or the first
 * refusal in qemu-img's order. `size` may be undefined only when the caller will derive it
 * (from a backing file or an adopted data file) and call again.
 */
export function validateCreate(o: CreateOptions): { ok: true; options: ResolvedCreateOptions } | { ok: false; refusal: CreateRefusal } {
  const refuse = (property: string, message: string) => ({ ok: false as const, refusal: { property, message } });
  const clusterSize = o.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  const extendedL2 = o.extendedL2 ?? false;
  const compat: Compat = o.compat ?? '1.1';
  const version = compat === '0.10' ? 2 : 3;
  const refcountBits = o.refcountBits ?? 16;
  const preallocationAsked: Preallocation = o.preallocation ?? 'off';
  const dataFileRaw = o.dataFileRaw ?? false;
  const compressionType: CompressionType = o.compressionType ?? 'zlib';

  // What compat 0.10 cannot have (rules/compat.ts), asked in qemu-img's order among the rest.
  const subject = { lazyRefcounts: o.lazyRefcounts ?? false, refcountBits, hasDataFile: o.dataFile !== undefined, extendedL2, compressionType };
  const v2 = (option: V2Option) => (version < 3 ? v2Refusal(option, 'create', subject) : undefined);
  let r = v2('extended_l2');
  if (r) return { ok: false as const, refusal: r };
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
    return refuse('cluster_size', 'Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && clusterSize < 16384) {
    return refuse('extended_l2', 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  if (o.backingFile !== undefined && preallocationAsked !== 'off' && !extendedL2) {
    return refuse('preallocation', 'Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (o.backingFormat !== undefined && o.backingFile === undefined) {
    return refuse('backing_fmt', 'Backing format cannot be used without backing file');
  }
  if ((r = v2('lazy_refcounts'))) return { ok: false as const, refusal: r };
  if (!Number.isInteger(refcountBits) || refcountBits < 1 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0) {
    return refuse('refcount_bits', 'Refcount width must be a power of two and may not exceed 64 bits');
  }
  if ((r = v2('refcount_bits'))) return { ok: false as const, refusal: r };
  if (dataFileRaw && o.dataFile === undefined) {
    return refuse('data_file_raw', 'data-file-raw requires data-file');
  }
  if (dataFileRaw && o.backingFile !== undefined) {
    return refuse('backing_file', 'Backing file and data-file-raw cannot be used at the same time');
  }
  if ((r = v2('data_file')) || (r = v2('compression_type'))) return { ok: false as const, refusal: r };
  // Stricter than qemu-img 7.2, which accepts this and then reads zeros through qcow2: its
  // preallocated extended entries carry an empty subcluster bitmap.
  if (extendedL2 && dataFileRaw) {
    return refuse('extended_l2', 'extended_l2=on cannot be combined with data_file_raw=on: QEMU 7.2 preallocates such ' +
      'images with empty subcluster bitmaps, so reads through qcow2 return zeros while the raw data file holds the data. ' +
      'Create the image with extended_l2=off');
  }
  if (o.adoptDataFile && o.dataFile === undefined) {
    return refuse('data_file', 'Adopting a data file needs data_file=NAME: name the existing raw file to wrap');
  }
  if (o.size !== undefined) {
    const bad = validateSizeValue(o.size);
    if (bad) return { ok: false as const, refusal: bad };
  }
  const size = o.size === undefined ? 0n : roundToSector(BigInt(o.size));
  // qemu-img rounds up to a sector, then the block layer refuses what passed INT64_MAX.
  if (size > INT64_MAX) return refuse('size', 'Could not resize image: Image size cannot be negative');
  if (size > BDRV_MAX_LENGTH) {
    return refuse('size', `Could not resize image: offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})`);
  }
  const l2Coverage = BigInt(clusterSize / (extendedL2 ? 16 : 8)) * BigInt(clusterSize);
  if ((size + l2Coverage - 1n) / l2Coverage > BigInt(MAX_L1_ENTRIES)) {
    return refuse('size', "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
  // data-file-raw needs a 1:1 mapping of every guest cluster: QEMU forces metadata preallocation.
  const preallocation: Preallocation = dataFileRaw && preallocationAsked === 'off' ? 'metadata' : preallocationAsked;
  const options: ResolvedCreateOptions = {
    size, compat, version, clusterSize, clusterBits, refcountBits, refcountOrder: Math.log2(refcountBits),
    lazyRefcounts: o.lazyRefcounts ?? false, extendedL2, compressionType, preallocation, dataFileRaw,
    adoptDataFile: o.adoptDataFile ?? false,
  };
  if (o.backingFile !== undefined) options.backingFile = o.backingFile;
  if (o.backingFormat !== undefined) options.backingFormat = o.backingFormat;
  if (o.dataFile !== undefined) options.dataFile = o.dataFile;
  return { ok: true, options };
}

/** A raw image to create: its size (rounded up to 512 as QEMU's file driver does) and preallocation. */
export interface ResolvedRawCreate { size: bigint; preallocation: 'off' | 'falloc' | 'full' }

/** `create -f raw`: a size is needed; raw has no metadata to preallocate. */
export function validateRawCreate(o: RawCreateOptions): { ok: true; options: ResolvedRawCreate } | { ok: false; refusal: CreateRefusal } {
  if (o.size === undefined) return { ok: false, refusal: { property: 'size', message: 'Image creation needs a size parameter' } };
  const p = o.preallocation ?? 'off';
  if (p !== 'off' && p !== 'falloc' && p !== 'full') {
    return { ok: false, refusal: { property: 'preallocation', message: `Unsupported preallocation mode: ${p}` } };
  }
  const size = roundToSector(o.size);
  if (size > BDRV_MAX_LENGTH) {
    return { ok: false, refusal: { property: 'size', message: "The image size is too large for file format 'raw'" } };
  }
  return { ok: true, options: { size, preallocation: p } };
}

/**
 * Adopting an existing data file: it is never resized or written, so it must already be a
 * whole number of sectors and at least as large as the virtual size.
 */
export function validateAdoption(dataFile: string, fileSize: bigint, size: bigint): CreateRefusal | undefined {
  if (fileSize % 512n !== 0n) {
    return {
      property: 'data_file',
      message: `Data file '${dataFile}' is ${fileSize} bytes, not a multiple of 512; an adopted data file is never resized, so it cannot back a qcow2 image as it is`,
    };
  }
  if (fileSize < size) {
    return {
      property: 'size',
      message: `Data file '${dataFile}' is ${fileSize} bytes, smaller than the requested size ${size}; an adopted data file is never resized. Omit the size to use the file's own size`,
    };
  }
  return undefined;
}

/** Facts about the world a create needs, read by the engine when the rules ask (rules do no I/O). */
export interface CreateFacts {
  /** Open the backing file (relative to the new image's folder) and learn its size; throws when it cannot. */
  backing(): { size: bigint; detectedFormat: string };
  /** Size of the data file to adopt; throws when it is not a regular file or does not exist. */
  adoptedDataFileSize(): bigint;
  /** Whether the data file to adopt exists. */
  adoptedDataFileExists(): boolean;
}

export interface CreateBehaviour {
  /** qemu-img's -u: do not open the backing file (then a size is required). */
  unsafeBacking?: boolean;
}

const missingBackingFormat = (detected: string): CreateRefusal => ({
  property: 'backing_fmt', message: `Backing file specified without backing format\nDetected format of ${detected}.`,
});

/**
 * Validate create options and derive the size from the backing file or the adopted data file,
 * in qemu-img's order: the options alone first (nothing is opened for a refused request), then
 * the backing file (qemu-img opens it even when the size is given), then the adopted data file.
 */
export function resolveCreate(options: CreateOptions, facts: CreateFacts, behaviour: CreateBehaviour = {}):
  { ok: true; options: ResolvedCreateOptions } | { ok: false; refusal: CreateRefusal } {
  const first = validateCreate(options);
  if (!first.ok) return first;
  let resolved = first.options;
  const probeBacking = options.backingFile !== undefined && !behaviour.unsafeBacking;
  if (options.size === undefined) {
    let size: bigint | undefined;
    if (probeBacking) {
      const probe = facts.backing();
      if (options.backingFormat === undefined) return { ok: false, refusal: missingBackingFormat(probe.detectedFormat) };
      size = probe.size;
    } else if (options.adoptDataFile && options.dataFile !== undefined) {
      size = facts.adoptedDataFileSize();
    }
    if (size === undefined) return { ok: false, refusal: { property: 'size', message: 'Image creation needs a size parameter' } };
    const again = validateCreate({ ...options, size });
    if (!again.ok) return again;
    resolved = again.options;
  } else if (probeBacking) {
    const probe = facts.backing();
    if (options.backingFormat === undefined) return { ok: false, refusal: missingBackingFormat(probe.detectedFormat) };
  }
  if (resolved.adoptDataFile && resolved.dataFile !== undefined && facts.adoptedDataFileExists()) {
    const r = validateAdoption(resolved.dataFile, facts.adoptedDataFileSize(), resolved.size);
    if (r) return { ok: false, refusal: r };
  }
  return { ok: true, options: resolved };
}

/**
 * A create refusal as the Image resource reports it: qemu-img's words (as validateCreate and
 * validateAdoption give them, and the command line prints them), then what to change in the
 * program, in input names.
 */
export function withCreateWayForward(r: CreateRefusal): string {
  const ways: Array<[RegExp, string]> = [
    [/^Extended L2 entries are only supported with compatibility level/, 'Set compat: "1.1", or remove extendedL2'],
    [/^Cluster size must be a power of two/, 'Set clusterSize to a power of two from 512 to 2097152 (the default is 65536)'],
    [/^Extended L2 entries are only supported with cluster sizes/, 'Set clusterSize to 16384 or more, or remove extendedL2'],
    [/^Backing file and preallocation can only be used/, 'Remove preallocation (an overlay allocates as it is written), or set extendedL2: true'],
    [/^Backing format cannot be used without backing file/, 'Set backingFile too, or remove backingFormat'],
    [/^Lazy refcounts only supported with compatibility level/, 'Set compat: "1.1", or remove lazyRefcounts'],
    [/^Refcount width must be a power of two/, 'Set refcountBits to 1, 2, 4, 8, 16, 32 or 64 (the default is 16)'],
    [/^Different refcount widths than 16 bits require/, 'Set compat: "1.1", or remove refcountBits (16 bits is the default)'],
    [/^data-file-raw requires data-file/, 'Set dataFile to the raw file that holds the guest data, or remove dataFileRaw'],
    [/^Backing file and data-file-raw cannot be used at the same time/,
      'A data-file-raw image keeps its data file a complete raw disk, which a backing file would contradict. ' +
      'Remove backingFile (the data file is the whole disk), or remove dataFileRaw to make an overlay'],
    [/^External data files are only supported with compatibility level/, 'Set compat: "1.1", or remove dataFile'],
    [/^Non-zlib compression type is only supported with compatibility level/, 'Set compat: "1.1", or remove compressionType'],
    [/^extended_l2=on cannot be combined with data_file_raw=on/, 'Remove extendedL2 (or set it to false)'],
    [/^Adopting a data file needs data_file=NAME/, 'Set dataFile to the existing raw file to wrap, or remove adopt'],
    [/^Could not resize image: offset\(\d+\) exceeds maximum/, 'Set a smaller size'],
    [/^The image size is too large for file format 'qcow2'/, 'Set a smaller size, or a larger clusterSize'],
    [/^Data file '.*' is \d+ bytes, not a multiple of 512/, 'Extend the file to a multiple of 512 bytes first, or remove adopt to create a new data file elsewhere'],
    [/^Data file '.*' is \d+ bytes, smaller than the requested size/, 'Remove size (the file\'s own size is used)'],
    [/^Backing file specified without backing format/, 'Set backingFormat ("qcow2" or "raw")'],
    [/^Image creation needs a size parameter/, 'Set size'],
  ];
  const way = ways.find(([re]) => re.test(r.message))?.[1];
  if (!way || r.message.includes(way)) return r.message;
  // qemu-img's wording for the command line ends with its own hint in option names; the resource's
  // way forward replaces it.
  const message = r.message.replace(/\. Create the image with extended_l2=off$/, '').replace(/\. Omit the size to use the file's own size$/, '');
  return `${message.replace(/\.$/, '')}. ${way}`;
}
