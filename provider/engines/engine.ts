// The Engine seam: the only thing provider/resource and provider/cli call to touch an image.
// Two implementations, native (this package's format engine, run off the event loop in worker
// threads) and qemu-img (spawns QEMU's tool), with the same results and the same typed errors,
// because both ask provider/rules before doing anything.

import type { CheckResult } from '../qcow2/ops/check';
import type { MapEntry } from '../qcow2/ops/map';
import type { CompareResult } from '../qcow2/ops/compare';
import type { RemoveImageOptions } from '../qcow2/ops/remove';
import type { CreateOptions, RawCreateOptions, ResolvedCreateOptions } from '../model/options';
import type { ImageFacts, SnapshotFacts } from '../model/facts';
import type { AmendRequest, CommitRequest, SnapshotRequest } from '../rules/types';
import type { SnapshotSelector } from '../qcow2/spec/snapshot';
import type { CreateBehaviour } from '../rules/create';
import type { ProgressFn } from '../qcow2/guest/source';
import type { ConnectionArgs } from '../transport/ssh/connection';
import type { CacheOptions } from '../transport/http/cache';
import type { HttpOptions } from '../transport/http/client';
import type { ReferencePolicy } from '../rules/references';
import type { BitmapAction } from '../model/bitmaps';
import type { DirtyExtent } from '../qcow2/meta/dirty-bitmap';
import type { Dependents, ImageChain } from '../model/chain';

export type { CheckResult, MapEntry, ImageFacts, CreateBehaviour, ResolvedCreateOptions, CompareResult, SnapshotFacts, SnapshotRequest, SnapshotSelector, CommitRequest, BitmapAction, DirtyExtent, Dependents, ImageChain };

export type EngineName = 'native' | 'qemu-img';

/** Progress of a long operation: bytes of the guest view done, of total. */
export type { ProgressFn };

export interface ResizeOptions {
  /** Shrinking deletes data beyond the new end: only with this set. */
  allowShrink?: boolean;
  /** How the new area is allocated when growing (qemu-img resize --preallocation; default off). */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
}

/** What one stat of a path says: its kind, size in bytes and identity on its host ("dev:ino"). */
export interface FileStat {
  kind: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  id: string;
}

/** `dataFile`: also remove the external data file named in the image (only files we created); `recordedDataFile`: only that one (qcow2/ops/remove.ts). */
export type RemoveOptions = RemoveImageOptions;

export interface ReadOptions {
  /** Read an image another process holds (qemu-img -U); without it a held image is LOCKED. */
  forceShare?: boolean;
  /** The image's format: qcow2 (default), raw, or 'probe' (qemu-img's probing: qcow2 magic, else raw). */
  format?: 'qcow2' | 'raw' | 'probe';
}

export interface RebaseOptions {
  /**
   * Copy first (qemu-img rebase without -u): clusters that differ between the old and the new
   * backing chain are written into the image, so the guest view does not change. Default: the
   * reference alone is rewritten (rebase -u).
   */
  safe?: boolean;
  progress?: ProgressFn;
}

/** Where an imported image's guest data comes from. */
export interface ImportSource {
  /**
   * A raw or qcow2 file (a qcow2 file is read through its backing chain), or an http(s) URL,
   * downloaded through the cache keyed by `checksum`. Either may be gzip-, xz- or
   * zstd-compressed raw or qcow2: the format is detected by content.
   */
  path: string;
  /** 'raw' or 'qcow2': taken as it is, nothing detected. Default: detected by content. */
  format?: string;
  /**
   * Where the file is, when not on the host the engine works on: 'local' (this machine: read
   * here and sent to the remote host as it is imported; holes are not sent), or another SSH host.
   * A URL is always downloaded here.
   */
  host?: 'local' | ConnectionArgs;
  /** `sha256:<hex>` or `sha512:<hex>` of the source's bytes: required for URLs, verified for files when given. */
  checksum?: string;
  /** The most bytes the source may have: downloaded, decompressed, and as virtual size. More is refused before it fills the disk. */
  maxSize?: bigint;
  /**
   * The files a qcow2 source's headers may name (backing files at any depth, data files), as
   * absolute paths; any other name is refused (provider/rules). 'any' follows every name, as
   * qemu-img does. Default: 'any' for a local file, none for a URL.
   */
  references?: ReferencePolicy;
  /** convert -l: read this internal snapshot instead of the current state. */
  snapshot?: SnapshotSelector;
}

export interface ImportOptions {
  /** (done, total): bytes of data to copy, as qemu-img convert counts them (known zeros and holes left out). */
  progress?: ProgressFn;
  /** Bytes of a URL source received, of its size when the server declared it (also for a cache hit, at once). */
  download?: (received: number, total: number | undefined) => void;
  /** The download cache (folder, size limit). Default: $PULUMI_QCOW2_CACHE_DIR, $PULUMI_QCOW2_CACHE_MAX_SIZE. */
  cache?: CacheOptions;
  /** How URL sources are reached (proxies, CAs, timeouts). */
  http?: HttpOptions;
  /**
   * Make the new image durable (fdatasync) before it appears at its path. Default true. The
   * command line's convert turns it off with qemu-img's default cache mode (-t unsafe), as
   * qemu-img skips that flush too: the image still appears only once complete.
   */
  durable?: boolean;
  /** convert --bitmaps: copy the source's persistent bitmaps (name, granularity, recording, contents). */
  bitmaps?: boolean;
  /** --skip-broken-bitmaps: leave inconsistent bitmaps out instead of refusing. */
  skipBrokenBitmaps?: boolean;
  /**
   * convert -c: write compressed clusters (the image's compression_type, zlib or zstd), as
   * qemu-img writes them; clusters that do not compress are written plain.
   */
  compressed?: boolean;
  /**
   * convert -B: the create options name a backing file (and its format) for the new image, which
   * gets only what the source holds above its own backing file: its other areas read from the
   * new backing file, which the caller vouches holds the same data (qemu-img does not compare).
   */
  overBacking?: boolean;
  /**
   * convert -O raw: the new image is a raw file (sparse: zero areas are holes) of the source's
   * size rounded up to a sector; no create options apply. Default 'qcow2'.
   */
  targetFormat?: 'qcow2' | 'raw';
  /**
   * convert -S: the shortest run of zeros, in bytes (a multiple of 512 up to 16 MiB), that the
   * copy leaves unwritten (a hole, an unallocated cluster), as qemu-img splits what it writes;
   * shorter runs are written with the data around them. 0 writes everything: every cluster of
   * a new image is allocated, zeros too. Default 4096 (qemu-img's).
   */
  sparse?: number;
  /**
   * convert SRC1 SRC2 ... DST: files read after `source`, in order, as one guest view (each
   * starting where the one before ends, rounded up to a sector; the new image's size is their
   * sum). Files of this machine only, for an image of this machine; refused with a backing file
   * for the new image (-B) and with bitmaps, in qemu-img's words.
   */
  moreSources?: readonly ImportSource[];
}

export interface BitmapOptions {
  /** --merge reads its source bitmap from this image (-b; opened read-only, never changed). */
  sourceFile?: string;
  /** Its format (-F); probed when omitted. */
  sourceFormat?: string;
  /**
   * Write on a refusal as qemu-img does (the CLI's byte-for-byte mode): qemu-img opens the image
   * read-write before it judges the actions, so even a refused run rewrites every bitmap (same
   * contents, new places). Default false: a refusal writes nothing. (The qemu-img engine always
   * refuses before it runs qemu-img.)
   */
  rewriteOnRefusal?: boolean;
}

/** What a bitmap command reports besides success. */
export interface BitmapResult {
  /** qemu-img's warnings when it opened the image (a stale bitmaps extension was dropped). */
  warnings: string[];
}

/** A bitmap's dirty extents: the guest ranges written while it recorded (clipped to the disk's end). */
export interface BitmapDump {
  name: string;
  granularity: number;
  /** Recording writes (the `auto` flag). */
  enabled: boolean;
  extents: DirtyExtent[];
}

/** An image by name, and its format (probed from the magic when omitted). */
export interface ImageRef {
  path: string;
  format?: string;
}

export interface CompareOptions extends ReadOptions {
  /** qemu-img compare -s: the sizes and the allocation must match too. */
  strict?: boolean;
  progress?: ProgressFn;
}

export interface CommitOptions {
  progress?: ProgressFn;
}

/** `check -r`: which inconsistencies to repair. */
export type RepairMode = 'leaks' | 'all';

/** What `check -r` did, and the image's state afterwards. */
export interface RepairReport {
  /** What the repair printed (qemu-img's stderr lines while repairing), in order. */
  messages: string[];
  leaksFixed: number;
  corruptionsFixed: number;
  /** A second check when something was fixed (`rechecked`), else the repair pass's own counters. */
  result: CheckResult;
  rechecked: boolean;
  /** The repair stopped (qemu-img: "Check failed"): -r leaks where the refcount structure must be rebuilt. */
  failed: boolean;
}

/** One interface, two engines. Every method validates through provider/rules first. */
export interface Engine {
  readonly name: EngineName;
  /** Create an image; never overwrites an existing image or data file (adopt wraps one). */
  create(path: string, options: CreateOptions, behaviour?: CreateBehaviour): Promise<void>;
  /** Create a raw image (qemu-img create -f raw); never overwrites an existing file. */
  createRaw(path: string, options: RawCreateOptions): Promise<void>;
  /**
   * What `create` would make, touching nothing: the options validated by the rules and the size
   * taken from the backing file (opened as qemu-img opens it) or the adopted data file.
   */
  resolveCreate(path: string, options: CreateOptions, behaviour?: CreateBehaviour): Promise<ResolvedCreateOptions>;
  /**
   * Create an image holding the guest view of `source` (qemu-img convert -O qcow2): its size is
   * the source's. Never overwrites, and a failure leaves nothing behind.
   */
  import(path: string, options: CreateOptions, source: ImportSource, opts?: ImportOptions): Promise<void>;
  /**
   * qemu-img convert -n: write the guest view of `source` over an existing qcow2 image at least
   * as large (data copied, zero areas written as zeros); the image is otherwise kept (its options,
   * its backing file). Only `progress` of `opts` applies.
   */
  convertInto(path: string, source: ImportSource, opts?: ImportOptions): Promise<void>;
  /** Change options all or nothing (compat, lazy refcounts, refcount width, size, data file name, data-file-raw off). */
  amend(path: string, request: AmendRequest): Promise<void>;
  /** Change the virtual size: an absolute size, or relative to the current one. */
  resize(path: string, size: bigint | { relative: bigint }, options?: ResizeOptions): Promise<void>;
  /** Change the backing file; refused on data-file-raw images. */
  rebase(path: string, backingFile: string, backingFormat?: string, options?: RebaseOptions): Promise<void>;
  /** The image's facts, from its header. */
  info(path: string, options?: ReadOptions): Promise<ImageFacts>;
  /** Consistency check with qemu-img check's verdicts. */
  check(path: string, options?: ReadOptions): Promise<CheckResult>;
  /** The allocation map through the backing chain, as qemu-img map computes it. */
  map(path: string, options?: ReadOptions): Promise<MapEntry[]>;
  /**
   * `qemu-img bitmap ACTIONS FILE NAME`: add, remove, clear, enable, disable, merge bitmap `name`,
   * in order. Validated as a whole first (provider/rules/bitmaps.ts); a refusal is REFUSED with
   * qemu-img's words and changes no bitmap.
   */
  bitmap(path: string, name: string, actions: readonly BitmapAction[], options?: BitmapOptions): Promise<BitmapResult>;
  /** The dirty extents of bitmap `name` in an image nobody writes (an inconsistent one is refused). */
  dumpBitmap(path: string, name: string, options?: ReadOptions): Promise<BitmapDump>;
  /** Delete an image (and, when asked, its data file); never a backing file. */
  remove(path: string, options?: RemoveOptions): Promise<void>;
  /** `check -r leaks|all`: repair as QEMU does, then check again; crash-safe step by step. */
  repair(path: string, mode: RepairMode): Promise<RepairReport>;
  /**
   * What QEMU does when it opens a dirty image (lazy refcounts left stale) read/write: repair
   * it. Returns the lines QEMU prints then; none for a clean image.
   */
  repairDirty(path: string): Promise<string[]>;
  /** Internal snapshots: list (the table), create, delete (by name), apply (by id or name). */
  snapshot(path: string, request: SnapshotRequest, options?: ReadOptions): Promise<SnapshotFacts[] | undefined>;
  /** `qemu-img compare`: 0 identical, 1 different, with qemu-img's lines; read-only. */
  compare(a: ImageRef, b: ImageRef, options?: CompareOptions): Promise<CompareResult>;
  /**
   * `qemu-img commit`: the image's data into a file of its backing chain (its backing file, or
   * `request.base`), then the image emptied unless `request.keep`.
   */
  commit(path: string, request: CommitRequest, options?: CommitOptions): Promise<void>;
  /** What is at `path` (following links) on the engine's host; undefined: nothing. */
  stat(path: string): Promise<FileStat | undefined>;
  /**
   * The identities of the image at `path` and of its backing chain, from header reads only
   * (engines/chain.ts; nothing locked), each layer marked `seen`.
   */
  chain(path: string, seen: string): Promise<ImageChain>;
  /** Images that name `path` as their backing file: `candidates`, then the files in its folder (engines/chain.ts). */
  dependents(path: string, candidates: readonly string[]): Promise<Dependents>;
}
