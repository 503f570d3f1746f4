// The vocabulary of provider/rules: what an existing image is (as info reads it), what a
// program or command asks for, and the decisions the rules return. Pure data, no I/O.

import type { Compat, CreateOptions } from '../model/options';

/** An existing image as the rules see it: the one image-facts model (provider/model/facts.ts). */
export type { ImageFacts } from '../model/facts';

/** An `amend` request in qemu-img terms: only the fields given are changed. */
export interface AmendRequest {
  compat?: Compat;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  size?: bigint;
  /** New data file name; '' removes the stored name. */
  dataFile?: string;
  dataFileRaw?: boolean;
  backingFile?: string;
  backingFormat?: string;
}

/** What a program or stack declares for an image (resource inputs, typed): the create options, plus opt-ins. */
export interface DesiredSpec extends Omit<CreateOptions, 'adoptDataFile'> {
  /** Where the image should be (absolute). Moving it means a new image. */
  path?: string;
  /** The SSH host it should be on ('' for this machine). Another host means a new image. */
  host?: string;
  /** Shrinking destroys data beyond the new end: only with this set. */
  allowShrink?: boolean;
  /** Properties that can only change by replacing the image may do so (the old image is deleted). */
  allowReplace?: boolean;
}

/** Facts the caller gathered by I/O for rules that depend on the world (rules never do I/O). */
export interface WorldFacts {
  /** The desired data file, when it differs from the current one: does it exist, and its size. */
  desiredDataFile?: { exists: boolean; size?: bigint };
}

export type Action = 'none' | 'amend' | 'replace' | 'refuse';

/** How an in-place change is carried out by an engine. */
export type Operation = 'amend' | 'resize' | 'rebase';

/** One decision: what happens to one property, and why, in words a person can act on. */
export interface Change {
  property: keyof DesiredSpec;
  action: Action;
  operation?: Operation;
  reason: string;
  from?: unknown;
  to?: unknown;
}

/** A refusal in qemu-img's words, with the option or property it is about. */
export interface Refusal {
  property: string;
  message: string;
}
