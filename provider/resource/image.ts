// The `Image` dynamic resource. Pulumi serializes the provider object below into the state;
// it captures only a module specifier and requires the implementation at run time, so every
// call runs the installed code (see impl.ts) and the state stays small.

import * as path from 'path';
import * as pulumi from '@pulumi/pulumi';
import type { ImageOutputs } from './impl';

/** How the provider finds its implementation: by package name when installed, else by path. */
const IMPL: string = /[\\/]node_modules[\\/]pulumi-qcow2[\\/]/.test(__dirname)
  ? 'pulumi-qcow2/dist/provider/resource/impl'
  : path.join(__dirname, 'impl');

/** The provider Pulumi runs: each method requires the implementation, nothing else is captured. */
export const imageProvider: pulumi.dynamic.ResourceProvider = {
  check: (olds, news) => require(IMPL).check(olds, news),
  diff: (id, olds, news) => require(IMPL).diff(id, olds, news),
  create: (inputs) => require(IMPL).create(inputs),
  read: (id, props) => require(IMPL).read(id, props),
  update: (id, olds, news) => require(IMPL).update(id, olds, news),
  delete: (id, props) => require(IMPL).remove(id, props),
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
  /** Backing file (stored as an absolute path); needs backingFormat. */
  backingFile?: pulumi.Input<string>;
  backingFormat?: pulumi.Input<'qcow2' | 'raw'>;
  /** External data file (stored as an absolute path). */
  dataFile?: pulumi.Input<string>;
  /** Keep the data file a valid raw image: only at creation; can be cleared later, never set again. */
  dataFileRaw?: pulumi.Input<boolean>;
  /** Take over an existing image (verified, unchanged) or wrap an existing raw data file unchanged. */
  adopt?: pulumi.Input<boolean>;
  /** Import guest data from this raw or qcow2 file at creation. */
  source?: pulumi.Input<string>;
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
}

const OUTPUT_NAMES: Array<keyof ImageOutputs> = [
  'virtualSize', 'actualSize', 'clusterSize', 'compat', 'refcountBits', 'lazyRefcounts', 'extendedL2',
  'compressionType', 'dataFile', 'dataFileRaw', 'backingFile', 'backingFormat', 'dirty', 'corrupt', 'snapshots', 'bitmaps',
  'providerVersion', 'engine', 'preallocation', 'createdDataFile', 'adopted', 'dataFileOnDelete', 'deleteAdopted', 'host',
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
  /** The SSH host the image is on ('' for this machine). */
  declare readonly host: pulumi.Output<string>;

  constructor(name: string, args: ImageArgs, opts?: pulumi.CustomResourceOptions) {
    const props: Record<string, unknown> = { ...args };
    // The connection holds credentials: a secret among the inputs and the outputs of the state.
    if (args.connection !== undefined) props.connection = pulumi.secret(args.connection);
    for (const k of OUTPUT_NAMES) if (!(k in props)) props[k] = undefined;
    const secretOutputs = [...new Set([...(opts?.additionalSecretOutputs ?? []), 'connection'])];
    super(imageProvider, name, props, { ...opts, additionalSecretOutputs: secretOutputs }, 'qcow2', 'Image');
  }
}
