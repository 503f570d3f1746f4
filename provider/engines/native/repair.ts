// The native engine's `check -r`: the image opened as check opens it, under QEMU's write lock,
// repaired (qcow2/ops/repair.ts), then checked again. Apart from maintenance.ts so that a repair
// loads the check and the repair alone.

import { Qcow2Error } from '../../model/errors';
import { BlockFile } from '../../qcow2/io/blockfile';
import { HostFs, localFs } from '../../qcow2/io/hostfs';
import type { ImageLock } from '../../qcow2/io/lock';
import { Image } from '../../qcow2/meta/image';
import { checkImage } from '../../qcow2/ops/check';
import { RepairMode, repairImage } from '../../qcow2/ops/repair';
import { clearUnknownAutoclearOf } from '../../qcow2/guest/autoclear';
import type { RepairReport } from '../engine';

export const punchIn = (file: BlockFile, host: HostFs = localFs) => (offset: number, length: number) => host.punchHole(file, offset, length);

/**
 * The image file open for writing under QEMU's write lock; `fn` runs with it, then both go. The
 * file's dirty pages (an image just copied or written) start going to the medium at once: the
 * first flush of a repair would wait for them all, and this way they go while it counts.
 */
export function withLockedFile<T>(path: string, host: HostFs, fn: (file: BlockFile) => T): T {
  const file = host.open(path, 'write').file;
  let lock: ImageLock | undefined;
  try {
    lock = host.lock(file, path, 'write');
    host.startWriteback?.(file);
    return fn(file);
  } finally {
    lock?.release();
    file.close();
  }
}

/** An image with an external data file is checked only when the data file is there (qemu-img opens it). */
function requireDataFile(img: Image, host: HostFs): void {
  if (!img.hasDataFile) return;
  const name = img.header.dataFile;
  if (name === undefined) throw new Qcow2Error('INVALID_IMAGE', "'data-file' is required for this image");
  if (host.stat(name) === undefined) {
    throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name, property: 'data_file' });
  }
}

/**
 * `qemu-img check -r leaks|all FILE`. The image is opened as check opens it (a corrupt image
 * too: repairing it is the point), under QEMU's write lock.
 */
export function repairImageFile(path: string, mode: RepairMode, host: HostFs = localFs): RepairReport {
  return withLockedFile(path, host, (file) => {
    const img = Image.open(file, path, { check: true });
    requireDataFile(img, host);
    clearUnknownAutoclearOf(file, img);
    const r = repairImage(file, mode, { punch: punchIn(file, host) });
    const fixed = r.leaksFixed + r.corruptionsFixed > 0;
    const result = fixed && !r.failed ? checkImage(file) : r.result;
    return { messages: r.messages, leaksFixed: r.leaksFixed, corruptionsFixed: r.corruptionsFixed, result, rechecked: fixed && !r.failed, failed: r.failed };
  });
}
