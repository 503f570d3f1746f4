// Deleting an image, the same for both engines: under QEMU's write lock (never an image a VM
// holds open), the data file only when asked, a backing file never.

import * as fs from 'fs';
import { NodeBlockFile, ioError } from '../qcow2/io/blockfile';
import { Image } from '../qcow2/meta/image';
import { resolveBackingName } from '../model/backing-name';
import { lockImage } from '../qcow2/io/lock';
import type { RemoveOptions } from './engine';

export function removeImageFiles(path: string, options: RemoveOptions = {}): void {
  let dataFile: string | undefined;
  const f = NodeBlockFile.open(path, true);
  try {
    lockImage(f.fd, path, 'write'); // held until close
    if (options.dataFile) {
      const img = Image.open(f, path);
      const named = img.hasDataFile && img.header.dataFile ? resolveBackingName(path, img.header.dataFile) : undefined;
      const recorded = options.recordedDataFile;
      if (recorded === undefined) dataFile = named;
      else if (recorded.identity !== undefined ? sameFile(recorded.path, recorded.identity) : named === recorded.path) dataFile = recorded.path;
    }
    fs.unlinkSync(path);
  } finally {
    f.close();
  }
  if (dataFile === undefined) return;
  try {
    fs.unlinkSync(dataFile);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, dataFile, 'remove');
  }
}

/** `file` is still the file whose identity ("dev:ino") was recorded (a regular file, not replaced). */
function sameFile(file: string, identity: string): boolean {
  try {
    const st = fs.lstatSync(file, { bigint: true });
    return st.isFile() && `${st.dev}:${st.ino}` === identity;
  } catch {
    return false;
  }
}
