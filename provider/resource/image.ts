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

/** A jump host: the settings of a connection, without a further proxy. */
export interface ImageProxyConnectionArgs {
  /** The host name or address. */
  host: pulumi.Input<string>;
  /** The SSH port. Default 22. */
  port?: pulumi.Input<number>;
  /** The user to log in as. Default "root". */
  user?: pulumi.Input<string>;
  /** The contents (not the path) of a private key, OpenSSH or PEM. */
  privateKey?: pulumi.Input<string>;
  /** The passphrase of an encrypted privateKey. */
  privateKeyPassword?: pulumi.Input<string>;
  /** A password (password and keyboard-interactive authentication). */
  password?: pulumi.Input<string>;
  /** The SSH agent's socket. Default $SSH_AUTH_SOCK. */
  agentSocketPath?: pulumi.Input<string>;
  /** The host's public key line ("ssh-ed25519 AAAA..."); else it must be in ~/.ssh/known_hosts. Unknown or changed keys are refused. */
  hostKey?: pulumi.Input<string>;
  /** Failed dials allowed before giving up; -1 without limit. Default 10. */
  dialErrorLimit?: pulumi.Input<number>;
  /** Seconds for each dial (TCP, handshake, authentication); 0 without limit. Default 15. */
  perDialTimeout?: pulumi.Input<number>;
}

/** How to reach the remote host an image is on: @pulumi/command's remote.ConnectionArgs. */
export interface ImageConnectionArgs extends ImageProxyConnectionArgs {
  /** A jump host to reach `host` through (as ssh -J). */
  proxy?: pulumi.Input<ImageProxyConnectionArgs>;
}

/** Inputs of an Image. See README for defaults and the plan table (what amends, replaces, refuses). */
export interface ImageArgs {
  /** Path of the qcow2 file; relative to the program's directory (with `connection`: absolute, on that host). */
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
  /**
   * Backing file (stored as an absolute path); needs backingFormat. Give the base's Image (or an
   * object with its `path` and `identity` outputs) rather than its path: the image then follows
   * the base's identity, a planned replacement of the base shows at preview and is refused unless
   * this image has allowReplace, and an in-place change of the base is taken over.
   */
  backingFile?: pulumi.Input<string> | BackingImage;
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
  /**
   * The remote host the image is on, reached over SSH: path, dataFile, backingFile and source are
   * then absolute paths on that host (a `file:` source is a file here, uploaded). Kept in the
   * state as a secret. Another host is a replacement (allowReplace); other changes are state only.
   */
  connection?: pulumi.Input<ImageConnectionArgs>;
  /**
   * Accept the backing chain as it is now (the digest a refusal names) as holding the data this
   * image was built on; it is recorded, nothing is written. Matches that one chain only.
   */
  acceptBacking?: pulumi.Input<string>;
  /**
   * Persistent dirty bitmaps the image should have (changed-block tracking; compat 1.1). Added,
   * removed, enabled and disabled in place; a granularity change, or an inconsistent bitmap, needs
   * `allowReset` on that bitmap (its tracking is lost). Bitmaps not listed are left alone unless
   * `manageAllBitmaps`.
   */
  bitmaps?: pulumi.Input<pulumi.Input<BitmapArgs>[]>;
  /** Remove bitmaps the image has that `bitmaps` does not list (default false). */
  manageAllBitmaps?: pulumi.Input<boolean>;
  /**
   * The QMP socket of the QEMU process holding the image (a running VM). While it holds it, a
   * grow goes through block_resize and bitmap changes through block-dirty-bitmap-*; every other
   * change is refused until the VM stops. Without it, every change to a held image is refused.
   */
  qmpSocket?: pulumi.Input<string>;
}

/** One persistent dirty bitmap of an Image. */
export interface BitmapArgs {
  name: pulumi.Input<string>;
  /** Bytes per bit, a power of two from 512 (default: QEMU's for the cluster size, 64 KiB for default images). */
  granularity?: pulumi.Input<number>;
  /** Record writes (default true). */
  enabled?: pulumi.Input<boolean>;
  /** Let a granularity change or an inconsistent bitmap remove it and add it anew (its tracking is lost). */
  allowReset?: pulumi.Input<boolean>;
}

/** A bitmap as the image (or the QEMU holding it) has it. */
export interface BitmapOutput {
  name: string;
  granularity: number;
  /** `auto`: recording writes; `in-use`: a process has it open (or had, and died). */
  flags: string[];
  /** `in-use` with no process holding the image: its writer died, its contents are unknown. */
  inconsistent: boolean;
}

/** A base image as an overlay is wired to it: an Image, or its outputs (say, from another stack). */
export interface BackingImage {
  path: pulumi.Input<string>;
  /** The base's `identity` output. */
  identity: pulumi.Input<string>;
  /** The base's `identityFrom` output. */
  identityFrom?: pulumi.Input<string>;
  /** The base's resource id: not known in a preview that creates or replaces the base. */
  id?: pulumi.Input<string>;
}

function isBackingImage(v: unknown): v is BackingImage {
  return typeof v === 'object' && v !== null && !pulumi.Output.isInstance(v) && typeof (v as { then?: unknown }).then !== 'function' && 'path' in v && 'identity' in v;
}

const OUTPUT_NAMES: Array<keyof ImageOutputs> = [
  'virtualSize', 'actualSize', 'clusterSize', 'compat', 'refcountBits', 'lazyRefcounts', 'extendedL2',
  'compressionType', 'dataFile', 'dataFileRaw', 'backingFile', 'backingFormat', 'dirty', 'corrupt', 'snapshots', 'bitmaps',
  'providerVersion', 'engine', 'preallocation', 'createdDataFile', 'dataFileIdentity', 'adopted', 'dataFileOnDelete', 'deleteAdopted', 'qmpSocket',
  'backingChain', 'backingDrift', 'identity', 'identityFrom', 'source', 'sourceChecksum', 'host',
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
  /** Persistent dirty bitmaps: name, granularity, flags, whether inconsistent (from the QEMU holding the image, with qmpSocket). */
  declare readonly bitmaps: pulumi.Output<BitmapOutput[]>;
  declare readonly providerVersion: pulumi.Output<string>;
  declare readonly engine: pulumi.Output<'native' | 'qemu-img'>;
  /** The SSH host the image is on ('' for this machine). */
  declare readonly host: pulumi.Output<string>;
  /** The source imported at creation ('' when none). */
  declare readonly source: pulumi.Output<string>;
  /** Its checksum ('' when none was given). */
  declare readonly sourceChecksum: pulumi.Output<string>;
  /** This image with its backing chain as one digest: what overlays built on it follow. */
  declare readonly identity: pulumi.Output<string>;
  /** The identity before this provider's last in-place change that kept the guest view ('' when none). */
  declare readonly identityFrom: pulumi.Output<string>;
  /** The files below this image as last recorded: path, dev, ino, size, header fingerprint, when seen. */
  declare readonly backingChain: pulumi.Output<Array<{ path: string; dev: string; ino: string; size: number | string; header: string; seen: string }>>;
  /** What the last refresh found changed in the backing chain ('' when nothing). */
  declare readonly backingDrift: pulumi.Output<string>;

  constructor(name: string, args: ImageArgs, opts?: pulumi.CustomResourceOptions) {
    const props: Record<string, unknown> = { ...args };
    // The connection holds credentials: a secret among the inputs and the outputs of the state.
    if (args.connection !== undefined) props.connection = pulumi.secret(args.connection);
    const backing = args.backingFile;
    if (isBackingImage(backing)) {
      // The path for the header, the identity for the rules; both depend on the base resource.
      props.backingFile = backing.path;
      props.backingIdentity = pulumi.all([backing.identity, backing.identityFrom ?? '']).apply(([identity, from]) => ({ identity, from }));
      if (backing.id !== undefined) props.backingImageId = backing.id;
    }
    for (const k of OUTPUT_NAMES) if (!(k in props)) props[k] = undefined;
    const secretOutputs = [...new Set([...(opts?.additionalSecretOutputs ?? []), 'connection'])];
    super(imageProvider, name, props, { ...opts, additionalSecretOutputs: secretOutputs }, 'qcow2', 'Image');
  }
}
