// What a compat 0.10 image (a version 2 header) cannot have, in one place. Create refuses the
// option, amend refuses turning it on without compat 1.1, a downgrade refuses the image that has
// it, and the resource's plan names the property to change. Each context keeps qemu-img's words;
// each validator asks in qemu-img's order for that context.

import type { CompressionType } from '../model/options';
import type { OptionName, PropertyName } from '../model/names';
import type { Refusal } from './types';

/** The settings an image would have after the change, as far as compat 0.10 cares. */
export interface V2Subject {
  lazyRefcounts: boolean;
  refcountBits: number;
  hasDataFile: boolean;
  extendedL2: boolean;
  compressionType: CompressionType;
  /** Only a downgrade of a zstd image asks: compressed clusters cannot be converted. */
  hasCompressedClusters?: boolean;
}

export type V2Option = 'lazy_refcounts' | 'refcount_bits' | 'data_file' | 'extended_l2' | 'compression_type';

/**
 * - `create`: qemu-img create -o compat=0.10 with the option;
 * - `amend`: qemu-img amend turning the option on while the result is compat 0.10;
 * - `downgrade`: qemu-img amend -o compat=0.10 of an image that has it;
 * - `plan`: the resource's plan (qemu-img's words, then what to do in resource terms).
 */
export type V2Context = 'create' | 'amend' | 'downgrade' | 'plan';

interface V2Constraint {
  option: V2Option & OptionName;
  property: PropertyName;
  violated(s: V2Subject): boolean;
  words: Partial<Record<Exclude<V2Context, 'plan'>, string>>;
  /** The plan's words: one of the contexts' words, plus a detail, then the way forward. */
  plan: { from: Exclude<V2Context, 'plan'>; detail?: string; way: string };
}

const NEEDS_V3 = 'compatibility level 1.1 and above (use version=v3 or greater)';

const CONSTRAINTS: Readonly<Record<V2Option, V2Constraint>> = {
  lazy_refcounts: {
    option: 'lazy_refcounts', property: 'lazyRefcounts',
    violated: (s) => s.lazyRefcounts,
    words: {
      create: `Lazy refcounts only supported with ${NEEDS_V3}`,
      amend: 'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
    },
    plan: { from: 'amend', way: 'Set lazyRefcounts: false in the same change, or keep compat 1.1' },
  },
  refcount_bits: {
    option: 'refcount_bits', property: 'refcountBits',
    violated: (s) => s.refcountBits !== 16,
    words: {
      create: 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)',
      amend: 'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
      downgrade: 'compat=0.10 requires refcount_bits=16',
    },
    plan: { from: 'downgrade', way: 'Set refcountBits: 16 in the same change, or keep compat 1.1' },
  },
  data_file: {
    option: 'data_file', property: 'dataFile',
    violated: (s) => s.hasDataFile,
    words: {
      create: `External data files are only supported with ${NEEDS_V3}`,
      downgrade: 'Cannot downgrade an image with a data file',
    },
    plan: { from: 'downgrade', way: 'Keep compat 1.1: images with an external data file need it' },
  },
  extended_l2: {
    option: 'extended_l2', property: 'extendedL2',
    violated: (s) => s.extendedL2,
    words: {
      create: `Extended L2 entries are only supported with ${NEEDS_V3}`,
      downgrade: 'Cannot downgrade an image with incompatible features 0x10 set',
    },
    plan: { from: 'downgrade', detail: ' (extended L2 entries)', way: 'Keep compat 1.1, or create a new image without extendedL2' },
  },
  compression_type: {
    option: 'compression_type', property: 'compressionType',
    // A downgrade converts a zstd image without compressed clusters to zlib.
    violated: (s) => s.compressionType !== 'zlib' && s.hasCompressedClusters !== false,
    words: {
      create: `Non-zlib compression type is only supported with ${NEEDS_V3}`,
      amend: 'Non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
      downgrade: 'Cannot downgrade an image with zstd compression type and existing compressed clusters',
    },
    plan: { from: 'amend', way: 'Remove compressionType: zstd (a downgrade converts the image to zlib when no cluster is compressed), or keep compat 1.1' },
  },
};

/**
 * The refusal when `subject` (the settings after the change) cannot be compat 0.10 because of
 * `option`, in the words of `context`; undefined when it can. The refusal's property is the
 * option (`plan`: the resource property) the constraint is about, `compat` for a downgrade.
 */
export function v2Refusal(option: V2Option, context: V2Context, subject: V2Subject): Refusal | undefined {
  const c = CONSTRAINTS[option];
  if (!c.violated(subject)) return undefined;
  if (context === 'plan') {
    return { property: c.property, message: `${c.words[c.plan.from]}${c.plan.detail ?? ''}. ${c.plan.way}` };
  }
  const message = c.words[context];
  if (message === undefined) return undefined;
  return { property: context === 'downgrade' ? 'compat' : c.option, message };
}

/** The first of `options` that refuses, in the given order. */
export function firstV2Refusal(options: readonly V2Option[], context: V2Context, subject: V2Subject): Refusal | undefined {
  for (const o of options) {
    const r = v2Refusal(o, context, subject);
    if (r) return r;
  }
  return undefined;
}
