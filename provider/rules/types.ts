// The vocabulary of provider/rules: what an existing image is (as info reads it), what a
// program or command asks for, and the decisions the rules return. Pure data, no I/O.

import type { BitmapAction } from '../model/bitmaps';
import type { BackingIdentity, ChainLayer, ChainView } from '../model/chain';
import type { ImageFacts } from '../model/facts';
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

/** A persistent dirty bitmap a program declares (resource input `bitmaps`). */
export interface BitmapSpec {
  name: string;
  /** Bytes per bit; default: QEMU's for the cluster size (64 KiB for default images). Unset on an existing bitmap: not managed. */
  granularity?: number;
  /** Recording writes (default true). */
  enabled?: boolean;
  /** Consent to throw this bitmap's tracking away (remove and add anew) for a granularity change or an inconsistent bitmap. */
  allowReset?: boolean;
}

/** What a program or stack declares for an image (resource inputs, typed): the create options, plus opt-ins. */
export interface DesiredSpec extends Omit<CreateOptions, 'adoptDataFile'> {
  /** The persistent bitmaps the image should have; bitmaps not listed are left alone unless manageAllBitmaps. */
  bitmaps?: BitmapSpec[];
  /** Remove bitmaps on disk that `bitmaps` does not list. */
  manageAllBitmaps?: boolean;
  /** The QMP socket of the QEMU process that holds the image: grows and bitmap changes then go through it. */
  qmpSocket?: string;
  /** Where the image should be (absolute). Moving it means a new image. */
  path?: string;
  /** The SSH host it should be on ('' for this machine). Another host means a new image. */
  host?: string;
  /** Shrinking destroys data beyond the new end: only with this set. */
  allowShrink?: boolean;
  /** Properties that can only change by replacing the image may do so (the old image is deleted). */
  allowReplace?: boolean;
  /** Where the image's guest data was imported from (a path or URL): only recorded after creation. */
  source?: string;
  /** The checksum of that source (`sha256:<hex>`): a new one means other guest data. */
  sourceChecksum?: string;
  /**
   * The backing file is given as an Image: its identity (or 'unknown' while a preview plans a
   * change of it). Only a change vouched for by that Image is taken over without asking.
   */
  backingIdentity?: BackingIdentity | 'unknown';
  /** The Image the backing file comes from is being replaced: its path or resource id is not known yet. */
  backingFileUnknown?: boolean;
  /** The user asserts that the chain as it is now (this digest) holds the guest data the image was built on. */
  acceptBacking?: string;
}

/** Facts the caller gathered by I/O for rules that depend on the world (rules never do I/O). */
export interface WorldFacts {
  /** The desired data file, when it differs from the current one: does it exist, and its size. */
  desiredDataFile?: { exists: boolean; size?: bigint };
  /** The process that holds the image for writing (a running VM), named ("process 4242 (qemu-system-x86_64)"). */
  holder?: string;
  /**
   * The image as it was last recorded (the resource's state after its last create, update or
   * refresh), when the caller has it. Where the image on disk differs, it was changed outside
   * the program since: decisions and refusals say so.
   */
  recorded?: ImageFacts;
  /** The image file is not there any more (removed outside the program since it was recorded). */
  imageMissing?: boolean;
  /** The source and checksum the state recorded at creation ('' when none, or a state from before they were recorded). */
  recordedSource?: { source: string; sourceChecksum: string };
  /** The backing chain as recorded in the state and as on disk now (images with a backing file). */
  chain?: { recorded: ChainLayer[]; current: ChainView };
}

/** `live`: carried out through QMP by the QEMU process that holds the image. */
export type Action = 'none' | 'amend' | 'live' | 'replace' | 'refuse';

/** How an in-place change is carried out: by an engine (amend, resize, rebase, bitmap), or live through QMP (resize, bitmap); 'record': nothing on disk, the state records the new value (the chain anew, a source's new URL or checksum). */
export type Operation = 'amend' | 'resize' | 'rebase' | 'bitmap' | 'record';

/** One bitmap's actions, in order (`to` of the `bitmaps` change). */
export interface BitmapStep {
  name: string;
  actions: BitmapAction[];
}

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

/** `qemu-img snapshot`: one action on an image's internal snapshots. */
export type SnapshotRequest =
  | { action: 'list' }
  | { action: 'create'; name: string; /** When it is taken (default: now). */ time?: { sec: number; nsec: number } }
  /** Delete the first snapshot with this name (qemu-img snapshot -d looks up names only). */
  | { action: 'delete'; name: string }
  /** Revert the image to the snapshot with this id, else this name. */
  | { action: 'apply'; name: string };

/** `qemu-img commit`: copy an image's data into a file of its backing chain. */
export interface CommitRequest {
  /** The backing file to commit into, as named in the chain (-b); default: the image's backing file. */
  base?: string;
  /** Keep the image as it is (-d, implied by -b); by default it is emptied after the commit. */
  keep?: boolean;
}

/** What the engine found in the chain, for the commit rules. */
export interface CommitFacts {
  /** The image's name, as given. */
  file: string;
  hasBacking: boolean;
  /** The base was found (always true without -b when there is a backing file). */
  baseFound: boolean;
  /** A file commit would write (the base, or the image when emptied) that is not a regular file. */
  notRegular?: string;
}

/**
 * What the engine's consistency check (qemu-img check's verdict, read-only) found, for a change
 * that would move metadata: corruptions block it, leaks alone do not.
 */
export interface ConsistencyFacts {
  /** Corruptions (on an image with lazy refcounts left dirty: only those a refcount repair cannot fix). */
  corruptions: number;
  /** Refcounts that could not be read at all. */
  checkErrors: number;
  /** The first thing check said about them, in its words. */
  first?: string;
  /**
   * How many of the corruptions are refcounts at their width's maximum (check's "overflow
   * cluster"), for which QEMU's own advice is a wider refcount width. Absent: none.
   */
  overflows?: number;
}
