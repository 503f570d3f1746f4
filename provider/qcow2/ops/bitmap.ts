// `qemu-img bitmap` and reading a bitmap's dirty extents. The actions run on an image opened
// read-write the QEMU way (guest/bitmaps.ts: bitmaps flagged in-use at open, stored at close);
// they arrive validated (provider/rules/bitmaps.ts), so none of them fails half way.

import { HostFs, localFs } from '../io/hostfs';
import type { BitmapAction } from '../../model/bitmaps';
import { Qcow2Error } from '../../model/errors';
import { BitmapEntry } from '../spec/bitmaps';
import { loadBitmap, readBitmapDirectory } from '../meta/bitmaps';
import { DirtyBitmap, DirtyExtent } from '../meta/dirty-bitmap';
import { Image } from '../meta/image';
import { ImageBitmaps } from '../guest/bitmaps';

/**
 * Carry out validated actions on bitmap `name`, in order, as QEMU's block-dirty-bitmap-*
 * commands do: add, clear, enable, disable and merge change memory (stored at close), remove
 * changes the image at once. `granularity` of an add defaults to `defaultGranularity`; a merge
 * with `external` reads from `source` (the -b image's bitmaps).
 */
export function applyBitmapOps(bitmaps: ImageBitmaps, size: bigint, clusterSize: number, name: string, ops: readonly BitmapAction[],
  defaultGranularity: number, source: readonly DirtyBitmap[] = []): void {
  const get = (n: string, list: readonly DirtyBitmap[] = bitmaps.list) => {
    const b = list.find((x) => x.name === n);
    if (b === undefined) throw new Qcow2Error('NOT_FOUND', `Dirty bitmap '${n}' not found`);
    return b;
  };
  for (const a of ops) {
    switch (a.op) {
      case 'add':
        bitmaps.add(new DirtyBitmap(name, Math.log2(a.granularity ?? defaultGranularity), size, clusterSize, true));
        break;
      case 'remove':
        bitmaps.remove(name);
        break;
      case 'clear':
        get(name).clear();
        break;
      case 'enable':
      case 'disable':
        get(name).enabled = a.op === 'enable';
        break;
      case 'merge':
        get(name).merge(get(a.source, a.external ? source : bitmaps.list));
        break;
      default: {
        const never: never = a;
        throw new Qcow2Error('UNSUPPORTED', `Unknown bitmap action '${(never as { op: string }).op}'`);
      }
    }
  }
}

/** An image's bitmaps as a reader sees them (QEMU read-only: nothing is flagged). */
export function readImageBitmaps(img: Image): DirtyBitmap[] {
  const read = (o: number, l: number) => img.read(o, l);
  return readBitmapDirectory(img.header, img.geometry.clusterSize, read).map((e) => loadBitmap(e, img.header.size, img.geometry.clusterSize, read));
}

/** The directory entries of an image (no bitmap data read). */
export function imageBitmapEntries(img: Image): BitmapEntry[] {
  return readBitmapDirectory(img.header, img.geometry.clusterSize, (o, l) => img.read(o, l));
}

/** A bitmap's dirty extents, read from a closed image. */
export interface BitmapDump {
  name: string;
  granularity: number;
  enabled: boolean;
  extents: DirtyExtent[];
}

/**
 * Open `path` read-only (probing QEMU's locks unless `forceShare`) and load bitmap `name`, or
 * undefined when the image has no such bitmap; `check` may refuse it (an inconsistent one) first.
 */
export function readBitmapFile(path: string, name: string, opts: { forceShare?: boolean; host?: HostFs; check?: (e: BitmapEntry) => void } = {}): DirtyBitmap | undefined {
  const host = opts.host ?? localFs;
  const { file } = host.open(path, 'read');
  try {
    if (!opts.forceShare) host.probeLock(file, path, 'read');
    const img = Image.open(file, path);
    const read = (o: number, l: number) => img.read(o, l);
    const e = readBitmapDirectory(img.header, img.geometry.clusterSize, read).find((x) => x.name === name);
    if (e === undefined) return undefined;
    opts.check?.(e);
    return loadBitmap(e, img.header.size, img.geometry.clusterSize, read);
  } finally {
    file.close();
  }
}
