// The Engine seam: the only thing provider/resource calls to touch disk. Two implementations,
// native (provider/format, the default) and qemu-img (spawns QEMU's tool), with the same
// results and the same typed errors, because both ask provider/rules before doing anything.

import type { CheckResult } from '../qcow2/ops/check';
import type { CreateOptions } from '../model/options';
import type { ImageInfoJson } from '../qcow2/ops/info';
import type { AmendRequest, ImageState } from '../rules/types';

export type EngineName = 'native' | 'qemu-img';

/** What `info` reports, typed: sizes exact, absent values as undefined (never guessed). */
export interface ImageInfo extends Pick<ImageState, 'virtualSize' | 'clusterSize' | 'compat' | 'refcountBits' | 'lazyRefcounts' |
  'extendedL2' | 'compressionType' | 'hasDataFile' | 'dataFile' | 'dataFileRaw' | 'backingFile' | 'backingFormat' | 'dirty' | 'corrupt'> {
  /** Bytes allocated for the qcow2 file (qemu-img's actual-size). */
  actualSize: number;
  /** Names of persistent dirty bitmaps. */
  bitmaps: string[];
  snapshots: number;
}

export interface ResizeOptions {
  /** Shrinking deletes data beyond the new end: only with this set. */
  allowShrink?: boolean;
}

export interface RemoveOptions {
  /** Also remove the external data file named in the image (only files we created). */
  dataFile?: boolean;
}

/** One interface, two engines. Every method validates through provider/rules first. */
export interface Engine {
  readonly name: EngineName;
  /** Create an image; never overwrites an existing image or data file (adopt wraps one). */
  create(path: string, options: CreateOptions): Promise<void>;
  /** Change options all or nothing (compat, lazy refcounts, refcount width, size, data file name, data-file-raw off). */
  amend(path: string, request: AmendRequest): Promise<void>;
  /** Change the virtual size. */
  resize(path: string, size: bigint, options?: ResizeOptions): Promise<void>;
  /** Change the backing file reference (header only); refused on data-file-raw images. */
  rebase(path: string, backingFile: string, backingFormat?: string): Promise<void>;
  /** Read what the header says. `forceShare` reads an image another process holds (qemu-img -U). */
  info(path: string, options?: { forceShare?: boolean }): Promise<ImageInfo>;
  /** Consistency check with qemu-img check's verdicts; `forceShare` checks an image another process holds. */
  check(path: string, options?: { forceShare?: boolean }): Promise<CheckResult>;
  /** Delete an image (and, when asked, its data file); never a backing file. */
  remove(path: string, options?: RemoveOptions): Promise<void>;
}

/** The typed view of `qemu-img info --output=json`; both engines produce it from that JSON. */
export function toImageInfo(j: ImageInfoJson): ImageInfo {
  const d = j['format-specific'].data;
  const info: ImageInfo = {
    virtualSize: BigInt(j['virtual-size']),
    actualSize: j['actual-size'],
    clusterSize: j['cluster-size'],
    compat: d.compat,
    refcountBits: d['refcount-bits'],
    lazyRefcounts: d['lazy-refcounts'] ?? false,
    extendedL2: d['extended-l2'] ?? false,
    compressionType: d['compression-type'],
    hasDataFile: d['data-file-raw'] !== undefined,
    dataFileRaw: d['data-file-raw'] ?? false,
    dirty: j['dirty-flag'],
    corrupt: d.corrupt ?? false,
    bitmaps: (d.bitmaps ?? []).map((b) => b.name),
    snapshots: j.snapshots?.length ?? 0,
  };
  if (d['data-file'] !== undefined) info.dataFile = d['data-file'];
  if (j['backing-filename'] !== undefined) info.backingFile = j['backing-filename'];
  if (j['backing-filename-format'] !== undefined) info.backingFormat = j['backing-filename-format'];
  return info;
}
