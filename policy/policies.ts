// The qcow2 policies, apart from the PolicyPack that serves them (index.ts), so that tests can
// call each policy's validateResource directly.
//
// Every policy looks at the inputs of an Image (type pulumi-nodejs:dynamic/qcow2:Image) as the
// engine passes them to the analyzer. During preview some inputs are unknown; @pulumi/policy
// wraps the inputs in a proxy that throws UnknownValueError when such a value is read, and
// reports an uncaught one as an advisory "can't run policy during preview" diagnostic. The
// policies read every input through `read`, which turns an unknown value into UNKNOWN, and they
// skip a check whose inputs are unknown: it runs again at `pulumi up`, when they are known.

import * as path from 'path';
import * as policySdk from '@pulumi/policy';
import type { ReportViolation, ResourceValidation, ResourceValidationArgs, ResourceValidationPolicy } from '@pulumi/policy';
import { SIZE_PATTERN, describeSize, parseSize } from './size';

/** Type token of pulumi-qcow2's Image (its class's static __pulumiType). */
export const IMAGE_TYPE = 'pulumi-nodejs:dynamic/qcow2:Image';

/**
 * Where images may live unless the pack's config says otherwise: anywhere, as long as the path is
 * absolute (so the default passes every example). Set allowedDirectories to confine them.
 */
export const DEFAULT_ALLOWED_DIRECTORIES: readonly string[] = ['/'];

/** Largest virtual size that passes qcow2-max-size unless the pack's config says otherwise. */
export const DEFAULT_MAX_SIZE = '2T';

/** An input whose value is not known yet (preview). */
export const UNKNOWN: unique symbol = Symbol('unknown');

// UnknownValueError is exported at run time but not in @pulumi/policy's typings (proxy.d.ts is empty).
const { UnknownValueError } = policySdk as unknown as { UnknownValueError: new (...args: never[]) => Error };

/**
 * The engine's unknown sentinels (pulumi's plugin.Unknown*Value). The engine sends the string one
 * for every unknown input; the proxy recognizes them all. Checked here too so that unproxied props
 * (a caller that did not wrap them) are handled the same way.
 */
const UNKNOWN_SENTINELS = new Set([
  '1c4a061d-8072-4f0a-a4cb-0ff528b18fe7', // boolean
  '3eeb2bf0-c639-47a8-9e75-3b44932eb421', // number
  '04da6b54-80e4-46f7-96ec-b56ff0331ba9', // string (what the engine sends)
  '6a19a0b0-7e62-4c92-b797-7f8e31da9cc2', // array
  '030794c1-ac77-496b-92df-f27374a8bd58', // asset
  'e48ece36-62e2-4504-bad9-02848725956a', // archive
  'dd056dcd-154b-4c76-9bd3-c8f88648b5ff', // object
]);

/** One input of the resource, or UNKNOWN when it is not known yet. */
export function read(props: Record<string, unknown>, key: string): unknown {
  let v: unknown;
  try {
    v = props[key];
  } catch (e) {
    if (e instanceof UnknownValueError) return UNKNOWN;
    throw e;
  }
  return typeof v === 'string' && UNKNOWN_SENTINELS.has(v) ? UNKNOWN : v;
}

/** Reads one input; UNKNOWN when not known yet. */
type Inputs = (key: string) => unknown;
type ImageValidation = (input: Inputs, args: ResourceValidationArgs, reportViolation: ReportViolation) => void;

/**
 * A validateResource for Images only. Like @pulumi/policy's validateResourceOfType, it carries
 * `__pulumiType`, so the analyzer reports the policy as not applicable to other types without
 * calling it; a direct call with another type does nothing.
 */
function forImage(validate: ImageValidation): ResourceValidation {
  const fn: ResourceValidation & { __pulumiType?: string } = (args, reportViolation) => {
    if (args.type !== IMAGE_TYPE) return;
    validate((key) => read(args.props, key), args, reportViolation);
  };
  fn.__pulumiType = IMAGE_TYPE;
  return fn;
}

/** A policy on Images: its name, level and description (and config schema), and its check. */
function imagePolicy(
  head: Pick<ResourceValidationPolicy, 'name' | 'enforcementLevel' | 'description' | 'configSchema'>, validate: ImageValidation,
): ResourceValidationPolicy {
  return { ...head, validateResource: forImage(validate) };
}

const isSet = (v: unknown): v is string => typeof v === 'string' && v !== '';
/** Known and given: neither unknown yet nor left out. */
const given = (v: unknown): boolean => v !== UNKNOWN && v !== undefined && v !== null;
const show = (v: unknown) => JSON.stringify(v);

// ---------------------------------------------------------------------------------------------
// Mandatory

export const noBackingOnRaw = imagePolicy(
  {
    name: 'qcow2-no-backing-on-raw', enforcementLevel: 'mandatory',
    description: 'A data-file-raw image (dataFileRaw: true) cannot have a backing file.',
  },
  (input, _args, report) => {
    const raw = input('dataFileRaw');
    const backing = input('backingFile');
    if (raw !== true || backing === UNKNOWN || !isSet(backing)) return;
    report(
      `backingFile ${show(backing)} is set on an image with dataFileRaw: true. data-file-raw keeps the data file ` +
        'a complete raw image of the disk, and a backing file would make the image read clusters from elsewhere, ' +
        'so qemu refuses the combination. Clear dataFileRaw first, in an update of its own (it can be cleared, ' +
        'never set again), or use a plain base: layer the overlay on a qcow2 image without data-file-raw.',
    );
  },
);

interface AllowedPathsConfig {
  allowedDirectories?: string[];
}

/** `p` (absolute, normalized) lies strictly inside `dir`. */
function isInside(p: string, dir: string): boolean {
  const d = path.posix.normalize(dir).replace(/\/+$/, '');
  if (d === '') return p !== '/'; // dir is "/"
  return p.startsWith(`${d}/`) && p.length > d.length + 1;
}

const PATH_INPUTS = ['path', 'dataFile', 'backingFile'] as const;

export const allowedPaths = imagePolicy(
  {
    name: 'qcow2-allowed-paths',
    enforcementLevel: 'mandatory',
    description: 'Image files (path, dataFile, backingFile) must be absolute paths under the allowed directories.',
    configSchema: {
      properties: {
        allowedDirectories: {
          type: 'array',
          description: 'Absolute directories under which images, data files and backing files may be.',
          items: { type: 'string', pattern: '^/' },
          minItems: 1,
          default: [...DEFAULT_ALLOWED_DIRECTORIES],
        },
      },
    },
  },
  (input, args, report) => {
    const dirs = args.getConfig<AllowedPathsConfig>().allowedDirectories ?? [...DEFAULT_ALLOWED_DIRECTORIES];
    const where = dirs.map((d) => show(d)).join(', ');
    const anywhere = dirs.some((d) => path.posix.normalize(d) === '/');
    for (const key of PATH_INPUTS) {
      const p = input(key);
      if (p === UNKNOWN || !isSet(p)) continue;
      if (!path.posix.isAbsolute(p)) {
        report(
          `${key} ${show(p)} is a relative path. The Image resolves it against the directory the Pulumi program ` +
            `runs in, so the file would land wherever the program happens to run. Use an absolute path${anywhere ? '' : ` under ${where}`}.`,
        );
        continue;
      }
      const normal = path.posix.normalize(p);
      if (!dirs.some((d) => isInside(normal, d))) {
        const resolved = normal === p ? '' : ` (it resolves to ${show(normal)})`;
        report(
          `${key} ${show(p)}${resolved} is outside the allowed directories ${where}. Put the file under one of ` +
            "them, or add its directory to this policy's allowedDirectories config.",
        );
      }
    }
  },
);

export const compat11 = imagePolicy(
  { name: 'qcow2-compat-1.1', enforcementLevel: 'mandatory', description: 'New images must use qcow2 compat 1.1 (version 3).' },
  (input, _args, report) => {
    const compat = input('compat');
    if (!given(compat) || compat === '1.1') return;
    // An adopted image is not a new one: it is taken over as it is. Unknown: judged at update.
    const adopt = input('adopt');
    if (adopt === true || adopt === UNKNOWN) return;
    report(
      `compat ${show(compat)} would create a qcow2 version 2 image, which has none of the version 3 features ` +
        '(zero clusters, lazy refcounts, external data files, persistent dirty bitmaps, refcount widths other ' +
        'than 16, zstd compression). Remove compat (the default is 1.1) or set it to "1.1".',
    );
  },
);

// ---------------------------------------------------------------------------------------------
// Advisory

export const preferDataFileRaw = imagePolicy(
  {
    name: 'qcow2-prefer-data-file-raw', enforcementLevel: 'advisory',
    description: 'Images with an external data file should use data-file-raw (dataFileRaw: true).',
  },
  (input, _args, report) => {
    const dataFile = input('dataFile');
    if (dataFile === UNKNOWN || !isSet(dataFile)) return;
    const raw = input('dataFileRaw');
    if (raw === true || raw === UNKNOWN) return;
    // data-file-raw cannot have a backing file (qcow2-no-backing-on-raw): no advice to give then.
    const backing = input('backingFile');
    if (backing === UNKNOWN || isSet(backing)) return;
    report(
      `dataFile ${show(dataFile)} is used without dataFileRaw: true. Without data-file-raw the qcow2 metadata ` +
        'may mark clusters zero or unallocated while the data file still holds old bytes, so the data file is ' +
        'not a faithful raw image on its own; with it, the data file stays a complete raw image that other tools ' +
        'can use. Set dataFileRaw: true when the image is created (it cannot be set on an existing image).',
    );
  },
);

interface MaxSizeConfig {
  maxSize?: number | string;
}

export const maxSize = imagePolicy(
  {
    name: 'qcow2-max-size',
    enforcementLevel: 'advisory',
    description: 'The virtual size of an image should not exceed the configured maximum.',
    configSchema: {
      properties: {
        maxSize: {
          type: ['integer', 'string'],
          description: 'Largest virtual size: bytes, or a number with a k, M, G, T, P or E suffix (powers of 1024), e.g. "2T".',
          minimum: 0,
          pattern: SIZE_PATTERN,
          default: DEFAULT_MAX_SIZE,
        },
      },
    },
  },
  (input, args, report) => {
    const configured = args.getConfig<MaxSizeConfig>().maxSize ?? DEFAULT_MAX_SIZE;
    const max = parseSize(configured);
    if (max === undefined) {
      // The CLI validates config against the schema first, so this is a programming error.
      throw new Error(`qcow2-max-size: config maxSize ${show(configured)} is not a size (bytes, or e.g. "2T")`);
    }
    const size = input('size');
    if (!given(size)) return;
    const bytes = parseSize(size);
    if (bytes === undefined) return; // not a size: the Image's own check refuses it
    if (bytes <= max) return;
    report(
      `size ${show(size)} (${describeSize(bytes)}, ${bytes} bytes) is above the maximum of ${show(configured)} ` +
        `(${describeSize(max)}). Use a smaller size, or raise this policy's maxSize config if the image is meant to be that large.`,
    );
  },
);

export const refcount16 = imagePolicy(
  { name: 'qcow2-refcount-16', enforcementLevel: 'advisory', description: 'Images should keep the default refcount width of 16 bits.' },
  (input, _args, report) => {
    const bits = input('refcountBits');
    if (!given(bits) || bits === 16) return;
    report(
      `refcountBits ${show(bits)} differs from the default 16. Narrower refcounts limit how often a cluster can be ` +
        'shared (1 bit allows no internal snapshots), wider ones make the refcount tables larger for nothing, and ' +
        'tools and qcow2 version 2 expect 16. Remove refcountBits or set it to 16.',
    );
  },
);

/** All policies of the pack, mandatory first. */
export const policies: ResourceValidationPolicy[] = [
  noBackingOnRaw,
  allowedPaths,
  compat11,
  preferDataFileRaw,
  maxSize,
  refcount16,
];
