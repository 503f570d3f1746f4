// The `Image` dynamic resource. Pulumi serializes the provider object below into the state
// (`__provider`) and runs that copy for read and delete, so it is a shim that captures nothing
// but a module specifier: each call requires the implementation by package name, resolved from
// the program's folder at run time. Every call then runs the installed code (an upgrade needs no
// update of every image), and the state holds no path of this machine. In a clone,
// scripts/link-self.js makes node_modules/pulumi-qcow2 point at the checkout, so the same
// specifier resolves there.

import * as pulumi from '@pulumi/pulumi';
import type { ImageOutputs } from './impl';

/** The exported subpath (package.json `exports`) that maps to ./impl.js. */
const IMPLEMENTATION = 'pulumi-qcow2/dynamic';

/** The provider Pulumi runs: each method requires the implementation, nothing else is captured. */
export const imageProvider: pulumi.dynamic.ResourceProvider = {
  check: (olds, news) => require(IMPLEMENTATION).check(olds, news),
  diff: (id, olds, news) => require(IMPLEMENTATION).diff(id, olds, news),
  create: (inputs) => require(IMPLEMENTATION).create(inputs),
  read: (id, props) => require(IMPLEMENTATION).read(id, props),
  update: (id, olds, news) => require(IMPLEMENTATION).update(id, olds, news),
  delete: (id, props) => require(IMPLEMENTATION).remove(id, props),
};

/** Inputs of an Image. See README for defaults and the plan table (what amends, replaces, refuses). */
export interface ImageArgs {
  /** Path of the qcow2 file; relative to the program's directory. */
  path: pulumi.Input<string>;
  /** Virtual size in bytes, or a string with qemu-img's suffixes ("20G"). */
  size?: pulumi.Input<number | string>;
  /** Cluster size in bytes (default 65536). Create-only. */
  clusterSize?: pulumi.Input<number>;
  /** "1.1" (default) or "0.10". */
  compat?: pulumi.Input<'0.10' | '1.1'>;
  lazyRefcounts?: pulumi.Input<boolean>;
  /** Refcount width: 1, 2, 4, 8, 16 (default), 32 or 64. */
  refcountBits?: pulumi.Input<number>;
  /** Extended L2 entries (create-only; cluster size >= 16 KiB). */
  extendedL2?: pulumi.Input<boolean>;
  /** "zlib" (default) or "zstd". Create-only. */
  compressionType?: pulumi.Input<'zlib' | 'zstd'>;
  /** "off" (default), "metadata", "falloc" or "full". Create-only. */
  preallocation?: pulumi.Input<'off' | 'metadata' | 'falloc' | 'full'>;
  /** Backing file (stored as an absolute path); needs backingFormat. */
  backingFile?: pulumi.Input<string>;
  backingFormat?: pulumi.Input<'qcow2' | 'raw'>;
  /** External data file (stored as an absolute path). */
  dataFile?: pulumi.Input<string>;
  /** Keep the data file a valid raw image: only at creation; can be cleared later, never set again. */
  dataFileRaw?: pulumi.Input<boolean>;
  /** Take over an existing image (verified, unchanged) or wrap an existing raw data file unchanged. */
  adopt?: pulumi.Input<boolean>;
  /**
   * Import guest data at creation from a raw or qcow2 file, or an http(s) URL (needs
   * sourceChecksum); gzip/xz/zstd-compressed content is decompressed. Later changes are
   * recorded only.
   */
  source?: pulumi.Input<string>;
  /** `sha256:<hex>` or `sha512:<hex>` of the source: required for a URL, verified for a file. A new one plans nothing unless allowReplace. */
  sourceChecksum?: pulumi.Input<string>;
  /** The most bytes the source may have (downloaded, decompressed, virtual size); default size. */
  sourceMaxSize?: pulumi.Input<number | string>;
  /** Files a qcow2 source may name as backing or data file; any other name is refused. */
  sourceReferences?: pulumi.Input<pulumi.Input<string>[]>;
  /** Format of the source (default: detected by content). */
  sourceFormat?: pulumi.Input<'raw' | 'qcow2'>;
  /** Let a smaller size shrink the image (deletes data beyond the new end). */
  allowShrink?: pulumi.Input<boolean>;
  /** Let create-only changes replace the image (deletes it and its data). */
  allowReplace?: pulumi.Input<boolean>;
  /** "native" (default) or "qemu-img". */
  engine?: pulumi.Input<'native' | 'qemu-img'>;
  /** Data file on destroy: "auto" (default: remove only if this resource created it), "keep", "delete". */
  dataFileOnDelete?: pulumi.Input<'auto' | 'keep' | 'delete'>;
  /** Let destroy delete an adopted image (default false). */
  deleteAdopted?: pulumi.Input<boolean>;
}

const OUTPUT_NAMES: Array<keyof ImageOutputs> = [
  'virtualSize', 'actualSize', 'clusterSize', 'compat', 'refcountBits', 'lazyRefcounts', 'extendedL2',
  'compressionType', 'dataFile', 'dataFileRaw', 'backingFile', 'backingFormat', 'dirty', 'corrupt', 'snapshots', 'bitmaps',
  'providerVersion', 'engine', 'preallocation', 'createdDataFile', 'adopted', 'dataFileOnDelete', 'deleteAdopted',
  'source', 'sourceChecksum',
];

/** A qcow2 disk image managed declaratively. */
export class Image extends pulumi.dynamic.Resource {
  static readonly __pulumiType = 'pulumi-nodejs:dynamic/qcow2:Image';

  /** True if `obj` is an Image (works across copies of this package). */
  static override isInstance(obj: unknown): obj is Image {
    return typeof obj === 'object' && obj !== null && (obj as { __pulumiType?: string }).__pulumiType === Image.__pulumiType;
  }

  declare readonly path: pulumi.Output<string>;
  /** Bytes: a number below 2^53 (8 PiB), a decimal string above, exact either way. */
  declare readonly virtualSize: pulumi.Output<number | string>;
  /** Bytes allocated for the qcow2 file (a number below 2^53, a decimal string above). */
  declare readonly actualSize: pulumi.Output<number | string>;
  declare readonly clusterSize: pulumi.Output<number>;
  declare readonly compat: pulumi.Output<'0.10' | '1.1'>;
  declare readonly refcountBits: pulumi.Output<number>;
  declare readonly lazyRefcounts: pulumi.Output<boolean>;
  declare readonly extendedL2: pulumi.Output<boolean>;
  declare readonly compressionType: pulumi.Output<'zlib' | 'zstd'>;
  /** Data file name stored in the image ('' when none). */
  declare readonly dataFile: pulumi.Output<string>;
  declare readonly dataFileRaw: pulumi.Output<boolean>;
  /** Backing file name ('' when none). */
  declare readonly backingFile: pulumi.Output<string>;
  declare readonly backingFormat: pulumi.Output<string>;
  declare readonly dirty: pulumi.Output<boolean>;
  declare readonly corrupt: pulumi.Output<boolean>;
  /** Number of internal snapshots (the rules refuse a compat 0.10 downgrade of an image with any). */
  declare readonly snapshots: pulumi.Output<number>;
  /** Names of persistent dirty bitmaps. */
  declare readonly bitmaps: pulumi.Output<string[]>;
  declare readonly providerVersion: pulumi.Output<string>;
  declare readonly engine: pulumi.Output<'native' | 'qemu-img'>;
  /** The source imported at creation ('' when none). */
  declare readonly source: pulumi.Output<string>;
  /** Its checksum ('' when none was given). */
  declare readonly sourceChecksum: pulumi.Output<string>;

  constructor(name: string, args: ImageArgs, opts?: pulumi.CustomResourceOptions) {
    const props: Record<string, unknown> = { ...args };
    for (const k of OUTPUT_NAMES) if (!(k in props)) props[k] = undefined;
    super(imageProvider, name, props, opts, 'qcow2', 'Image');
  }
}
